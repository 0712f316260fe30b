"""The meta-RL training loop: the paper's Algorithm 3, with the details one call away.

    for each iteration:
        sample a meta-batch of tasks                          (seeded by run seed and iteration)
        for each task, on a worker:  D_tr ~ π_θ; φ = θ − α∇L(θ, D_tr); D_val ~ π_φ
        for each result, as it arrives, on the learner:  attach advantages
        outer step on θ: TRPO on the mean surrogate of π_φ(θ) on D_val

The loop around it (metrics, checkpoints, the failure stop, signals) is :func:`rlmaml.loop.run_loop`.

A task whose rollout failed or met a non-finite number follows ``rl.on_task_error``: ``skip_task`` leaves it out
of the update (the learner decides whether enough tasks remain; ``tasks_skipped`` in the metrics), ``fail`` ends
the run with :class:`TaskFailedError`. The ``faults_*`` metrics are each iteration's own (the sampler counts
since it started).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from rlmaml.checkpoints import expect_shapes, param_shapes
from rlmaml.config import Config, to_dict
from rlmaml.kill_hook import kill_point
from rlmaml.loop import Outcome, StopRequest, run_loop
from rlmaml.rl.build import check_rl_config, make_sampler, make_task_distribution, task_requests, worker_spec
from rlmaml.rl.learning.learner import MetaLearner
from rlmaml.rl.learning.placement import make_learner
from rlmaml.rl.sampling.samplers import LocalSampler, Sampler, TaskFailedError
from rlmaml.runs import RunDir


class RLTrainer:
    """Algorithm 3 on a sampler (the workers) and a learner (θ and TRPO); see the module docstring."""

    def __init__(self, cfg: Config, sampler: Sampler, learner: MetaLearner) -> None:
        self.cfg, self.sampler, self.learner = cfg, sampler, learner
        self.distribution = make_task_distribution(cfg)
        self.faults_before: dict[str, int] = dict(sampler.fault_counts())
        """The sampler's cumulative fault counts at the start of the iteration (the metrics log the difference)."""

    def iterate(self, it: int, stop: StopRequest) -> Outcome | None:
        t0 = time.perf_counter()
        env_steps = 0
        for result in self.sampler.sample(self.learner.weights(), task_requests(self.cfg, self.distribution, it)):
            if not result.get("valid", True) and self.cfg.rl.on_task_error == "fail":
                raise TaskFailedError(f"{result.get('reason')} (rl.on_task_error=fail)")
            self.learner.add_task(result)                    # advantages, on the learner's device
            env_steps += result["env_steps"]
            kill_point("sampling", it)                       # test hook (no-op unless RLMAML_TEST_KILL_AT is set)
            if stop.requested:                               # abandon: θ is untouched, the resume redoes it
                self.learner.discard_tasks()
                return None
        t_sampled = time.perf_counter()
        theta_sampled = self.learner.state_dict()            # the θ whose adaptation these returns measure
        metrics = self.learner.step()                        # the outer TRPO step
        kill_point("outer_step", it)
        t_end = time.perf_counter()
        record = {**metrics, "env_steps": env_steps, "env_steps_per_s": env_steps / max(t_sampled - t0, 1e-9),
                  "sample_time_s": t_sampled - t0, "step_time_s": t_end - t_sampled, "iteration_time_s": t_end - t0,
                  **{f"faults_{k}": v for k, v in self._faults_this_iteration().items()}}
        if metrics.get("tasks_skipped"):
            print(f"rlmaml: iteration {it}: {metrics['tasks_skipped']} task(s) left out of the update "
                  f"({metrics.get('skipped_reason', '')})", file=sys.stderr)
        full_batch = not metrics.get("tasks_invalid")        # a partial meta-batch is never the best
        return Outcome(record, bool(metrics["accepted"]), str(metrics["reason"]),
                       {"pre": metrics["return_pre"], "post": metrics["return_post"]},
                       score=metrics["return_post"] if full_batch else None,
                       best_state=lambda: self._state(theta_sampled, it + 1, metrics["return_post"]))

    def _faults_this_iteration(self) -> dict[str, int]:
        now = dict(self.sampler.fault_counts())
        delta = {k: int(v) - int(self.faults_before.get(k, 0)) for k, v in now.items()}
        self.faults_before = now
        return delta

    def _state(self, learner_state: dict[str, Any], next_iteration: int, best: float, failures: int = 0
               ) -> dict[str, Any]:
        return {"kind": "rl", "learner": learner_state, "best_return": best,
                "rng": {"seed": self.cfg.run.seed, "next_iteration": next_iteration}, "failures": failures,
                "config": to_dict(self.cfg)}

    def state(self, next_iteration: int, best: float, failures: int) -> dict[str, Any]:
        """What a resume needs: θ, optimiser, best return so far, RNG state (seed, next iteration), the count of
        consecutive skipped updates, config. All randomness derives from (seed, iteration, task index)."""
        return self._state(self.learner.state_dict(), next_iteration, best, failures)


def policy_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """The names and shapes of θ for ``cfg``'s policy (from one probe env's spaces), to check a checkpoint against."""
    from envs import make_batched
    from rlmaml.rl.policies import make_policy
    from rlmaml.seeding import iteration_rng, seeded_init

    r = cfg.rl
    task = make_task_distribution(cfg).sample(1, iteration_rng(cfg.run.seed, 0))[0]
    probe = make_batched(r.env, 1, task)
    try:  # seeded_init: the caller's torch RNG is left as it was
        policy = seeded_init(cfg.run.seed, lambda: make_policy(probe.single_observation_space,
                                                               probe.single_action_space, tuple(r.hidden),
                                                               r.init_std, r.min_std))
    finally:
        close = getattr(probe, "close", None)
        if callable(close):
            close()
    return param_shapes(dict(policy.named_parameters()))


def train_rl(cfg: Config, run: RunDir, checkpoint: dict[str, Any] | None = None,
             sampler: Sampler | None = None) -> MetaLearner:
    """Meta-train a policy; metrics and checkpoints go to ``run``. Returns the learner."""
    check_rl_config(cfg)
    sampler = sampler or make_sampler(cfg, worker_spec(cfg))
    if isinstance(sampler, LocalSampler):  # the Ray sampler reads them from the config itself
        sampler.apply_policy(cfg.rl)
    try:
        learner = make_learner(cfg, *sampler.spaces())  # GPU (driver or actor) when there is one; says where
        start, best, failures = 0, -math.inf, 0
        if checkpoint is not None:
            expected = param_shapes(learner.state_dict()["params"])
            if param_shapes(checkpoint["learner"]["params"]) != expected:  # fall back to one that fits this policy
                checkpoint = run.load_checkpoint("latest", expect=expect_shapes(expected, "learner", "params"))
            learner.load_state_dict(checkpoint["learner"])
            start, best = int(checkpoint["iteration"]) + 1, float(checkpoint.get("best_return", best))
            failures = int(checkpoint.get("failures", 0))
            run.truncate_metrics(start - 1)
        if cfg.run.tensorboard:
            run.enable_tensorboard()
        run_loop(cfg, run, RLTrainer(cfg, sampler, learner), start, best=best, failures=failures, desc="rl")
    finally:
        sampler.close()
    return learner
