"""The run loop both trainers share: progress, deadline, failure stop, best and periodic checkpoints, signals.

A trainer supplies two things (:class:`Trainer`): ``iterate(i)``, one meta-iteration returning an
:class:`Outcome`, and ``state(next_iteration, best, failures)``, what a resume needs. The loop does the rest:

* logs each outcome's record to ``metrics.jsonl`` and prints a progress line;
* stops with :class:`TrainingStopped` after ``run.max_consecutive_failures`` skipped updates in a row, and warns
  at the end of a run that skipped any update or dropped any task (:class:`Tally`);
* writes the ``best`` checkpoint when an outcome's score is the best so far, and a numbered one every
  ``run.checkpoint_every`` iterations, at the end, at ``run.time_limit_min``, and on SIGTERM or SIGINT.

SIGTERM (a batch scheduler, Kubernetes) and SIGINT (Ctrl-C) ask the loop to stop: the iteration in progress
finishes, or is abandoned if the trainer sees the request before its update (``stop.requested``), a
checkpoint is written, and :class:`Interrupted` says how to resume. Either way the resumed run computes exactly
what an uninterrupted one would. A second signal stops at once (the last checkpoint is kept).
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from rlmaml.config import Config
from rlmaml.errors import TrainingStopped
from rlmaml.runs import RunDir


class Interrupted(RuntimeError):
    """The run stopped on SIGTERM or SIGINT after writing a checkpoint; ``signum`` gives the exit code."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class Outcome:
    """What one iteration reports to the loop."""

    record: dict[str, Any]
    """Its metrics.jsonl row (the loop adds ``iteration``)."""
    accepted: bool
    """False when the update was skipped and θ kept (it counts towards the failure stop)."""
    reason: str = ""
    """Why the update was skipped."""
    summary: dict[str, float] = field(default_factory=dict)
    """The progress line's numbers."""
    score: float | None = None
    """Higher is better; a new best writes the ``best`` checkpoint. None: this iteration is never a best."""
    best_state: Callable[[], dict[str, Any]] | None = None
    """The state saved as ``best`` (default: :meth:`Trainer.state` after the iteration)."""


class Trainer(Protocol):
    """One experiment's meta-iterations, driven by :func:`run_loop`."""

    def iterate(self, iteration: int, stop: StopRequest) -> Outcome | None:
        """Run meta-iteration ``iteration``; None if it was abandoned on ``stop`` before changing any state."""
        ...

    def state(self, next_iteration: int, best: float, failures: int) -> dict[str, Any]:
        """Everything a resume at ``next_iteration`` needs (tensors and plain data)."""
        ...


class StopRequest:
    """Set by SIGTERM / SIGINT while :meth:`handling` is active; a second signal raises KeyboardInterrupt."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"rlmaml: {signal.Signals(signum).name} received: finishing this iteration, then writing a "
              "checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)

    @contextmanager
    def handling(self) -> Iterator[StopRequest]:
        """Install the handlers (in the main thread only; elsewhere signals are left alone), restore them after.

        Installed after the sampler started: Ray's driver installs its own SIGTERM handler, which dumps a stack.
        """
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


class Deadline:
    """``run.time_limit_min`` as a wall-clock deadline (0 minutes: none)."""

    def __init__(self, minutes: float) -> None:
        self.minutes = minutes
        self.at = time.monotonic() + 60 * minutes if minutes > 0 else math.inf

    def expired(self) -> bool:
        return time.monotonic() > self.at

    def report(self, iterations_done: int) -> None:
        print(f"rlmaml: run.time_limit_min={self.minutes} reached after {iterations_done} iterations; "
              "a checkpoint was written", file=sys.stderr)


class Progress:
    """A tqdm bar on a terminal; plain periodic lines otherwise (logs, CI, Ray jobs)."""

    def __init__(self, total: int, start: int = 0, every: int = 10, desc: str = "train") -> None:
        self.every = every
        self.total = total
        self.desc = desc
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True)

    def update(self, iteration: int, summary: dict[str, float]) -> None:
        """Report that ``iteration`` (0-based) finished with the given headline numbers."""
        text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items())
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(text, refresh=False)
        elif (iteration + 1) % self.every == 0 or iteration + 1 == self.total:
            print(f"[{self.desc}] iter {iteration + 1}/{self.total} {text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_loop(cfg: Config, run: RunDir, trainer: Trainer, start: int, *, best: float = -math.inf,
             failures: int = 0, desc: str = "train") -> None:
    """Iterate ``trainer`` from ``start`` to ``run.iterations``, logging and checkpointing into ``run``."""
    progress = Progress(cfg.run.iterations, start, cfg.run.log_every, desc=cfg.run.name or desc)
    deadline = Deadline(cfg.run.time_limit_min)
    stop = StopRequest()
    it = saved = start
    tally = Tally()
    failed = True
    try:
        with stop.handling():
            while it < cfg.run.iterations and not stop.requested:
                outcome = trainer.iterate(it, stop)
                if outcome is None:  # abandoned on a stop request: nothing of it is kept
                    break
                run.log({"iteration": it, **outcome.record})
                tally.add(outcome)
                failures = 0 if outcome.accepted else failures + 1
                if not outcome.accepted:
                    print(f"rlmaml: iteration {it}: update skipped ({outcome.reason}); θ kept", file=sys.stderr)
                if failures >= cfg.run.max_consecutive_failures:
                    raise TrainingStopped(f"{failures} consecutive updates skipped at iteration {it} "
                                          f"({outcome.reason}); the last good checkpoint is kept in "
                                          f"{run.checkpoint_dir}")
                progress.update(it, outcome.summary)
                if outcome.score is not None and outcome.score > best:
                    best = outcome.score
                    state = outcome.best_state() if outcome.best_state else trainer.state(it + 1, best, failures)
                    run.save_checkpoint(state, it, tag="best")
                it += 1
                out_of_time = deadline.expired()
                if it % cfg.run.checkpoint_every == 0 or it == cfg.run.iterations or out_of_time:
                    run.save_checkpoint(trainer.state(it, best, failures), it - 1, cfg.run.keep_checkpoints)
                    saved = it
                if out_of_time:
                    deadline.report(it)
                    break
        if stop.signum is not None and it < cfg.run.iterations:
            if saved != it:  # iterations finished since the last checkpoint: keep them
                run.save_checkpoint(trainer.state(it, best, failures), it - 1, cfg.run.keep_checkpoints)
            name = signal.Signals(stop.signum).name
            raise Interrupted(f"{name}: stopped after {it} of {cfg.run.iterations} iterations with a checkpoint; "
                              f"resume with: rlmaml train --resume {run.path}", stop.signum)
        failed = False
    finally:
        progress.close()
        run.close(quiet=failed)  # a failing run reports its own error, not a CSV mirror's
    tally.report(run)


class Tally:
    """Skipped updates and dropped tasks of a run, so that a run that skipped some does not end in a plain
    'done' (the metrics say which: ``accepted``, ``tasks_skipped``)."""

    def __init__(self) -> None:
        self.iterations = self.skipped = self.tasks = 0

    def add(self, outcome: Outcome) -> None:
        self.iterations += 1
        self.skipped += not outcome.accepted
        self.tasks += int(outcome.record.get("tasks_skipped", 0) or 0)

    def report(self, run: RunDir) -> None:
        if self.skipped or self.tasks:
            print(f"rlmaml: warning: of {self.iterations} iterations, {self.skipped} skipped their update and "
                  f"{self.tasks} task(s) were dropped from their meta-batch; see 'accepted' and 'tasks_skipped' "
                  f"in {run.metrics_path}", file=sys.stderr)
