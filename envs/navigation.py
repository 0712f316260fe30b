"""2-D point navigation (``rlmaml/Navigation2D-v0``), after Finn et al. (2017), section 5.2.

The agent is a point starting at the origin; the action is a velocity, clipped to
``[-0.1, 0.1]^2``; the observation is the current position; the reward is the negative
Euclidean distance to the goal; the episode terminates when both coordinates are within
0.01 of the goal and is truncated at H = 100 steps.  Goals are uniform in ``[-0.5, 0.5]^2``.

Differences from the original code (rllab / pytorch-maml-rl ``Navigation2DEnv``):

* the position is kept in float64 (the original used float32); observations are float32.
  Reason: exact equality between the single env and the batched stepper, and no drift.
* an action containing NaN/inf raises ``ValueError`` (the original asserted it was in range
  after clipping, which NaN silently passes through ``np.clip``).
* the oracle variant (``Navigation2DOracle-v0``) appends the goal to the observation.

The step is written as a vectorised kernel over ``[K, 2]`` states, used both by the single env
(K = 1) and by :class:`BatchedNavigation2D` (no Python loop over envs).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import EzPickle

from .base import TaskEnvMixin, check_action, check_actions, check_active, check_finite
from .batched import step_each
from .registry import FAMILIES

MAX_SPEED = 0.1
GOAL_TOLERANCE = 0.01


def nav_step(state: np.ndarray, actions: np.ndarray, goal: np.ndarray):
    """Vectorised step: ``state`` [..., 2] float64, clipped ``actions`` [..., 2], ``goal`` broadcastable
    to them -> (new state, reward [...], terminated [...], distance [...])."""
    new_state = state + actions
    d = new_state - goal
    dist = np.sqrt(d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1])
    terminated = (np.abs(d[..., 0]) < GOAL_TOLERANCE) & (np.abs(d[..., 1]) < GOAL_TOLERANCE)
    return new_state, -dist, terminated, dist


def nav_obs(state: np.ndarray, goal: np.ndarray, oracle: bool) -> np.ndarray:
    """Observations [..., 2] (or [..., 4] with the goal appended for the oracle) as float32."""
    if oracle:
        return np.concatenate([state, np.broadcast_to(goal, state.shape)], axis=-1).astype(np.float32)
    return state.astype(np.float32)


class Navigation2DEnv(TaskEnvMixin, gym.Env, EzPickle):
    """Point-mass navigation to a goal. Task: ``{"goal": ndarray(2,)}``."""

    metadata = {"render_modes": []}
    family = "Navigation2D"
    task_dim = 2

    def __init__(self, task: dict | None = None, oracle: bool = False, render_mode: str | None = None):
        EzPickle.__init__(self, task=task, oracle=oracle, render_mode=render_mode)
        if render_mode is not None:
            raise ValueError(f"Navigation2DEnv has no render modes, got render_mode={render_mode!r}")
        self.render_mode = None
        self._init_task(task, oracle)
        obs_dim = 2 + (2 if self._oracle else 0)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float32)
        self.action_space = spaces.Box(-MAX_SPEED, MAX_SPEED, shape=(2,), dtype=np.float32)
        self._state = np.zeros((1, 2))

    @staticmethod
    def _task_vector(task: dict) -> np.ndarray:
        return np.asarray(task["goal"], dtype=np.float64).copy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        task = self._task_from_options(options)
        if task is not None:
            self.set_task(task)
        self._state = np.zeros((1, 2))
        return nav_obs(self._state, self._task_vec, self._oracle)[0], {}

    def step(self, action):
        a = check_action(action, (2,), -MAX_SPEED, MAX_SPEED, "Navigation2DEnv.step")
        self._state, reward, terminated, dist = nav_step(self._state, a[None], self._task_vec)
        obs = nav_obs(self._state, self._task_vec, self._oracle)[0]
        info = {"distance": float(dist[0]), "reward_goal": float(reward[0])}
        return obs, float(reward[0]), bool(terminated[0]), False, info


class BatchedNavigation2D:
    """K navigation envs as one ``[K, 2]`` state array (pure numpy, no per-env loop)."""

    def __init__(self, env_id: str, num_envs: int, task: dict | None = None, **env_kwargs):
        import gymnasium

        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        self.env_id = env_id
        self.num_envs = int(num_envs)
        spec = gymnasium.spec(env_id)
        max_steps = env_kwargs.pop("max_episode_steps", None) or spec.max_episode_steps
        kwargs = {**spec.kwargs, **env_kwargs}
        self._proto = Navigation2DEnv(task=task, **kwargs)  # spaces, validation, oracle flag
        self.single_observation_space = self._proto.observation_space
        self.single_action_space = self._proto.action_space
        self.max_episode_steps = int(max_steps or FAMILIES["Navigation2D"][1])
        self._state = np.zeros((self.num_envs, 2))
        self._t = np.zeros(self.num_envs, dtype=np.int64)
        self._obs = nav_obs(self._state, self._proto._task_vec, self._proto.oracle)

    def set_task(self, task: dict) -> None:
        self._proto.set_task(task)

    def get_task(self) -> dict:
        return self._proto.get_task()

    def reset(self, seed: int) -> np.ndarray:
        # No randomness in this env; the seed is accepted for interface parity.
        self._state = np.zeros((self.num_envs, 2))
        self._t[:] = 0
        self._obs = nav_obs(self._state, self._proto._task_vec, self._proto.oracle)
        return self._obs.copy()

    def step(self, actions: np.ndarray, active: np.ndarray | None = None):
        where = f"{self.env_id} batched step"
        act = check_active(active, self.num_envs, where)
        a = check_actions(actions, act, (2,), -MAX_SPEED, MAX_SPEED, where)
        obs, reward, terminated, truncated = (x[0] for x in self._advance([self], a[None], act[None]))
        info = {"distance": np.where(act, -reward, 0.0), "reward_goal": reward.copy()}
        return obs, reward, terminated, truncated, info

    @classmethod
    def step_many(cls, envs: list[BatchedNavigation2D], actions: np.ndarray, active: np.ndarray):
        """``step`` of M envs (one task each) in one set of array operations; see ``envs.step_tasks``.

        Inputs that ``step`` would reject (a non-finite action of an active env, a wrong shape), or envs that
        differ in size, horizon or oracle flag, go through each env's own ``step``, which raises the error
        naming the env index and task.
        """
        e0 = envs[0]
        same = all(e.max_episode_steps == e0.max_episode_steps and e._proto.oracle == e0._proto.oracle
                   and e.num_envs == e0.num_envs for e in envs)
        a = np.asarray(actions, dtype=np.float64)
        act = np.asarray(active)
        shape = (len(envs), e0.num_envs)
        if (not same or act.dtype != bool or act.shape != shape or a.shape != (*shape, 2)
                or not np.isfinite(a[act]).all()):
            return step_each(envs, actions, active)
        return cls._advance(envs, np.clip(np.where(act[..., None], a, 0.0), -MAX_SPEED, MAX_SPEED), act)

    @staticmethod
    def _advance(envs: list[BatchedNavigation2D], a: np.ndarray, act: np.ndarray):
        """Step M same-shaped envs with checked, clipped actions ``a`` [M, K, 2] (0 where inactive) and
        ``act`` [M, K]: (observations, rewards, terminated, truncated), each [M, K, ...]."""
        state = np.stack([e._state for e in envs])
        goal = np.stack([e._proto._task_vec for e in envs])[:, None, :]
        new_state, reward, terminated, _ = nav_step(state, a, goal)
        new_state = np.where(act[..., None], new_state, state)
        reward = np.where(act, reward, 0.0)
        terminated &= act
        obs = nav_obs(new_state, goal, envs[0]._proto.oracle)
        obs = np.where(act[..., None], obs, np.stack([e._obs for e in envs]))
        if not (np.isfinite(obs).all() and np.isfinite(reward).all()):
            for e, o, r in zip(envs, obs, reward, strict=True):
                check_finite(e.env_id, e._proto._task, o, r)
        truncated = np.zeros_like(act)
        for i, e in enumerate(envs):
            e._state = new_state[i]
            e._t += act[i]
            truncated[i] = act[i] & (e._t >= e.max_episode_steps)
            e._obs = obs[i]
        return obs.copy(), reward, terminated, truncated

    def close(self) -> None:
        pass
