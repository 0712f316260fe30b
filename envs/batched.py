"""Batched stepping: K copies of one env, one task, stepped together.

``make_batched(env_id, K, task)`` returns a :class:`BatchedTaskEnv`: the suite's own fast forms
for its ids (numpy over a ``[K, 2]`` state for Navigation2D; direct ``mujoco.mj_step`` on K
instances for the MuJoCo families), and :class:`SerialBatchedEnv` (K ``gymnasium.make`` envs)
for any other id.  Register a fast form for another id in :data:`BATCHED_FORMS`.

Semantics shared by every form: ``reset(seed)`` seeds env ``i`` with ``seed + i``;
``step(actions, active)`` skips rows whose ``active`` is False (their observation comes back
unchanged, reward 0, terminated / truncated False); ``truncated`` is set when an env has been
stepped ``max_episode_steps`` times since the reset; every returned observation and reward is
checked to be finite (:class:`envs.base.NonFiniteStepError` names env id, task and index).
There is no auto-reset.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import gymnasium
import numpy as np

from .base import NonFiniteStepError, check_active, check_finite, copy_task
from .registry import NAMESPACE, family_of, load_object, task_distribution

__all__ = [
    "BatchedTaskEnv",
    "SerialBatchedEnv",
    "BATCHED_FORMS",
    "make_batched",
    "step_each",
    "step_tasks",
    "NonFiniteStepError",
]


@runtime_checkable
class BatchedTaskEnv(Protocol):
    num_envs: int
    single_observation_space: gymnasium.Space
    single_action_space: gymnasium.Space
    max_episode_steps: int

    def set_task(self, task: dict) -> None: ...

    def get_task(self) -> dict: ...

    def reset(self, seed: int) -> np.ndarray: ...

    def step(
        self, actions: np.ndarray, active: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]: ...


# full env id -> "module:Class" (or a class) with signature (env_id, num_envs, task=None, **env_kwargs)
BATCHED_FORMS: dict[str, Any] = {}
for _oracle in ("", "Oracle"):
    BATCHED_FORMS[f"{NAMESPACE}/Navigation2D{_oracle}-v0"] = "envs.navigation:BatchedNavigation2D"
    for _fam in ("HalfCheetahVel", "HalfCheetahDir", "AntVel", "AntDir", "AntGoal"):
        BATCHED_FORMS[f"{NAMESPACE}/{_fam}{_oracle}-v0"] = "envs._mujoco:MujocoBatchedEnv"


def _canonical_id(env_id: str) -> str:
    if env_id in gymnasium.registry:
        return env_id
    if family_of(env_id) is not None and not env_id.startswith(NAMESPACE + "/"):
        return f"{NAMESPACE}/{env_id}"
    return env_id


def make_batched(env_id: str, num_envs: int, task: dict | None = None, **env_kwargs) -> BatchedTaskEnv:
    """K = ``num_envs`` copies of ``env_id`` sharing ``task``; the fast form if one is registered
    in :data:`BATCHED_FORMS`, else :class:`SerialBatchedEnv`.  ``env_kwargs`` go to the env
    constructor (``max_episode_steps=`` overrides the registered horizon)."""
    env_id = _canonical_id(env_id)
    form = BATCHED_FORMS.get(env_id)
    if form is None:
        return SerialBatchedEnv(env_id, num_envs, task, **env_kwargs)
    cls = load_object(form) if isinstance(form, str) else form
    return cls(env_id, num_envs, task, **env_kwargs)


def step_tasks(
    envs: list[BatchedTaskEnv], actions: np.ndarray, active: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Step M batched envs (one task each) together: ``actions`` is ``[M, K, ...]``, ``active``
    ``[M, K]``; returns ``[M, K, ...]`` observations, rewards, terminated and truncated.

    Each env's result is what its own ``step(actions[i], active[i])`` returns.  A form whose class
    has a ``step_many(envs, actions, active)`` classmethod steps them all in one call (one set of
    array operations for the M tasks instead of M); any other form is stepped env by env, and so is a
    subclass that overrides ``step`` but not ``step_many`` (the inherited one would bypass its ``step``).
    """
    cls = type(envs[0])
    owner = _defined_in(cls, "step_many")
    if owner is not None and owner is _defined_in(cls, "step") and all(type(e) is cls for e in envs):
        return cls.step_many(envs, actions, active)
    return step_each(envs, actions, active)


def _defined_in(cls: type, name: str) -> type | None:
    """The class in ``cls``'s MRO whose own namespace defines ``name``."""
    return next((c for c in cls.__mro__ if name in vars(c)), None)


def step_each(
    envs: list[BatchedTaskEnv], actions: np.ndarray, active: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`step_tasks` one env at a time, through each env's own ``step``."""
    out = [env.step(a, active=act)[:4] for env, a, act in zip(envs, actions, active, strict=True)]
    return tuple(np.stack(x) for x in zip(*out, strict=True))  # type: ignore[return-value]


class SerialBatchedEnv:
    """Generic fallback: K ``gymnasium.make(env_id)`` envs stepped one after another.

    The envs are unwrapped (no per-step wrapper overhead) unless the spec adds wrappers beyond
    the standard time limit / order enforcing / env checker ones.  The task is applied with the
    env's ``set_task`` if it has one, else passed as ``reset(options={"task": task})``; it is
    validated with the id's task distribution when one is registered.  Observations must come
    from a ``Box`` space; they are flattened to ``[K, obs_dim]``.
    """

    def __init__(self, env_id: str, num_envs: int, task: dict | None = None, **env_kwargs):
        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        self.env_id = env_id
        self.num_envs = int(num_envs)
        spec = gymnasium.spec(env_id)
        max_steps = env_kwargs.pop("max_episode_steps", None) or spec.max_episode_steps
        if max_steps is None:
            raise ValueError(
                f"{env_id}: no max_episode_steps registered; pass max_episode_steps= to make_batched"
            )
        self.max_episode_steps = int(max_steps)
        self._env_kwargs = dict(env_kwargs)
        envs = [gymnasium.make(env_id, disable_env_checker=True, **env_kwargs) for _ in range(self.num_envs)]
        self.envs = [e if spec.additional_wrappers else e.unwrapped for e in envs]
        e0 = self.envs[0]
        if not isinstance(e0.observation_space, gymnasium.spaces.Box):
            raise ValueError(
                f"{env_id}: SerialBatchedEnv needs a Box observation space, got {e0.observation_space}"
            )
        self.single_observation_space = gymnasium.spaces.flatten_space(e0.observation_space)
        self.single_action_space = e0.action_space
        self._obs_dim = int(self.single_observation_space.shape[0])
        try:
            self._dist = task_distribution(env_id)
        except ValueError:
            self._dist = None
        self._has_set_task = all(callable(getattr(e.unwrapped, "set_task", None)) for e in self.envs)
        self._task: dict | None = None
        if task is not None:
            self.set_task(task)
        elif callable(getattr(e0.unwrapped, "get_task", None)):
            self._task = e0.unwrapped.get_task()
        self._obs = np.zeros((self.num_envs, self._obs_dim), dtype=self.single_observation_space.dtype)
        self._t = np.zeros(self.num_envs, dtype=np.int64)

    def set_task(self, task: dict) -> None:
        if self._dist is not None:
            task = self._dist.validate(task)
        if self._has_set_task:
            for e in self.envs:
                e.unwrapped.set_task(task)
        self._task = copy_task(task)

    def get_task(self) -> dict:
        if self._task is None:
            raise ValueError(f"{self.env_id}: no task has been set")
        return copy_task(self._task)

    def _flat(self, obs: Any) -> np.ndarray:
        return np.asarray(obs).reshape(self._obs_dim)

    def reset(self, seed: int) -> np.ndarray:
        options = None if (self._has_set_task or self._task is None) else {"task": copy_task(self._task)}
        rows = [self._flat(e.reset(seed=int(seed) + i, options=options)[0]) for i, e in enumerate(self.envs)]
        self._obs = np.stack(rows)
        self._t[:] = 0
        return self._obs.copy()

    def step(self, actions: np.ndarray, active: np.ndarray | None = None):
        where = f"{self.env_id} batched step"
        k = self.num_envs
        act = check_active(active, k, where)
        actions = np.asarray(actions)
        if actions.shape[0] != k:
            raise ValueError(f"{where}: actions must have leading dimension {k}, got shape {actions.shape}")
        if actions.dtype.kind in "fc":
            finite = np.isfinite(actions.reshape(k, -1)).all(axis=1)
            bad = act & ~finite
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{where}: action of env {i} contains NaN or inf: {actions[i]}")
        obs = self._obs.copy()
        reward = np.zeros(k)
        terminated = np.zeros(k, dtype=bool)
        env_truncated = np.zeros(k, dtype=bool)
        infos: list[dict] = [{} for _ in range(k)]
        for i in np.flatnonzero(act):
            o, r, term, trunc, info = self.envs[i].step(actions[i])
            obs[i] = self._flat(o)
            reward[i] = r
            terminated[i] = term
            env_truncated[i] = trunc
            infos[i] = info
        self._t += act
        truncated = act & ((self._t >= self.max_episode_steps) | env_truncated)
        check_finite(self.env_id, self._task, obs, reward)
        self._obs = obs
        return obs.copy(), reward, terminated, truncated, {"infos": infos}

    def close(self) -> None:
        for e in self.envs:
            e.close()
