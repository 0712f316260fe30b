"""The bookkeeping of one ``RaySampler.sample()`` call: its batch of requests, the actor calls in flight, and the
conversion of what comes back (results made writable, a worker exception as one line)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlmaml.rl.sampling.actor_pool import ActorSlot, first_line
from rlmaml.rl.sampling.worker import TaskRequest


@dataclass(eq=False)
class SampleBatch:
    """The requests of one ``sample()`` call and their progress."""

    requests: Sequence[TaskRequest]
    weights_ref: Any
    todo: deque[list[int]]
    """The calls still to send, each a list of positions in ``requests``."""
    attempts: list[int]
    done: list[bool]
    last_error: list[str]
    remaining: int


@dataclass(eq=False)
class ActorCall:
    ref: Any
    positions: list[int]
    batch: SampleBatch
    slot: ActorSlot
    submitted: float
    started: float | None = None
    """When the actor (probably) began this call: at submission if its queue was empty, else when the call
    ahead of it finished. Actor calls run in submission order."""


def writable(result: dict[str, Any]) -> dict[str, Any]:
    """Ray hands numpy arrays back read-only (zero-copy from the object store); torch warns on those and a
    learner that wrote into one would fail. Copy the episode arrays once (cheap next to sampling them)."""
    result["episodes"] = [{k: (v if v.flags.writeable else v.copy()) if isinstance(v, np.ndarray) else v
                           for k, v in batch.items()} for batch in result["episodes"]]
    return result


def worker_cause(exc: Any) -> str:
    """The user-level exception inside a ``RayTaskError``, as ``Type: message``."""
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return first_line(exc)
