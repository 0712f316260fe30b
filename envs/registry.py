"""Environment ids of the suite, their task distributions, and a registry for user ids.

Nothing here imports MuJoCo: the env classes are referenced by string entry points.
"""

from __future__ import annotations

import importlib
from typing import Any

from .tasks import (
    DirectionDistribution,
    GoalPositionDistribution,
    GoalVelocityDistribution,
    TaskDistribution,
)

__all__ = [
    "NAMESPACE",
    "FAMILIES",
    "ENV_IDS",
    "task_distribution",
    "register_task_distribution",
    "load_object",
    "register_envs",
    "family_of",
]

NAMESPACE = "rlmaml"

# family -> (entry point, max_episode_steps, task distribution factory, needs MuJoCo)
FAMILIES: dict[str, tuple[str, int, Any, bool]] = {
    "Navigation2D": (
        "envs.navigation:Navigation2DEnv",
        100,
        lambda: GoalPositionDistribution(-0.5, 0.5, 2),
        False,
    ),
    "HalfCheetahVel": (
        "envs.half_cheetah:HalfCheetahVelEnv",
        200,
        lambda: GoalVelocityDistribution(0.0, 2.0),
        True,
    ),
    "HalfCheetahDir": ("envs.half_cheetah:HalfCheetahDirEnv", 200, DirectionDistribution, True),
    "AntVel": ("envs.ant:AntVelEnv", 200, lambda: GoalVelocityDistribution(0.0, 3.0), True),
    "AntDir": ("envs.ant:AntDirEnv", 200, DirectionDistribution, True),
    "AntGoal": ("envs.ant:AntGoalEnv", 200, lambda: GoalPositionDistribution(-3.0, 3.0, 2), True),
}


def _full_id(family: str, oracle: bool) -> str:
    return f"{NAMESPACE}/{family}{'Oracle' if oracle else ''}-v0"


ENV_IDS: tuple[str, ...] = tuple(_full_id(f, o) for f in FAMILIES for o in (False, True))

_USER_DISTRIBUTIONS: dict[str, Any] = {}


def family_of(env_id: str) -> tuple[str, bool] | None:
    """``"rlmaml/AntVelOracle-v0"`` or ``"AntVelOracle-v0"`` -> ``("AntVel", True)``; else None."""
    name = env_id
    if name.startswith(NAMESPACE + "/"):
        name = name[len(NAMESPACE) + 1 :]
    if not name.endswith("-v0"):
        return None
    name = name[: -len("-v0")]
    oracle = name.endswith("Oracle")
    if oracle:
        name = name[: -len("Oracle")]
    return (name, oracle) if name in FAMILIES else None


def register_envs() -> None:
    """Register every id with gymnasium (idempotent)."""
    import gymnasium

    for family, (entry_point, horizon, _, _) in FAMILIES.items():
        for oracle in (False, True):
            env_id = _full_id(family, oracle)
            if env_id in gymnasium.registry:
                continue
            gymnasium.register(
                id=env_id,
                entry_point=entry_point,
                max_episode_steps=horizon,
                kwargs={"oracle": oracle},
            )


def load_object(path: str) -> Any:
    """Import ``"package.module:attr.sub"`` and return the attribute."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise ValueError(f"load_object: expected 'module:attribute', got {path!r}")
    module_name, attr = path.split(":")
    if not module_name or not attr:
        raise ValueError(f"load_object: expected 'module:attribute', got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"load_object({path!r}): cannot import module {module_name!r}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise ValueError(f"load_object({path!r}): {module_name!r} has no attribute {attr!r}") from e
    return obj


def _as_distribution(obj: Any, source: str) -> TaskDistribution:
    if isinstance(obj, str):
        obj = load_object(obj)
    if isinstance(obj, type):
        obj = obj()
    if not (callable(getattr(obj, "sample", None)) and callable(getattr(obj, "validate", None))):
        raise ValueError(f"{source}: {obj!r} is not a TaskDistribution (needs sample() and validate())")
    return obj


def register_task_distribution(env_id: str, dist: Any) -> None:
    """Associate a task distribution (instance, class, or ``"module:Class"``) with a user env id.

    Strings are resolved lazily, on the first :func:`task_distribution` call.
    """
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"register_task_distribution: env_id must be a non-empty string, got {env_id!r}")
    if not isinstance(dist, str):
        dist = _as_distribution(dist, f"register_task_distribution({env_id!r})")
    _USER_DISTRIBUTIONS[env_id] = dist


def task_distribution(env_id: str) -> TaskDistribution:
    """The task distribution of ``env_id``.

    Looks, in order, at: the user registry (:func:`register_task_distribution`); the suite's ids
    (with or without the ``rlmaml/`` prefix; oracle ids share their family's distribution); an
    explicit ``"module:Class"`` path.  Otherwise raises ``ValueError`` listing the known ids.
    """
    if env_id in _USER_DISTRIBUTIONS:
        dist = _as_distribution(_USER_DISTRIBUTIONS[env_id], f"task_distribution({env_id!r})")
        _USER_DISTRIBUTIONS[env_id] = dist
        return dist
    fam = family_of(env_id) if isinstance(env_id, str) else None
    if fam is not None:
        return FAMILIES[fam[0]][2]()
    if isinstance(env_id, str) and env_id.count(":") == 1:
        # Either an explicit "module:Class" path, or a gymnasium "module:EnvId" form.
        module_name, rest = env_id.split(":")
        if rest in _USER_DISTRIBUTIONS or family_of(rest) is not None:
            return task_distribution(rest)
        return _as_distribution(load_object(env_id), f"task_distribution({env_id!r})")
    known = sorted(set(ENV_IDS) | set(_USER_DISTRIBUTIONS))
    raise ValueError(
        f"task_distribution: unknown env id {env_id!r}; known ids: {', '.join(known)} "
        "(register others with envs.register_task_distribution, or pass 'module:Class')"
    )
