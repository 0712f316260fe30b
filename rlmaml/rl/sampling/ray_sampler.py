"""``RaySampler``: the unchanged ``RolloutWorker`` as Ray actors, with timeouts, retries and de-duplication.

One ``sample()`` call publishes θ once (``ray.put``), then hands the tasks out in calls of one or more tasks
(``sample_tasks``: the tasks of a call share one policy forward per time step), each to the least-loaded
healthy actor, and yields results as calls finish (``ray.wait(num_returns=1)``) so the learner's per-task work
overlaps sampling. The calls are fixed by position before any is sent: consecutive runs of ``tasks_per_call``
tasks (0: ``ceil(tasks / (2 * num_workers))``), so a task is always batched with the same others and its data is
reproducible bit for bit. Nothing is ever called per env step.

Faults, all counted in :meth:`RaySampler.fault_counts`:

* **An actor dies** (its process is killed, its node goes away; ``RayActorError``/``ActorDiedError``,
  ``WorkerCrashedError``, ``ObjectLostError``, ...): its in-flight tasks go to healthy actors; Ray restarts
  the actor (``max_restarts``) and the sampler uses it again once a ``ping`` answers. An actor that does
  not come back within ``probe_timeout_s`` is replaced by a new one. (The actors' health is
  :class:`rlmaml.rl.sampling.actor_pool.ActorPool`; this module schedules the work.)
* **A call exceeds ``task_timeout_s`` per task in it**: running actor calls cannot be interrupted
  (``ray.cancel`` only flags them), so the actor is killed (and restarted by Ray) and its tasks resubmitted.
* The tasks of a failed call of several are resubmitted one per call, without counting it against them, so
  that a task that hangs or kills its actor is the one charged and named. (Sampled alone, a task's data can
  differ from its batched data in the last bits of the policy forward.)
* A task is resubmitted at most ``max_task_retries`` times, then :class:`TaskFailedError` says why.
* **An exception in the env or policy** (a ``RayTaskError``) is deterministic given the task's seeds, so it is
  not retried: it reaches the driver at once as :class:`TaskFailedError` naming the task and its seeds.
* With ``skip_failed`` (``rl.on_task_error=skip_task``, for requests with ``invalid_ok``) either failure is
  instead that task's result, marked ``valid: False, failed: True`` with the same line as its ``reason``
  (:func:`rlmaml.rl.sampling.samplers.failed_result`); the other tasks go on. A call of several tasks that raised
  is first resubmitted one task per call, so only the failing task is dropped.
* ``task_timeout_s=0`` derives the timeout from the measured per-task times (:func:`auto_task_timeout`).

Because a worker's randomness derives from (run seed, iteration, task index), a resubmitted task returns
exactly the data the first attempt would have; a duplicate result (only possible after a resubmission) is
dropped, and every request is yielded exactly once.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from rlmaml.rl.ray_runtime import default_num_workers, driver_node_cpus, init_ray, shutdown_ray, started_here
from rlmaml.rl.sampling.actor_pool import ActorPool, ActorSlot, first_line
from rlmaml.rl.sampling.ray_calls import ActorCall, SampleBatch, worker_cause, writable
from rlmaml.rl.sampling.samplers import (  # noqa: F401  (TaskFailedError and auto_task_timeout: re-exported)
    TaskFailedError,
    TaskTimer,
    auto_task_timeout,
    describe_request,
    failed_result,
)
from rlmaml.rl.sampling.worker import TaskRequest, WorkerSpec


class RaySampler:
    """Rollout actors on a Ray cluster; see the module docstring for the fault handling."""

    def __init__(self, spec: WorkerSpec, num_workers: int = 0, task_timeout_s: float = 300.0,
                 max_task_retries: int = 3, *, tasks_per_call: int = 0, max_restarts: int = -1,
                 pipeline_depth: int = 1,
                 probe_timeout_s: float = 120.0, startup_timeout_s: float | None = None,
                 scheduling_strategy: str = "SPREAD", address: str = "", dashboard_host: str = "127.0.0.1",
                 skip_failed: bool = False) -> None:
        import ray

        self._owns_ray = False
        if not ray.is_initialized():
            init_ray(address, dashboard_host)
            self._owns_ray = started_here()  # started by this call: ours to shut down at close()
        if num_workers <= 0:
            cpus = default_num_workers(ray.cluster_resources().get("CPU", 1.0), driver_node_cpus())
            num_workers = max(1, cpus // max(1, int(spec.env_threads)))  # each actor reserves env_threads CPUs
        self.spec = spec
        self.num_workers = int(num_workers)
        self.task_timeout_s = float(task_timeout_s)
        """The configured seconds per task; 0 derives them from measured task times (:meth:`timeout_per_task`)."""
        self.timer = TaskTimer(0.0)
        self.skip_failed = bool(skip_failed)
        self._failed: list[dict[str, Any]] = []
        self.max_task_retries = int(max_task_retries)
        self.tasks_per_call = max(int(tasks_per_call), 0)
        self.pipeline_depth = max(int(pipeline_depth), 1)
        self._faults = {"actor_deaths": 0, "timeouts": 0, "retries": 0}
        self._stats = {"put_s": 0.0, "submit_s": 0.0, "get_s": 0.0, "wait_s": 0.0, "calls": 0, "results": 0,
                       "duplicates": 0}
        self._calls: dict[Any, ActorCall] = {}
        self._batch: SampleBatch | None = None
        self._spaces: tuple[Any, Any] | None = None
        self._rr = 0
        self._closed = False
        self.pool = ActorPool(spec, self.num_workers, max_restarts=max_restarts, probe_timeout_s=probe_timeout_s,
                              scheduling_strategy=scheduling_strategy)
        self._last_progress = time.monotonic()
        try:
            self.pool.startup(max(self.timeout_per_task(), 120.0) if startup_timeout_s is None else startup_timeout_s)
        except RuntimeError:
            self.close()
            raise

    @classmethod
    def from_config(cls, cfg: Any, spec: WorkerSpec) -> RaySampler:
        """Join ``rl.address`` (or start the embedded local Ray) and start ``rl.num_workers`` actors."""
        r = cfg.rl
        return cls(spec, r.num_workers, r.task_timeout_s, r.max_task_retries, tasks_per_call=r.tasks_per_call,
                   address=r.address, dashboard_host=r.dashboard_host,
                   skip_failed=getattr(r, "on_task_error", "fail") == "skip_task")

    def timeout_per_task(self) -> float:
        """``task_timeout_s``, or (0) :func:`auto_task_timeout` of the slowest task of the finished iterations."""
        self.timer.configured = self.task_timeout_s  # read each time: tests and callers may change it
        return self.timer.seconds()

    def worker_info(self) -> list[dict[str, Any]]:
        """Each actor's pid, node id and state (pids change when an actor restarts)."""
        return self.pool.info()

    def wait_ready(self, timeout_s: float = 120.0) -> bool:
        """Block until every actor answers a ping (e.g. after restarts); True if all did within ``timeout_s``."""
        return self.pool.wait_ready(timeout_s)

    # ---- the Sampler protocol --------------------------------------------------------------------------
    def spaces(self) -> tuple[Any, Any]:
        import ray

        if self._spaces is None:
            slot = (self.pool.ready() or self.pool.slots)[0]
            self._spaces = ray.get(slot.actor.spaces.remote())
        return self._spaces

    def fault_counts(self) -> dict[str, int]:
        return dict(self._faults)

    def stats(self) -> dict[str, float]:
        """Driver time spent in Ray calls (put, submit, get) and waiting, cumulative; for benchmarks."""
        return self._stats | {"replacements": self.pool.replacements}

    def sample(self, weights: dict[str, np.ndarray], requests: Sequence[TaskRequest]) -> Iterator[dict[str, Any]]:
        """Yield one result per request as each finishes, whatever the faults on the way.

        Results are tracked by the request's position in ``requests`` (its task index, in the trainer), so a
        duplicate (after a resubmission) is dropped and every request is yielded exactly once.
        """
        import ray

        if self._closed:
            raise RuntimeError("RaySampler.sample called after close()")
        n = len(requests)
        if n == 0:
            return
        t0 = time.perf_counter()
        weights_ref = ray.put(weights)
        self._stats["put_s"] += time.perf_counter() - t0
        size = self._call_size(n)
        calls = deque(list(range(i, min(i + size, n))) for i in range(0, n, size))
        batch = SampleBatch(requests, weights_ref, calls, [0] * n, [False] * n, [""] * n, n)
        self._batch = batch
        self._failed = []
        self._last_progress = time.monotonic()
        try:
            while batch.remaining:
                self._fill(batch)
                results = self._next_results(batch) + self._failed
                self._failed = []
                for result in results:
                    if result.get("valid", True):
                        self.timer.observe(result)
                if results:
                    self._fill(batch)  # keep the actor that just finished busy while the caller works
                    yield from results
            self.timer.iteration_done()
        finally:  # also on an early close() of the generator; a later sample() call may already own _batch
            if self._batch is batch:
                self._batch = None

    def close(self) -> None:
        """Kill the actors; shut Ray down only if this sampler started it."""
        if self._closed:
            return
        self._closed = True
        self.pool.close()
        self._calls = {}
        if self._owns_ray:
            shutdown_ray()

    # ---- scheduling ------------------------------------------------------------------------------------
    def _fill(self, batch: SampleBatch) -> None:
        """Hand queued calls to the least-loaded ready actors (ties: round robin)."""
        while batch.todo:
            ready = [s for s in self.pool.ready() if len(s.queue) < self.pipeline_depth]
            if not ready:
                return
            k = len(self.pool.slots)
            slot = min(ready, key=lambda s: (len(s.queue), (s.index - self._rr) % k))
            self._rr = (slot.index + 1) % k
            self._submit(slot, batch, batch.todo.popleft())

    def _call_size(self, tasks: int) -> int:
        """Tasks per call: ``tasks_per_call``, or (0) two calls per actor."""
        if self.tasks_per_call:
            return self.tasks_per_call
        return max(1, -(-tasks // (2 * self.num_workers)))

    def _submit(self, slot: ActorSlot, batch: SampleBatch, positions: list[int]) -> None:
        t0 = time.perf_counter()
        ref = slot.actor.sample_tasks.remote(batch.weights_ref, [batch.requests[p] for p in positions])
        self._stats["submit_s"] += time.perf_counter() - t0
        self._stats["calls"] += 1
        now = time.monotonic()
        call = ActorCall(ref, positions, batch, slot, now, started=now if not slot.queue else None)
        slot.queue.append(call)
        self._calls[ref] = call

    def _requeue(self, call: ActorCall, reason: str) -> None:
        """Resubmit a call's tasks (to any healthy actor), each in a call of its own. A call of one task counts
        against its retries (and fails the sample once they are used up); a call of several does not, as any one
        of its tasks may have caused the fault."""
        batch = call.batch
        if batch is not self._batch:
            return  # an abandoned sample() call
        for pos in reversed(call.positions):
            if batch.done[pos]:
                continue  # a result we already have
            batch.last_error[pos] = reason
            self._faults["retries"] += 1
            if len(call.positions) == 1:
                batch.attempts[pos] += 1
                if batch.attempts[pos] > self.max_task_retries:
                    self._give_up(batch, pos, f"{self._describe(batch.requests[pos])} failed after "
                                              f"{self.max_task_retries} resubmissions; last fault: {reason}")
                    continue
            batch.todo.appendleft([pos])

    def _give_up(self, batch: SampleBatch, pos: int, reason: str) -> None:
        """A task that failed for good: its failed result (``skip_failed`` and an ``invalid_ok`` request, so the
        other tasks go on) or :class:`TaskFailedError`."""
        request = batch.requests[pos]
        if not (self.skip_failed and request.invalid_ok):
            raise TaskFailedError(reason)
        batch.done[pos] = True
        batch.remaining -= 1
        self._failed.append(failed_result(request, reason))

    def _remove_call(self, call: ActorCall, now: float) -> None:
        self._calls.pop(call.ref, None)
        queue = call.slot.queue
        if call in queue:
            was_head = queue[0] is call
            queue.remove(call)
            if was_head and queue:
                queue[0].started = now

    def _retire(self, slot: ActorSlot, reason: str, *, kill: bool) -> None:
        """Take an actor out of service (the pool probes it back) and resubmit everything queued on it."""
        calls = self.pool.retire(slot, kill=kill)
        for call in calls:
            self._calls.pop(call.ref, None)
        for call in calls:
            self._requeue(call, reason)

    # ---- the event loop --------------------------------------------------------------------------------
    def _next_results(self, batch: SampleBatch) -> list[dict[str, Any]]:
        """Wait for the next event (a call's results, a fault, a probe, a deadline); return the new results."""
        import ray

        now = time.monotonic()
        self.pool.send_probes(now)
        refs = list(self._calls) + self.pool.probe_refs()
        timeout = self._time_to_next_deadline(now, batch)
        t0 = time.perf_counter()
        if refs:
            ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        else:
            time.sleep(0.05 if timeout is None else min(timeout, 0.5))
            ready = []
        self._stats["wait_s"] += time.perf_counter() - t0
        now = time.monotonic()
        results: list[dict[str, Any]] = []
        for ref in ready:
            if self.pool.is_probe(ref):
                if self.pool.on_probe(ref, now):
                    self._last_progress = now
            elif ref in self._calls:
                results += self._on_call(self._calls[ref], now)
        self._check_deadlines(time.monotonic(), batch)
        return results

    def _on_call(self, call: ActorCall, now: float) -> list[dict[str, Any]]:
        import ray

        self._remove_call(call, now)
        t0 = time.perf_counter()
        try:
            results = ray.get(call.ref)
        except ray.exceptions.RayTaskError as exc:  # raised by the env / policy code: deterministic
            if call.batch is not self._batch:
                return []
            reason = f"{self._describe_call(call, exc)} failed in the worker: {worker_cause(exc)}"
            if not self.skip_failed or not all(call.batch.requests[p].invalid_ok for p in call.positions):
                raise TaskFailedError(reason) from exc
            if len(call.positions) > 1:  # find the failing task: each alone, not counted against it
                self._requeue(call, reason)
            else:
                self._give_up(call.batch, call.positions[0], reason)
            return []
        except ray.exceptions.RayError as exc:  # the actor, its process or its node failed
            self._faults["actor_deaths"] += 1
            call.slot.deaths += 1
            self._retire(call.slot, f"{type(exc).__name__}: {first_line(exc)}", kill=False)
            self._requeue(call, f"{type(exc).__name__}: {first_line(exc)}")
            return []
        finally:
            self._stats["get_s"] += time.perf_counter() - t0
        self._last_progress = now
        batch = call.batch
        if batch is not self._batch:
            return []
        new = []
        t0 = time.perf_counter()
        for pos, result in zip(call.positions, results, strict=True):
            if batch.done[pos]:
                self._stats["duplicates"] += 1
                continue
            batch.done[pos] = True
            batch.remaining -= 1
            self._stats["results"] += 1
            new.append(writable(result))
        self._stats["get_s"] += time.perf_counter() - t0  # part of fetching a result
        return new

    def _time_to_next_deadline(self, now: float, batch: SampleBatch) -> float | None:
        deadlines = self.pool.probe_deadlines()
        for slot in self.pool.ready():
            if slot.queue and slot.queue[0].started is not None:
                deadlines.append(slot.queue[0].started + self._timeout_s(slot.queue[0]))
        if batch.todo and not self.pool.ready():
            deadlines.append(self._last_progress + self._stall_timeout_s())
        return max(min(deadlines) - now, 0.0) if deadlines else None

    def _stall_timeout_s(self) -> float:
        return 2 * self.pool.probe_timeout_s + self.timeout_per_task()

    def _check_deadlines(self, now: float, batch: SampleBatch) -> None:
        import ray

        for slot in self.pool.ready():
            if slot.queue:
                head = slot.queue[0]
                if head.started is None or now - head.started <= self._timeout_s(head):
                    continue
                finished, _ = ray.wait([head.ref], num_returns=1, timeout=0)
                if finished:  # done but not yet collected (the caller was busy): not a timeout
                    continue
                self._faults["timeouts"] += 1
                tasks = ", ".join(str(head.batch.requests[p].task_index) for p in head.positions)
                self._retire(slot, f"task {tasks} ran past {self._timeout_text()} on worker pid {slot.pid}",
                             kill=True)
        self.pool.replace_overdue(now)
        if batch.todo and not self.pool.ready() and now - self._last_progress > self._stall_timeout_s():
            raise TaskFailedError(f"no healthy rollout worker for {now - self._last_progress:.0f} s; "
                                  f"{sum(map(len, batch.todo))} tasks of iteration {batch.requests[0].iteration} "
                                  "unsampled")

    def _timeout_s(self, call: ActorCall) -> float:
        """A call's time limit: the per-task timeout for each of its tasks."""
        return self.timeout_per_task() * len(call.positions)

    def _timeout_text(self) -> str:
        self.timer.configured = self.task_timeout_s
        return self.timer.describe()

    def _describe_call(self, call: ActorCall, exc: Any) -> str:
        """The task a worker exception belongs to: the one its message names (``sample_task`` names it), else
        the call's first."""
        requests = [call.batch.requests[p] for p in call.positions]
        text = str(getattr(exc, "cause", None) or exc)
        named = [r for r in requests if f"task {r.task_index} " in text]
        return self._describe((named or requests)[0])

    def _describe(self, req: TaskRequest) -> str:
        return describe_request(self.spec, req)
