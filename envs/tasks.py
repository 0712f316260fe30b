"""Task distributions for the parameterised task suite.

A *task* is a plain ``dict`` of floats / lists / numpy arrays (so it pickles,
prints and travels through Ray without custom code).  A *task distribution*
samples tasks from a ``numpy.random.Generator`` and validates tasks given by a
user (``validate`` returns a normalised copy or raises ``ValueError`` naming the
task and the offending field).

Concrete distributions:

* :class:`GoalPositionDistribution` -> ``{"goal": np.ndarray (dim,)}``
* :class:`GoalVelocityDistribution` -> ``{"velocity": float}``
* :class:`DirectionDistribution` -> ``{"direction": +1.0 or -1.0}``
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "TaskDistribution",
    "GoalPositionDistribution",
    "GoalVelocityDistribution",
    "DirectionDistribution",
]


@runtime_checkable
class TaskDistribution(Protocol):
    """What every task distribution provides (structural typing)."""

    def sample(self, n: int, rng: np.random.Generator) -> list[dict]:
        """Draw ``n`` independent tasks using ``rng`` only."""
        ...

    def validate(self, task: dict) -> dict:
        """Return a normalised copy of ``task``; raise ``ValueError`` if it is bad."""
        ...


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return int(n)


def _require_dict(task: Any, dist: str) -> dict:
    if not isinstance(task, dict):
        raise ValueError(f"{dist}: task must be a dict, got {type(task).__name__}: {task!r}")
    return task


def _require_key(task: dict, key: str, dist: str) -> Any:
    if key not in task:
        raise ValueError(f"{dist}: task {task!r} is missing field {key!r}")
    return task[key]


def _scalar(task: dict, key: str, dist: str) -> float:
    value = _require_key(task, key, dist)
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{dist}: task {task!r}: field {key!r} must be a real number, got a bool")
    if isinstance(value, Real):
        x = float(value)
    else:
        try:
            arr = np.asarray(value)
        except Exception as e:  # pragma: no cover - exotic objects
            raise ValueError(f"{dist}: task {task!r}: field {key!r} is not a number: {value!r}") from e
        if arr.shape not in ((), (1,)) or arr.dtype.kind not in "iuf":
            raise ValueError(
                f"{dist}: task {task!r}: field {key!r} must be a real scalar, "
                f"got shape {arr.shape} dtype {arr.dtype}"
            )
        x = float(arr.reshape(()))
    if not math.isfinite(x):
        raise ValueError(f"{dist}: task {task!r}: field {key!r} must be finite, got {x}")
    return x


class GoalPositionDistribution:
    """Goal positions uniform in the box ``[low, high]^dim``; tasks ``{"goal": ndarray(dim,)}``."""

    def __init__(self, low: float, high: float, dim: int) -> None:
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"GoalPositionDistribution: need finite low < high, got [{low}, {high}]")
        if int(dim) != dim or dim < 1:
            raise ValueError(f"GoalPositionDistribution: dim must be a positive integer, got {dim!r}")
        self.low, self.high, self.dim = float(low), float(high), int(dim)

    def sample(self, n: int, rng: np.random.Generator) -> list[dict]:
        goals = rng.uniform(self.low, self.high, size=(_check_n(n), self.dim))
        return [{"goal": g.copy()} for g in goals]

    def default_task(self) -> dict:
        """Centre of the box (used when an env is built without a task)."""
        return {"goal": np.full(self.dim, 0.5 * (self.low + self.high))}

    def validate(self, task: dict) -> dict:
        name = repr(self)
        _require_dict(task, name)
        value = _require_key(task, "goal", name)
        try:
            goal = np.array(value, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: task {task!r}: field 'goal' is not numeric: {value!r}") from e
        if goal.shape != (self.dim,):
            raise ValueError(
                f"{name}: task {task!r}: field 'goal' must have shape ({self.dim},), got {goal.shape}"
            )
        if not np.all(np.isfinite(goal)):
            raise ValueError(f"{name}: task {task!r}: field 'goal' must be finite, got {goal}")
        if np.any(goal < self.low) or np.any(goal > self.high):
            raise ValueError(
                f"{name}: task {task!r}: field 'goal' = {goal} is out of range [{self.low}, {self.high}]"
            )
        out = dict(task)
        out["goal"] = goal
        return out

    def __repr__(self) -> str:
        return f"GoalPositionDistribution(low={self.low}, high={self.high}, dim={self.dim})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GoalPositionDistribution) and (self.low, self.high, self.dim) == (
            other.low,
            other.high,
            other.dim,
        )


class GoalVelocityDistribution:
    """Goal velocities uniform in ``[low, high]``; tasks ``{"velocity": float}``."""

    def __init__(self, low: float, high: float) -> None:
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"GoalVelocityDistribution: need finite low < high, got [{low}, {high}]")
        self.low, self.high = float(low), float(high)

    def sample(self, n: int, rng: np.random.Generator) -> list[dict]:
        return [{"velocity": float(v)} for v in rng.uniform(self.low, self.high, size=_check_n(n))]

    def default_task(self) -> dict:
        return {"velocity": 0.5 * (self.low + self.high)}

    def validate(self, task: dict) -> dict:
        name = repr(self)
        _require_dict(task, name)
        v = _scalar(task, "velocity", name)
        if not (self.low <= v <= self.high):
            raise ValueError(
                f"{name}: task {task!r}: field 'velocity' = {v} is out of range [{self.low}, {self.high}]"
            )
        out = dict(task)
        out["velocity"] = v
        return out

    def __repr__(self) -> str:
        return f"GoalVelocityDistribution(low={self.low}, high={self.high})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GoalVelocityDistribution) and (self.low, self.high) == (
            other.low,
            other.high,
        )


class DirectionDistribution:
    """Direction +1 or -1 with probability 1/2 each; tasks ``{"direction": ±1.0}``."""

    def sample(self, n: int, rng: np.random.Generator) -> list[dict]:
        signs = rng.integers(0, 2, size=_check_n(n)) * 2 - 1
        return [{"direction": float(s)} for s in signs]

    def default_task(self) -> dict:
        return {"direction": 1.0}

    def validate(self, task: dict) -> dict:
        name = repr(self)
        _require_dict(task, name)
        d = _scalar(task, "direction", name)
        if d not in (1.0, -1.0):
            raise ValueError(f"{name}: task {task!r}: field 'direction' must be +1 or -1, got {d}")
        out = dict(task)
        out["direction"] = d
        return out

    def __repr__(self) -> str:
        return "DirectionDistribution()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DirectionDistribution)
