"""HalfCheetah velocity / direction tasks (``rlmaml/HalfCheetahVel-v0``, ``rlmaml/HalfCheetahDir-v0``).

Finn et al. (2017), section 5.3: the cheetah must run at a goal velocity ``v_goal ~ U[0, 2]``
(reward ``-|v_x - v_goal| - 0.05 ||a||^2``) or in a direction ``d = +-1`` (reward
``d * v_x - 0.05 ||a||^2``); horizon H = 200; no termination.  ``v_x`` is the forward
velocity of the torso, ``(x_after - x_before) / dt`` with ``dt = 5 * 0.01``.

Built on Gymnasium's ``HalfCheetahEnv`` (v5): same model (``half_cheetah.xml``), frame skip 5,
reset noise (qpos + U[-0.1, 0.1], qvel + 0.1 N(0, 1)) and observation.

Differences from the original rllab / pytorch-maml-rl ``HalfCheetahVelEnv`` / ``HalfCheetahDirEnv``
and why:

* Observation: v5's 17-d layout ``[qpos[1:], qvel]``.  The original appended the torso's
  centre of mass (3-d, 20-d total), which contains the absolute x position: a non-stationary
  input that no velocity task needs.  The oracle variant appends ``v_goal`` / ``d`` (18-d).
* ``v_x`` is the finite difference of ``qpos[0]`` (the root slide joint = torso x) over the
  step.  rllab read the torso's instantaneous velocity (``get_body_comvel``); pytorch-maml-rl
  used finite differences of ``get_body_com("torso")``, but with MuJoCo >= 2 body positions
  after ``mj_step`` lag one substep behind ``qpos``, so ``qpos`` gives the exact displacement.
* Physics: MuJoCo 3/4 instead of mujoco-py 1.50 / MuJoCo 1.5; same model, but trajectories are
  not bit-identical to the original.  ``mj_rnePostConstraint`` (which v5 calls after every step)
  is skipped: it only fills ``cacc`` / ``cfrc_*``, which this env does not use, and does not
  change the dynamics.
* Actions: the action space is ``[-1, 1]^6``, mapped affinely to the actuator ``ctrlrange``
  (the identity for this model) after clipping; the control cost uses the clipped action.
  An action with NaN/inf raises ``ValueError`` (the original passed it to the simulator).
* Instability (MuJoCo warnings or non-finite state) terminates the trajectory with
  ``info["unstable"] = True`` and a finite reward (see :mod:`envs._mujoco`); the original had
  no such check.
* ``info`` holds ``x_position``, ``x_velocity``, ``reward_forward``, ``reward_ctrl``
  (``reward_forward + reward_ctrl == reward``) and ``unstable``.
"""

from __future__ import annotations

import numpy as np
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

from ._mujoco import MujocoTaskMixin, _init_mujoco_env

CTRL_COST_WEIGHT = 0.5 * 0.1  # 0.05 ||a||^2, as in rllab


class _HalfCheetahTaskEnv(MujocoTaskMixin, HalfCheetahEnv):
    x_dims = 1
    needs_cfrc = False
    ctrl_cost_weight = CTRL_COST_WEIGHT
    task_dim = 1
    _info_keys = ("x_position", "x_velocity", "reward_forward", "reward_ctrl")

    def __init__(
        self,
        task: dict | None = None,
        oracle: bool = False,
        render_mode: str | None = None,
        xml_file: str = "half_cheetah.xml",
        frame_skip: int = 5,
        reset_noise_scale: float = 0.1,
        **render_kwargs,
    ):
        _init_mujoco_env(
            self,
            HalfCheetahEnv,
            task,
            oracle,
            render_mode,
            xml_file,
            frame_skip,
            reset_noise_scale,
            {"ctrl_cost_weight": CTRL_COST_WEIGHT},
            render_kwargs,
        )

    @classmethod
    def _obs_batch(cls, qpos, qvel, cfrc, task_vec, oracle):
        parts = [qpos[:, 1:], qvel]
        if oracle:
            parts.append(task_vec)
        return np.concatenate(parts, axis=1)

    @classmethod
    def _forward(cls, task_vec, v):  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def _reward_batch(cls, task_vec, x_before, qpos, qvel, cfrc, a, dt):
        v = (qpos[:, 0] - x_before[:, 0]) / dt
        forward = cls._forward(task_vec, v)
        ctrl = CTRL_COST_WEIGHT * np.sum(np.square(a), axis=1)
        reward = forward - ctrl
        info = {
            "x_position": qpos[:, 0].copy(),
            "x_velocity": v,
            "reward_forward": forward,
            "reward_ctrl": -ctrl,
        }
        return reward, np.zeros(qpos.shape[0], dtype=bool), info


class HalfCheetahVelEnv(_HalfCheetahTaskEnv):
    """Run at the goal velocity. Task: ``{"velocity": float in [0, 2]}``."""

    family = "HalfCheetahVel"

    @staticmethod
    def _task_vector(task: dict) -> np.ndarray:
        return np.array([task["velocity"]], dtype=np.float64)

    @classmethod
    def _forward(cls, task_vec, v):
        return -np.abs(v - task_vec[:, 0])


class HalfCheetahDirEnv(_HalfCheetahTaskEnv):
    """Run forward (+1) or backward (-1). Task: ``{"direction": +-1.0}``."""

    family = "HalfCheetahDir"

    @staticmethod
    def _task_vector(task: dict) -> np.ndarray:
        return np.array([task["direction"]], dtype=np.float64)

    @classmethod
    def _forward(cls, task_vec, v):
        return task_vec[:, 0] * v
