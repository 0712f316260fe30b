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

Every form takes :data:`envs.base.SUPPORTED_SPACES` (``make_batched`` refuses anything else in one
line: Dict / Tuple observations, image observations, MultiDiscrete / Dict / ... actions).

How :class:`SerialBatchedEnv` gives a user env its task (any Gymnasium env, wrapped or not):

1. ``set_task(task)`` on the OUTERMOST layer of the wrapper stack that has one (``env``,
   ``env.env``, ... down to ``env.unwrapped``; Gymnasium 1.x wrappers forward no attributes, so
   each layer is looked at on its own): a ``gymnasium.Wrapper`` adding ``set_task`` or an env
   subclass with one.
2. Otherwise ``reset(options={"task": task})`` through the whole stack, if the env reads it: some
   layer declares ``task_from_options = True``, or a probe reset (on a spare env, once, when the
   first task is set) sees ``options["task"]`` looked up.  Stock envs accept ``options`` but never
   look up ``"task"`` (Pendulum-v1 reads ``"x_init"``), so they are not mistaken for task envs.
3. Otherwise setting a task raises a one-line ``ValueError`` naming the env id and both routes (an
   env without a route still runs with no task).

The envs are stepped and reset through the whole stack whenever it holds a wrapper other than
Gymnasium's standard ``TimeLimit`` / ``OrderEnforcing`` / ``PassiveEnvChecker``; with only those,
the unwrapped envs are stepped directly (no per-step wrapper cost) and the task goes to them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import gymnasium
import numpy as np
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, TimeLimit

from .base import NonFiniteStepError, check_active, check_finite, check_spaces, copy_task
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
    env = cls(env_id, num_envs, task, **env_kwargs)
    check_spaces(env_id, env.single_observation_space, env.single_action_space)
    return env


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


def share_physics(envs: list[BatchedTaskEnv]) -> bool:
    """Let M batched envs of one form share their physics, where the form's class has a
    ``share_physics(envs)`` classmethod (the MuJoCo tasks: one ``mujoco.batch`` call steps all M·K
    simulations in :func:`step_tasks`); returns whether they share. Results are unchanged either way."""
    cls = type(envs[0]) if envs else None
    share = getattr(cls, "share_physics", None)
    if share is None or any(type(e) is not cls for e in envs):
        return False
    return bool(share(envs))


def _defined_in(cls: type, name: str) -> type | None:
    """The class in ``cls``'s MRO whose own namespace defines ``name``."""
    return next((c for c in cls.__mro__ if name in vars(c)), None)


def step_each(
    envs: list[BatchedTaskEnv], actions: np.ndarray, active: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`step_tasks` one env at a time, through each env's own ``step``."""
    out = [env.step(a, active=act)[:4] for env, a, act in zip(envs, actions, active, strict=True)]
    return tuple(np.stack(x) for x in zip(*out, strict=True))  # type: ignore[return-value]


# Gymnasium's own wrappers that ``gymnasium.make`` adds; a stack of only these may be bypassed.
STANDARD_WRAPPERS: tuple[type, ...] = (TimeLimit, OrderEnforcing, PassiveEnvChecker)


def wrapper_stack(env: gymnasium.Env) -> list[gymnasium.Env]:
    """``[env, env.env, ..., env.unwrapped]``: every layer, outermost first."""
    layers = [env]
    while isinstance(layers[-1], gymnasium.Wrapper):
        layers.append(layers[-1].env)
    return layers


def outermost_method(env: gymnasium.Env, name: str) -> Any | None:
    """The bound ``name`` method of the outermost layer of ``env``'s stack that has one, else None."""
    for layer in wrapper_stack(env):
        method = getattr(layer, name, None)
        if callable(method):
            return method
    return None


class _TaskOptionProbe(dict):
    """Reset options that note whether the env looked up ``"task"`` (any of the usual ways)."""

    read = False

    def _note(self, key: Any) -> None:
        if key == "task":
            self.read = True

    def __getitem__(self, key: Any) -> Any:
        self._note(key)
        return super().__getitem__(key)

    def __contains__(self, key: Any) -> bool:
        self._note(key)
        return super().__contains__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self._note(key)
        return super().get(key, default)

    def pop(self, key: Any, *default: Any) -> Any:
        self._note(key)
        return super().pop(key, *default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._note(key)
        return super().setdefault(key, default)


def reads_task_option(env: gymnasium.Env, task: dict) -> bool:
    """Whether ``env`` takes its task from ``reset(options={"task": ...})``: a layer declares
    ``task_from_options = True``, or a reset with ``task`` sees the env look the key up."""
    if any(getattr(layer, "task_from_options", False) is True for layer in wrapper_stack(env)):
        return True
    probe = _TaskOptionProbe(task=copy_task(task))
    env.reset(seed=0, options=probe)
    return probe.read


class SerialBatchedEnv:
    """Generic fallback: K ``gymnasium.make(env_id)`` envs stepped one after another.

    The task route and the wrapper rule are the module docstring's.  The task is validated with the
    id's task distribution when one is registered.  The batched env's own spaces are flat: the
    observation Box is flattened to ``[K, obs_dim]``; a Box action is given flat (reshaped and clipped
    to the env's bounds here, an infinite bound clipping nothing); a ``Discrete(n, start)`` action is
    given as an index in ``0..n-1`` (``start`` is added here).
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
        envs = [self._make() for _ in range(self.num_envs)]
        check_spaces(env_id, envs[0].observation_space, envs[0].action_space)
        standard = all(type(w) in STANDARD_WRAPPERS for w in wrapper_stack(envs[0])[:-1])
        self.envs = [e.unwrapped for e in envs] if standard else envs
        self._env_action_space = self.envs[0].action_space
        self.single_observation_space = gymnasium.spaces.flatten_space(self.envs[0].observation_space)
        self.single_action_space = self._flat_action_space(self._env_action_space)
        self._obs_dim = int(self.single_observation_space.shape[0])
        try:
            self._dist = task_distribution(env_id)
        except ValueError:
            self._dist = None
        self._setters = [outermost_method(e, "set_task") for e in self.envs]
        self._task_from_options: bool | None = None  # found out when the first task is set
        self._task: dict | None = None
        get_task = outermost_method(self.envs[0], "get_task")
        if task is not None:
            self.set_task(task)
        elif get_task is not None:
            self._task = get_task()
        self._obs = np.zeros((self.num_envs, self._obs_dim), dtype=self.single_observation_space.dtype)
        self._t = np.zeros(self.num_envs, dtype=np.int64)

    def _make(self) -> gymnasium.Env:
        """One env of the id, its time limit at the batched env's horizon."""
        return gymnasium.make(
            self.env_id, disable_env_checker=True, max_episode_steps=self.max_episode_steps, **self._env_kwargs
        )

    @staticmethod
    def _flat_action_space(space: gymnasium.Space) -> gymnasium.Space:
        """The space the batched env takes actions in: a flat Box, or Discrete(n) indices."""
        if isinstance(space, gymnasium.spaces.Discrete):
            return gymnasium.spaces.Discrete(int(space.n))
        return gymnasium.spaces.flatten_space(space)

    def _reads_task_option(self, task: dict) -> bool:
        """Whether the env takes its task through reset options (probed once, on a spare env)."""
        if self._task_from_options is None:
            spare = self._make()
            try:
                self._task_from_options = reads_task_option(spare, task)
            finally:
                spare.close()
        return self._task_from_options

    def _no_route_error(self) -> ValueError:
        layers = " > ".join(type(layer).__name__ for layer in wrapper_stack(self.envs[0]))
        return ValueError(
            f"{self.env_id}: the env has no way to take a task: no layer of its stack ({layers}) has "
            "set_task(task), and its reset never reads options['task']; add a set_task(task) method to "
            "the env or to a gymnasium.Wrapper around it, or read the task from reset(options={'task': task}) "
            "(set task_from_options = True on the class if it reads a copy of the options)"
        )

    def set_task(self, task: dict) -> None:
        if self._dist is not None:
            task = self._dist.validate(task)
        if self._setters[0] is not None:
            for set_task in self._setters:
                set_task(task)
        elif not self._reads_task_option(task):
            raise self._no_route_error()
        self._task = copy_task(task)

    def get_task(self) -> dict:
        if self._task is None:
            raise ValueError(f"{self.env_id}: no task has been set")
        return copy_task(self._task)

    def _flat(self, obs: Any) -> np.ndarray:
        return np.asarray(obs).reshape(self._obs_dim)

    def _env_actions(self, actions: np.ndarray, where: str) -> np.ndarray:
        """``[K, ...]`` batched-space actions as the env takes them (shape, bounds, ``start``)."""
        k, space = self.num_envs, self._env_action_space
        if isinstance(space, gymnasium.spaces.Discrete):
            if actions.size != k:
                raise ValueError(f"{where}: Discrete actions must have shape ({k},), got {actions.shape}")
            return actions.reshape(k) + int(space.start)
        flat = self.single_action_space
        if actions.size != k * flat.shape[0]:
            raise ValueError(f"{where}: actions must have shape {(k, *flat.shape)}, got {actions.shape}")
        a = np.clip(actions.reshape(k, -1), flat.low, flat.high).reshape(k, *space.shape)
        return a.astype(space.dtype) if np.issubdtype(space.dtype, np.floating) else a

    def reset(self, seed: int) -> np.ndarray:
        by_options = self._setters[0] is None and self._task is not None
        options = {"task": copy_task(self._task)} if by_options else None
        rows = [self._flat(e.reset(seed=int(seed) + i, options=options)[0]) for i, e in enumerate(self.envs)]
        self._obs = np.stack(rows)
        self._t[:] = 0
        return self._obs.copy()

    def step(self, actions: np.ndarray, active: np.ndarray | None = None):
        where = f"{self.env_id} batched step"
        k = self.num_envs
        act = check_active(active, k, where)
        actions = np.asarray(actions)
        if actions.ndim == 0 or actions.shape[0] != k:
            raise ValueError(f"{where}: actions must have leading dimension {k}, got shape {actions.shape}")
        if actions.dtype.kind in "fc":
            finite = np.isfinite(actions.reshape(k, -1)).all(axis=1)
            bad = act & ~finite
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{where}: action of env {i} contains NaN or inf: {actions[i]}")
        env_actions = self._env_actions(actions, where)
        obs = self._obs.copy()
        reward = np.zeros(k)
        terminated = np.zeros(k, dtype=bool)
        env_truncated = np.zeros(k, dtype=bool)
        infos: list[dict] = [{} for _ in range(k)]
        for i in np.flatnonzero(act):
            o, r, term, trunc, info = self.envs[i].step(env_actions[i])
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
