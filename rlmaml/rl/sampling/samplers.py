"""Samplers hand task requests to ``RolloutWorker``s and yield results as they finish.

``LocalSampler`` runs one worker in-process (tests, ``--backend local``). ``RaySampler`` (in
:mod:`rlmaml.rl.sampling.ray_sampler`) runs the same class as Ray actors. Both yield one result per request, in any
order; the learner keys them by task index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from rlmaml.rl.sampling.worker import RolloutWorker, TaskRequest, WorkerSpec


class Sampler(Protocol):
    """Something that turns task requests into worker results."""

    def sample(self, weights: dict[str, np.ndarray], requests: Sequence[TaskRequest]) -> Iterator[dict[str, Any]]:
        """Yield one result per request as each finishes; ``weights`` are θ as numpy."""
        ...

    def spaces(self) -> tuple[Any, Any]:
        """The single-env observation and action spaces."""
        ...

    def fault_counts(self) -> dict[str, int]:
        """Faults seen so far (restarts, retries, timeouts), for metrics.jsonl."""
        ...

    def close(self) -> None:
        ...


class LocalSampler:
    """One in-process ``RolloutWorker``; the requests of a call are sampled together (``sample_tasks``)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.worker = RolloutWorker(spec)

    def sample(self, weights: dict[str, np.ndarray], requests: Sequence[TaskRequest]) -> Iterator[dict[str, Any]]:
        yield from self.worker.sample_tasks(weights, requests)

    def spaces(self) -> tuple[Any, Any]:
        return self.worker.spaces()

    def fault_counts(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass
