"""Shared task handling for the suite's envs (no MuJoCo import here)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from gymnasium import spaces

from .registry import FAMILIES

SUPPORTED_SPACES = "a Box observation (a feature vector) and a Box or Discrete action"


def copy_task(task: dict) -> dict:
    """Deep-ish copy of a task dict (numpy arrays and lists are copied)."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else copy.deepcopy(v)) for k, v in task.items()}


def check_action(action: Any, shape: tuple[int, ...], low: Any, high: Any, where: str) -> np.ndarray:
    """Validate and clip one action: float64 array of ``shape``; NaN/inf or a wrong shape raise."""
    try:
        a = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: action is not numeric: {action!r}") from e
    if a.shape != shape:
        if a.size == int(np.prod(shape)) and a.ndim <= 1:
            a = a.reshape(shape)
        else:
            raise ValueError(f"{where}: action must have shape {shape}, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{where}: action contains NaN or inf: {a}")
    return np.clip(a, low, high)


def check_actions(
    actions: Any, active: np.ndarray, shape: tuple[int, ...], low: Any, high: Any, where: str
) -> np.ndarray:
    """Batched :func:`check_action`: ``actions`` is ``[K, *shape]``; rows with ``active`` False are
    ignored (and zeroed), so they may hold anything, NaN included."""
    k = active.shape[0]
    try:
        a = np.asarray(actions, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: actions are not numeric") from e
    if a.shape != (k, *shape):
        raise ValueError(f"{where}: actions must have shape {(k, *shape)}, got {a.shape}")
    finite = np.isfinite(a).reshape(k, -1).all(axis=1)
    bad = active & ~finite
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where}: action of env {i} contains NaN or inf: {a[i]}")
    if not active.all():
        a = np.where(active.reshape((k,) + (1,) * len(shape)), a, 0.0)
    return np.clip(a, low, high)


def space_str(space: Any, limit: int = 160) -> str:
    """``space`` on one line (numpy wraps long bound arrays), shortened to ``limit`` characters."""
    text = " ".join(str(space).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_image_space(space: spaces.Space) -> bool:
    """An image-like Box: 3 or more dimensions, or a 2-D ``uint8`` (grayscale) array."""
    shape = getattr(space, "shape", None) or ()
    return isinstance(space, spaces.Box) and (len(shape) >= 3 or (len(shape) == 2 and space.dtype == np.uint8))


def check_spaces(env_id: str, observation_space: spaces.Space, action_space: spaces.Space) -> None:
    """Refuse, in one line naming the space, what the MLP policies cannot take: a non-Box or image
    observation, an action that is neither a Box nor a Discrete.  Checked before flattening, so an
    image is still recognisable."""
    if not isinstance(observation_space, spaces.Box):
        raise ValueError(
            f"{env_id}: observation space {space_str(observation_space)} is not supported; the batched envs "
            f"take {SUPPORTED_SPACES} (flatten a Dict or Tuple with gymnasium.wrappers.FlattenObservation)"
        )
    if is_image_space(observation_space):
        raise ValueError(
            f"{env_id}: image observations ({space_str(observation_space)}) are not supported by the MLP policy; "
            f"the batched envs take {SUPPORTED_SPACES} (give the env a feature-vector observation)"
        )
    if not isinstance(action_space, (spaces.Box, spaces.Discrete)):
        raise ValueError(
            f"{env_id}: action space {space_str(action_space)} is not supported; the batched envs take "
            f"{SUPPORTED_SPACES}"
        )


class NonFiniteStepError(FloatingPointError):
    """A batched stepper produced a non-finite observation or reward."""


def check_finite(env_id: str, task: dict, obs: np.ndarray, reward: np.ndarray) -> None:
    """Raise :class:`NonFiniteStepError` naming env id, task and env index if any row is non-finite."""
    if np.isfinite(obs).all() and np.isfinite(reward).all():
        return
    k = obs.shape[0]
    bad = ~(np.isfinite(obs.reshape(k, -1)).all(axis=1) & np.isfinite(reward))
    i = int(np.flatnonzero(bad)[0])
    raise NonFiniteStepError(
        f"{env_id}: env index {i} returned a non-finite observation or reward "
        f"(task {task!r}; reward {reward[i]!r}; observation {obs[i]!r})"
    )


def check_active(active: Any, k: int, where: str) -> np.ndarray:
    if active is None:
        return np.ones(k, dtype=bool)
    act = np.asarray(active)
    if act.shape != (k,):
        raise ValueError(f"{where}: active must have shape ({k},), got {act.shape}")
    if act.dtype != np.bool_:
        if act.dtype.kind not in "iu" or not np.isin(act, (0, 1)).all():
            raise ValueError(f"{where}: active must be a bool array, got dtype {act.dtype}")
        act = act.astype(bool)
    return act


class TaskEnvMixin:
    """Task handling shared by every env of the suite.

    Subclasses set ``family`` (a key of :data:`envs.registry.FAMILIES`) and implement
    ``_task_vector(task) -> np.ndarray`` (the parameters appended to oracle observations).
    """

    family: str = ""
    task_dim: int = 0

    def _init_task(self, task: dict | None, oracle: bool) -> None:
        self._task_dist = FAMILIES[self.family][2]()
        self._oracle = bool(oracle)
        self._task = self._task_dist.default_task() if task is None else self._task_dist.validate(task)
        self._task_vec = self._task_vector(self._task)

    @property
    def oracle(self) -> bool:
        return self._oracle

    @property
    def task_distribution(self):
        return self._task_dist

    def validate_task(self, task: dict) -> dict:
        return self._task_dist.validate(task)

    def set_task(self, task: dict) -> None:
        """Set the task (validated); takes effect immediately, also for the running episode."""
        task = self._task_dist.validate(task)
        self._task = task
        self._task_vec = self._task_vector(task)
        ez = getattr(self, "_ezpickle_kwargs", None)
        if ez is not None:  # so that a pickled env comes back with its current task
            ez["task"] = copy_task(task)

    def get_task(self) -> dict:
        return copy_task(self._task)

    def _task_from_options(self, options: dict | None) -> dict | None:
        if options and options.get("task") is not None:
            return self._task_dist.validate(options["task"])
        return None

    @staticmethod
    def _task_vector(task: dict) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError
