"""The rollout actors' health, after RLlib's ``FaultTolerantActorManager``: start, probe, retire, replace.

Each actor (an :class:`ActorSlot`) is *ready* (it takes work) or *probing* (starting, restarting after a
death, or killed after a timeout). A probe is a ``ping``; the first answer makes the actor ready again. Ray
restarts a dead actor itself (``max_restarts``); one that does not answer a ping within ``probe_timeout_s`` is
killed for good and a fresh one started in its place. Which work runs where is the scheduler's business
(:class:`rlmaml.rl.sampling.ray_sampler.RaySampler`): the pool only keeps each slot's queue of calls, and
hands it back when it retires the actor.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlmaml.rl.sampling.rollout import torch_threads
from rlmaml.rl.sampling.worker import RolloutWorker, WorkerSpec

THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
"""Rollout actors act with one tiny forward per step: one BLAS/OpenMP thread each (and ``num_threads=1``)."""


class RayRolloutWorker(RolloutWorker):
    """``RolloutWorker`` unchanged, plus ``ping`` so the pool can tell that a (re)started actor is up, and a
    warm-up at construction."""

    def __init__(self, spec: WorkerSpec, num_threads: int | None = None) -> None:
        super().__init__(spec, num_threads)
        self._warm_up()

    def _warm_up(self) -> None:
        """Run the inner adaptation once on a dummy batch. Its first call imports parts of torch lazily (1-2 s),
        which would otherwise land on the first task and count against its timeout. Changes no state that
        sampling uses, so results stay a function of (seed, iteration, task index) only."""
        import torch

        from rlmaml.rl.adaptation import acting_params

        try:
            t, k = 3, 2
            obs_dim = int(np.prod(self.observation_space.shape))
            act_shape = tuple(self.action_space.shape or ())
            batch = {"observations": np.zeros((t, k, obs_dim), np.float32),
                     "actions": np.zeros((t, k, *act_shape), np.float32),
                     "rewards": np.ones((t, k), np.float32), "mask": np.ones((t, k), np.float32)}
            params = {n: p.detach() for n, p in self.policy.named_parameters()}
            with torch_threads(1), torch.random.fork_rng(devices=[]):
                acting_params(self.inner_loss, params, batch, 0.0, self.spec.gamma, self.spec.gae_lambda)
        except Exception:  # only a speed-up: never a reason for the actor not to start
            pass

    def ping(self) -> tuple[int, str]:
        """(process id, Ray node id) of this actor."""
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()


@dataclass(eq=False)
class ActorSlot:
    """One rollout actor and what the pool knows of it."""

    index: int
    actor: Any
    state: str = "probing"
    """'ready' (takes work) or 'probing' (starting, restarting or being replaced)."""
    queue: list[Any] = field(default_factory=list)
    """The scheduler's calls on this actor, in submission order (the actor runs them in that order)."""
    probe: Any = None
    next_probe_at: float = 0.0
    probing_since: float = 0.0
    pid: int = -1
    node_id: str = ""
    deaths: int = 0


class ActorPool:
    """``num_workers`` rollout actors and their health; see the module docstring."""

    def __init__(self, spec: WorkerSpec, num_workers: int, *, max_restarts: int = -1, probe_timeout_s: float = 120.0,
                 scheduling_strategy: str = "SPREAD") -> None:
        import ray

        self.spec = spec
        self.probe_timeout_s = float(probe_timeout_s)
        self.replacements = 0
        self._actor_cls = ray.remote(RayRolloutWorker).options(
            num_cpus=max(1, int(spec.env_threads)), max_restarts=max_restarts, max_task_retries=0,
            runtime_env={"env_vars": dict(THREAD_ENV)}, scheduling_strategy=scheduling_strategy)
        self._probes: dict[Any, ActorSlot] = {}
        now = time.monotonic()
        self.slots = [ActorSlot(i, self._new_actor(), probing_since=now) for i in range(int(num_workers))]

    def _new_actor(self) -> Any:
        return self._actor_cls.remote(self.spec, 1)

    def startup(self, timeout_s: float) -> None:
        """Wait until every actor answers a ping (at least one within ``timeout_s``); surface constructor errors.
        Raises RuntimeError (after closing the pool) when none starts."""
        import ray

        pings = {s.actor.ping.remote(): s for s in self.slots}
        deadline = time.monotonic() + timeout_s
        pending = list(pings)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(deadline - time.monotonic(), 0.0))
            if not ready:
                break
            slot = pings[ready[0]]
            try:
                slot.pid, slot.node_id = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                self.close()
                raise RuntimeError(f"rollout worker for {self.spec.env_id} failed to start: "
                                   f"{root_cause(exc)}") from exc
            slot.state = "ready"
        for ref in pending:  # still starting (e.g. waiting for a node): keep probing them
            slot = pings[ref]
            slot.probe = ref
            self._probes[ref] = slot
        if not self.ready():
            cpus = ray.cluster_resources().get("CPU", 0)
            asked = len(self.slots)
            self.close()
            raise RuntimeError(f"no rollout worker started within {timeout_s:.0f} s ({asked} asked for, "
                               f"the cluster has {cpus:g} CPUs)")

    def ready(self) -> list[ActorSlot]:
        """The actors that take work."""
        return [s for s in self.slots if s.state == "ready"]

    def info(self) -> list[dict[str, Any]]:
        """Each actor's pid, node id and state (pids change when an actor restarts)."""
        return [{"index": s.index, "pid": s.pid, "node_id": s.node_id, "state": s.state, "deaths": s.deaths}
                for s in self.slots]

    # ---- probes ----------------------------------------------------------------------------------------
    def probe_refs(self) -> list[Any]:
        return list(self._probes)

    def is_probe(self, ref: Any) -> bool:
        return ref in self._probes

    def send_probes(self, now: float) -> None:
        """Ping every probing actor whose next probe is due."""
        for slot in self.slots:
            if slot.state == "probing" and slot.probe is None and now >= slot.next_probe_at:
                slot.probe = slot.actor.ping.remote()
                self._probes[slot.probe] = slot

    def on_probe(self, ref: Any, now: float) -> bool:
        """Take a probe's answer; True if its actor is ready again."""
        import ray

        slot = self._probes.pop(ref)
        slot.probe = None
        try:
            slot.pid, slot.node_id = ray.get(ref)
        except ray.exceptions.RayError:
            slot.next_probe_at = now + 0.5  # restarting (or gone: replaced after probe_timeout_s)
            return False
        slot.state = "ready"
        return True

    def probe_deadlines(self) -> list[float]:
        """When each probing actor is due a probe or a replacement."""
        out = []
        for slot in self.slots:
            if slot.state == "probing":
                out.append(slot.probing_since + self.probe_timeout_s)
                if slot.probe is None:
                    out.append(slot.next_probe_at)
        return out

    def replace_overdue(self, now: float) -> None:
        """Replace every actor that has been probing for longer than ``probe_timeout_s``."""
        for slot in self.slots:
            if slot.state == "probing" and now - slot.probing_since > self.probe_timeout_s:
                self.replace(slot)

    def wait_ready(self, timeout_s: float = 120.0) -> bool:
        """Block until every actor answers a ping (e.g. after restarts); True if all did within ``timeout_s``."""
        import ray

        deadline = time.monotonic() + timeout_s
        while not all(s.state == "ready" for s in self.slots):
            now = time.monotonic()
            if now >= deadline:
                return False
            self.replace_overdue(now)
            self.send_probes(now)
            if self._probes:
                ready, _ = ray.wait(list(self._probes), num_returns=1, timeout=min(deadline - now, 0.5))
                for ref in ready:
                    self.on_probe(ref, time.monotonic())
            else:
                time.sleep(0.1)
        return True

    # ---- retire and replace ----------------------------------------------------------------------------
    def retire(self, slot: ActorSlot, *, kill: bool) -> list[Any]:
        """Stop using an actor until a ping answers; return the calls that were queued on it.
        ``kill``: kill its process first (a call ran past its time; Ray restarts it)."""
        if kill:
            kill_actor(slot.actor, no_restart=False)
        calls, slot.queue = slot.queue, []
        now = time.monotonic()
        slot.state, slot.probe, slot.next_probe_at, slot.probing_since = "probing", None, now + 0.2, now
        return calls

    def replace(self, slot: ActorSlot) -> None:
        """Give up on an actor that did not come back and start a fresh one in its place."""
        if slot.probe is not None:
            self._probes.pop(slot.probe, None)
        kill_actor(slot.actor, no_restart=True)
        slot.actor = self._new_actor()
        slot.probe, slot.next_probe_at, slot.probing_since = None, time.monotonic(), time.monotonic()
        self.replacements += 1

    def close(self) -> None:
        """Kill every actor for good."""
        import ray

        if ray.is_initialized():
            for slot in self.slots:
                kill_actor(slot.actor, no_restart=True)
        self.slots, self._probes = [], {}


def kill_actor(actor: Any, *, no_restart: bool) -> None:
    """``ray.kill``, ignoring an actor that is already gone."""
    import ray

    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=no_restart)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type's name)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def root_cause(exc: BaseException) -> str:
    """The exception line at the end of a Ray error's remote traceback (e.g. the constructor's ValueError)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
