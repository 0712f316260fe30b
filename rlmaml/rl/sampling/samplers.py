"""Samplers hand task requests to ``RolloutWorker``s and yield results as they finish.

``LocalSampler`` runs one worker in-process (tests, ``--backend local``). ``RaySampler`` (in
:mod:`rlmaml.rl.sampling.ray_sampler`) runs the same class as Ray actors. Both yield one result per request, in any
order; the learner keys them by task index.

A task whose rollout fails (an exception in the env or policy, or a call past its timeout) is, for a request with
``invalid_ok`` on a sampler told to skip such tasks (``rl.on_task_error=skip_task``), a result marked
``valid: False, failed: True`` with a one-line ``reason`` naming the task and its seeds; otherwise it is a
:class:`TaskFailedError` with that line. Both backends time tasks out the same way: ``rl.task_timeout_s`` seconds
per task of a call, or (0) :func:`auto_task_timeout` of the slowest task measured so far.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from rlmaml.errors import TrainingStopped
from rlmaml.rl.sampling.rollout import one_line, task_seeds
from rlmaml.rl.sampling.worker import RolloutWorker, TaskRequest, WorkerSpec

FIRST_TIMEOUT_S = 300.0
"""The automatic per-task timeout before any task has been measured (the first iteration)."""
MIN_AUTO_TIMEOUT_S = 60.0
AUTO_TIMEOUT_FACTOR = 10.0


class TaskFailedError(TrainingStopped):
    """A rollout task failed for good: an error raised in the env/policy, or too many infrastructure faults.

    It ends a training run with one line (``rlmaml: stopped: ...``); the CLI keeps its traceback in RUN/error.log.
    """

    keep_traceback = True


def auto_task_timeout(slowest_s: float | None) -> float:
    """``rl.task_timeout_s=0``: :data:`FIRST_TIMEOUT_S` until a task has been measured, then
    max(60 s, 10 x the slowest per-task sampling time seen so far)."""
    if slowest_s is None or not math.isfinite(slowest_s):
        return FIRST_TIMEOUT_S
    return max(MIN_AUTO_TIMEOUT_S, AUTO_TIMEOUT_FACTOR * slowest_s)


class TaskTimer:
    """The per-task timeout of a sampler: ``configured`` seconds, or (0) derived from measured task times."""

    def __init__(self, configured: float) -> None:
        self.configured = float(configured)
        self.slowest_s: float | None = None
        self._seen: float = 0.0

    def seconds(self) -> float:
        return self.configured if self.configured > 0 else auto_task_timeout(self.slowest_s)

    def observe(self, result: dict[str, Any]) -> None:
        """Note one result's per-task sampling time (applied once :meth:`iteration_done` is called)."""
        self._seen = max(self._seen, float(result.get("sample_time_s", 0.0) or 0.0))

    def iteration_done(self) -> None:
        if self._seen > 0:
            self.slowest_s = max(self.slowest_s or 0.0, self._seen)

    def describe(self) -> str:
        if self.configured > 0:
            return f"rl.task_timeout_s={self.configured:g} s per task"
        return f"the automatic timeout of {self.seconds():.0f} s per task (rl.task_timeout_s=0)"


def describe_request(spec: WorkerSpec, req: TaskRequest) -> str:
    """'rollout of task 3 {goal} on ENV (iteration 2, run seed 0, env seed .., noise seed ..)': enough to redo it."""
    env_seed, noise_seed = task_seeds(spec.seed, req.iteration, req.task_index, req.stream)
    return (f"rollout of task {req.task_index} {req.task} on {spec.env_id} (iteration {req.iteration}, "
            f"run seed {spec.seed}, env seed {env_seed}, noise seed {noise_seed})")


def failed_result(req: TaskRequest, reason: str) -> dict[str, Any]:
    """The result of a task whose rollout failed and was skipped: no episodes, ``valid: False``, the reason."""
    return {"iteration": req.iteration, "task_index": req.task_index, "task": req.task, "episodes": [],
            "lrs": list(req.lrs), "env_steps": 0, "sample_time_s": 0.0, "valid": False, "failed": True,
            "reason": reason}


class Sampler(Protocol):
    """Something that turns task requests into worker results."""

    def sample(self, weights: dict[str, np.ndarray], requests: Sequence[TaskRequest]) -> Iterator[dict[str, Any]]:
        """Yield one result per request as each finishes; ``weights`` are θ as numpy."""
        ...

    def spaces(self) -> tuple[Any, Any]:
        """The single-env observation and action spaces."""
        ...

    def fault_counts(self) -> dict[str, int]:
        """Faults seen so far (restarts, retries, timeouts), cumulative; the trainer logs each iteration's share."""
        ...

    def close(self) -> None:
        ...


class _Timeout(BaseException):
    """Raised by the watchdog's SIGALRM inside a sampling call. A BaseException, so that the worker's own
    ``except Exception`` handling (its per-task fallback) does not swallow it."""


class LocalSampler:
    """One in-process ``RolloutWorker``; the requests of a call are sampled together (``sample_tasks``).

    With a timeout (:meth:`apply_policy`) each call runs under a watchdog: ``SIGALRM`` (POSIX, main thread only)
    after its tasks' timeout ends the call. A hang inside native code that never returns to Python is not
    interrupted (the Ray backend kills such an actor).
    """

    def __init__(self, spec: WorkerSpec, task_timeout_s: float | None = None, skip_failed: bool = False) -> None:
        self.worker = RolloutWorker(spec)
        self.spec = spec
        self.timer = TaskTimer(task_timeout_s or 0.0) if task_timeout_s is not None else None
        self.skip_failed = skip_failed

    def apply_policy(self, rl: Any) -> None:
        """Use ``rl.task_timeout_s`` and ``rl.on_task_error`` (the config's RL section)."""
        self.timer = TaskTimer(rl.task_timeout_s)
        self.skip_failed = rl.on_task_error == "skip_task"

    def sample(self, weights: dict[str, np.ndarray], requests: Sequence[TaskRequest]) -> Iterator[dict[str, Any]]:
        requests = list(requests)
        try:
            results = self._call(weights, requests)
        except (Exception, _Timeout) as exc:  # noqa: BLE001 - a task's rollout failed: find which, one by one
            one_task = len(requests) == 1
            results = [self._failed(requests[0], exc)] if one_task else [self._one(weights, r) for r in requests]
        for result in results:
            if self.timer is not None and result.get("valid", True):
                self.timer.observe(result)
        if self.timer is not None:
            self.timer.iteration_done()
        yield from results

    def _one(self, weights: dict[str, np.ndarray], request: TaskRequest) -> dict[str, Any]:
        try:
            return self._call(weights, [request])[0]
        except (Exception, _Timeout) as exc:  # noqa: BLE001 - the env's or policy's error, or the watchdog
            return self._failed(request, exc)

    def _failed(self, request: TaskRequest, exc: BaseException) -> dict[str, Any]:
        """A failed task's result (skipped) or its :class:`TaskFailedError`."""
        if isinstance(exc, _Timeout):
            assert self.timer is not None
            reason = f"{describe_request(self.spec, request)} ran past {self.timer.describe()}"
        else:
            cause = exc.__cause__ or exc
            reason = f"{describe_request(self.spec, request)} failed: {type(cause).__name__}: {one_line(cause)}"
        if self.skip_failed and request.invalid_ok:
            return failed_result(request, reason)
        raise TaskFailedError(reason) from exc

    def _call(self, weights: dict[str, np.ndarray], requests: list[TaskRequest]) -> list[dict[str, Any]]:
        """``worker.sample_tasks`` under the watchdog (when there is a timeout and this is the main thread)."""
        seconds = self.timer.seconds() * len(requests) if self.timer is not None else 0.0
        if seconds <= 0 or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
            return self.worker.sample_tasks(weights, requests)

        def fire(signum: int, frame: Any) -> None:
            raise _Timeout

        previous = signal.signal(signal.SIGALRM, fire)
        outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
        started = time.monotonic()
        try:
            return self.worker.sample_tasks(weights, requests)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if outer > 0:  # someone else's timer was running: give it back what is left of it
                signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 1e-3))

    def spaces(self) -> tuple[Any, Any]:
        return self.worker.spaces()

    def fault_counts(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass
