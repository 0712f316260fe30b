"""Parameterised Gymnasium task suite for meta-RL (independent of ``rlmaml``).

Importing this package registers, under the ``rlmaml/`` namespace (idempotently):

========================  ===========================  =====
id                        task                         H
========================  ===========================  =====
Navigation2D-v0           goal U[-0.5, 0.5]^2          100
HalfCheetahVel-v0         goal velocity U[0, 2]        200
HalfCheetahDir-v0         direction +-1                200
AntVel-v0                 goal velocity U[0, 3]        200
AntDir-v0                 direction +-1                200
AntGoal-v0                goal position U[-3, 3]^2     200
========================  ===========================  =====

plus an ``...Oracle-v0`` variant of each whose observation appends the task parameters.
MuJoCo is imported only when a MuJoCo env is made.
"""

from .batched import BatchedTaskEnv, SerialBatchedEnv, make_batched, share_physics, step_tasks
from .registry import (
    ENV_IDS,
    load_object,
    register_envs,
    register_task_distribution,
    task_distribution,
)
from .tasks import (
    DirectionDistribution,
    GoalPositionDistribution,
    GoalVelocityDistribution,
    TaskDistribution,
)

register_envs()


__all__ = [
    "ENV_IDS",
    "TaskDistribution",
    "GoalPositionDistribution",
    "GoalVelocityDistribution",
    "DirectionDistribution",
    "task_distribution",
    "register_task_distribution",
    "load_object",
    "make_batched",
    "share_physics",
    "step_tasks",
    "BatchedTaskEnv",
    "SerialBatchedEnv",
]
