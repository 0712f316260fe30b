"""Ant velocity / direction / goal tasks (``rlmaml/AntVel-v0``, ``AntDir-v0``, ``AntGoal-v0``).

Finn et al. (2017), section 5.3, and the goal-position ant of the follow-up literature:

============  ======================  ==========================================================
id            task                    reward
============  ======================  ==========================================================
AntVel-v0     ``v_goal ~ U[0, 3]``    ``-|v_x - v_goal| + 1.0 - ctrl - contact + 0.05``
AntDir-v0     ``d = +-1``             ``d * v_x - ctrl - contact + 0.05``
AntGoal-v0    ``g ~ U[-3, 3]^2``      ``-||xy - g||_1 + 4.0 - ctrl - contact + 0.05``
============  ======================  ==========================================================

with ``ctrl = 0.5 * 1e-2 * ||a||^2`` (``a`` the clipped policy action in ``[-1, 1]^8``,
i.e. ``a / scale`` with ``scale = 1`` for this model), ``contact = 0.5 * 1e-3 *
||clip(cfrc_ext, -1, 1)||^2`` over all bodies, and ``v_x = (x_after - x_before) / dt``,
``dt = 0.01`` (frame skip 1, as in rllab).  Horizon H = 200; the episode terminates when the torso height
``qpos[2]`` leaves ``[0.2, 1.0]``.  The constants (1.0, 4.0, 0.05) are paid on every step,
the terminal one included, as in rllab.

Built on Gymnasium's ``AntEnv`` (v5): same model (``ant.xml``, gear 150, ctrlrange [-1, 1]),
reset noise (qpos + U[-0.1, 0.1], qvel + 0.1 N(0, 1)), healthy range, and
``cfrc_ext`` clipping to [-1, 1].

Differences from Gymnasium's v5 and why:

* Frame skip 1 (``dt = 0.01``, the original rllab ant's: its ``ant.xml`` sets no ``frame_skip``, so
  rllab stepped once per action) in place of v5's 5.  With v5's 5 the task is another one: a
  random policy's torso leaves the healthy range (it jumps above z = 1.0) after 55 steps on
  average (29 of 30 seeded episodes end high), and since the velocity reward is negative for a
  standing ant, TRPO learns to end episodes early (measured: mean episode length fell from 58 to
  36 steps over 110 meta-iterations of ``ant-vel``, the return rising only by dying sooner).  With
  frame skip 1 the same random policy lasts 197 of 200 steps on average.  Pass ``frame_skip=5`` to
  ``gymnasium.make`` for v5's timing.

Differences from the original rllab / pytorch-maml-rl / ProMP ant envs and why:

* Observation: v5's layout ``[qpos[2:], qvel, clip(cfrc_ext[1:], -1, 1)]`` (105-d) for
  AntVel / AntDir.  The original was ``[qpos, qvel, clip(cfrc_ext, -1, 1), torso xmat,
  torso com]`` (125-d): it duplicated the torso position and orientation and included the
  world body's (always zero) external force.  AntGoal keeps the x, y position
  (``[qpos, qvel, clip(cfrc_ext[1:])]``, 107-d): without it the goal task is not observable
  by a memoryless policy.  Oracle variants append ``v_goal`` / ``d`` / ``g``.
* Contact cost: as in rllab, over all of ``cfrc_ext`` (which v5 also does; v5's weight
  ``5e-4`` equals ``0.5 * 1e-3``).  ``cfrc_ext`` is computed after every step with
  ``mj_rnePostConstraint``, exactly as v5 does: since MuJoCo 2.0 ``mj_step`` no longer
  fills it (MuJoCo 1.x, under the original code, did).
* Control cost: rllab's ``0.005 ||a||^2`` instead of v5's ``0.5 ||a||^2``; alive bonus 1.0
  only for AntVel (as in rllab, where it is part of the forward reward) instead of v5's
  healthy reward, plus rllab's 0.05 survive reward.
* Position / velocity: finite differences of ``qpos[0:2]`` (the free joint = torso position)
  over the step.  rllab read the torso's instantaneous velocity (``get_body_comvel``);
  pytorch-maml-rl used finite differences of ``get_body_com("torso")`` and v5 uses the torso
  ``xpos``, which after ``mj_step`` lags one substep behind ``qpos``.  The finite difference
  is the average velocity over the step and is exact to recompute from logged states.
* Termination: torso height outside [0.2, 1.0] (as in rllab and v5), for all three tasks.
  Public goal-ant variants differ here (some, e.g. ProMP's / VariBAD's, never terminate);
  one rule for the whole family keeps the three tasks comparable.  Non-finite state is
  reported as an instability (below) rather than as "unhealthy".
* Physics: MuJoCo 3/4 instead of MuJoCo 1.5; trajectories are not bit-identical.
* Actions: ``[-1, 1]^8`` mapped affinely to the actuator ``ctrlrange`` (the identity here)
  after clipping; NaN/inf actions raise ``ValueError``.
* Instability (MuJoCo warnings or non-finite state) terminates the trajectory with
  ``info["unstable"] = True`` and a finite reward (see :mod:`envs._mujoco`).
* ``info`` holds ``x_position``, ``y_position``, ``x_velocity``, ``y_velocity`` and the reward
  terms ``reward_forward`` (AntGoal: the goal term), ``reward_bonus`` (1.0 / 0.0 / 4.0),
  ``reward_survive`` (0.05), ``reward_ctrl``, ``reward_contact``, which sum to the reward.
"""

from __future__ import annotations

import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv

from ._mujoco import MujocoTaskMixin, _init_mujoco_env

CTRL_COST_WEIGHT = 0.5 * 1e-2
CONTACT_COST_WEIGHT = 0.5 * 1e-3
SURVIVE_REWARD = 0.05
HEALTHY_Z_RANGE = (0.2, 1.0)
FRAME_SKIP = 1  # rllab's ant: one 0.01 s MuJoCo step per action (see the module docstring)


class _AntTaskEnv(MujocoTaskMixin, AntEnv):
    x_dims = 2
    needs_cfrc = True
    ctrl_cost_weight = CTRL_COST_WEIGHT
    obs_skip_qpos = 2
    bonus = 0.0
    _info_keys = (
        "x_position",
        "y_position",
        "x_velocity",
        "y_velocity",
        "reward_forward",
        "reward_bonus",
        "reward_survive",
        "reward_ctrl",
        "reward_contact",
    )

    def __init__(
        self,
        task: dict | None = None,
        oracle: bool = False,
        render_mode: str | None = None,
        xml_file: str = "ant.xml",
        frame_skip: int = FRAME_SKIP,
        reset_noise_scale: float = 0.1,
        **render_kwargs,
    ):
        _init_mujoco_env(
            self,
            AntEnv,
            task,
            oracle,
            render_mode,
            xml_file,
            frame_skip,
            reset_noise_scale,
            {
                "ctrl_cost_weight": CTRL_COST_WEIGHT,
                "contact_cost_weight": CONTACT_COST_WEIGHT,
                "healthy_z_range": HEALTHY_Z_RANGE,
                "terminate_when_unhealthy": True,
                "exclude_current_positions_from_observation": self.obs_skip_qpos == 2,
                "include_cfrc_ext_in_observation": True,
            },
            render_kwargs,
        )

    @classmethod
    def _obs_batch(cls, qpos, qvel, cfrc, task_vec, oracle):
        k = qpos.shape[0]
        parts = [qpos[:, cls.obs_skip_qpos :], qvel, np.clip(cfrc[:, 1:], -1.0, 1.0).reshape(k, -1)]
        if oracle:
            parts.append(task_vec)
        return np.concatenate(parts, axis=1)

    @classmethod
    def _task_term(cls, task_vec, qpos, vx):  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def _reward_batch(cls, task_vec, x_before, qpos, qvel, cfrc, a, dt):
        k = qpos.shape[0]
        vel = (qpos[:, :2] - x_before) / dt
        vx = vel[:, 0]
        forward = cls._task_term(task_vec, qpos, vx)
        ctrl = CTRL_COST_WEIGHT * np.sum(np.square(a), axis=1)
        contact = CONTACT_COST_WEIGHT * np.sum(np.square(np.clip(cfrc.reshape(k, -1), -1.0, 1.0)), axis=1)
        reward = forward + (cls.bonus + SURVIVE_REWARD) - ctrl - contact
        z = qpos[:, 2]
        terminated = ~((z >= HEALTHY_Z_RANGE[0]) & (z <= HEALTHY_Z_RANGE[1]))
        info = {
            "x_position": qpos[:, 0].copy(),
            "y_position": qpos[:, 1].copy(),
            "x_velocity": vx,
            "y_velocity": vel[:, 1],
            "reward_forward": forward,
            "reward_bonus": np.full(k, cls.bonus),
            "reward_survive": np.full(k, SURVIVE_REWARD),
            "reward_ctrl": -ctrl,
            "reward_contact": -contact,
        }
        return reward, terminated, info


class AntVelEnv(_AntTaskEnv):
    """Run at the goal velocity. Task: ``{"velocity": float in [0, 3]}``."""

    family = "AntVel"
    task_dim = 1
    bonus = 1.0

    @staticmethod
    def _task_vector(task: dict) -> np.ndarray:
        return np.array([task["velocity"]], dtype=np.float64)

    @classmethod
    def _task_term(cls, task_vec, qpos, vx):
        return -np.abs(vx - task_vec[:, 0])


class AntDirEnv(_AntTaskEnv):
    """Run forward (+1) or backward (-1). Task: ``{"direction": +-1.0}``."""

    family = "AntDir"
    task_dim = 1
    bonus = 0.0

    @staticmethod
    def _task_vector(task: dict) -> np.ndarray:
        return np.array([task["direction"]], dtype=np.float64)

    @classmethod
    def _task_term(cls, task_vec, qpos, vx):
        return task_vec[:, 0] * vx


class AntGoalEnv(_AntTaskEnv):
    """Walk to a goal position. Task: ``{"goal": ndarray(2,) in [-3, 3]^2}``."""

    family = "AntGoal"
    task_dim = 2
    bonus = 4.0
    obs_skip_qpos = 0

    @staticmethod
    def _task_vector(task: dict) -> np.ndarray:
        return np.asarray(task["goal"], dtype=np.float64).copy()

    @classmethod
    def _task_term(cls, task_vec, qpos, vx):
        return -np.sum(np.abs(qpos[:, :2] - task_vec), axis=1)
