"""``MetaLearner``: owns θ on its device and takes the outer step (TRPO, or PPO-style clipping).

Per task it recomputes φ from the pre-update episodes *with* the graph (second order unless first order
is asked for) and builds the outer surrogate on the post-update episodes. The TRPO step is the paper's:
conjugate gradient on exact Hessian-vector products of the mean KL between the old and new post-update
policies, a step scaled to ``max_kl``, and a backtracking line search on surrogate and KL. Any non-finite
number skips the update and keeps θ: a worker result marked invalid (a non-finite observation, reward, policy
output or inner gradient on the worker), a non-finite episode batch or adapted φ here (the reason names the
task and iteration), or a non-finite surrogate, gradient or CG result (:func:`rlmaml.rl.learning.trpo.trpo_step`).
With ``rl.on_task_error=skip_task`` invalid worker results (a non-finite number, or a failed rollout) are dropped
instead and the update goes on with the rest, as long as ``rl.min_task_fraction`` of the meta-batch remains.
"""

from __future__ import annotations

import copy
import math
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlmaml.config import Config
from rlmaml.meta import Params, all_finite
from rlmaml.rl.adaptation import advantaged
from rlmaml.rl.episodes import Episodes
from rlmaml.rl.learning.maml_objective import MamlRlObjective, MetaBatch, candidate_terms, compiled, natural_direction
from rlmaml.rl.learning.trpo import TrpoConfig, trpo_step
from rlmaml.rl.objectives import inner_loss
from rlmaml.rl.policies import make_policy, params_to_numpy
from rlmaml.seeding import seeded_init


@dataclass
class TaskData:
    """One task's episode batches on the learner's device, advantages attached, in adaptation order."""

    task_index: int
    batches: list[Episodes]
    lrs: tuple[float, ...] = ()
    """The inner step sizes the worker adapted with (φ is recomputed with exactly these)."""

    @property
    def val(self) -> Episodes:
        return self.batches[-1]


class MetaLearner:
    """θ, the outer optimiser and the device. Feed it tasks with :meth:`add_task`, then :meth:`step`."""

    def __init__(self, cfg: Config, observation_space: Any, action_space: Any, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        r = cfg.rl
        self.policy = seeded_init(cfg.run.seed, lambda: make_policy(
            observation_space, action_space, tuple(r.hidden), r.init_std, r.min_std)).to(device)
        self.params: Params = {k: v.detach().clone().requires_grad_(True) for k, v in self.policy.named_parameters()}
        self.inner_loss = inner_loss(self.policy, r.inner_loss)  # type: ignore[arg-type]
        self.trpo = TrpoConfig.from_rl(r)
        self.direction = compiled(self.policy, natural_direction) if r.compile else None
        """The compiled TRPO direction (``rl.compile``); None runs it eagerly, step by step."""
        self.candidate = compiled(self.policy, candidate_terms) if r.compile else candidate_terms
        """The line search's surrogate and KL at a candidate, compiled with ``rl.compile``."""
        if r.compile:
            print("rlmaml: rl.compile: the first learner step compiles it (a minute or two, once per run)",
                  file=sys.stderr, flush=True)
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=cfg.optim.meta_lr) if r.outer == "ppo" else None
        self.tasks: dict[int, TaskData] = {}
        self.invalid: dict[int, str] = {}
        """Task index -> why its result cannot be used this iteration (the update is then skipped)."""
        self.iteration: Any = None
        self.version = 0
        self.prepare_time_s = 0.0

    # ---- weights and state --------------------------------------------------------------------------
    def weights(self) -> dict[str, np.ndarray]:
        """θ as numpy on the CPU, for publishing to workers."""
        return params_to_numpy(self.params)

    def state_dict(self) -> dict[str, Any]:
        """θ (and the PPO optimiser) as tensors and plain data."""
        state: dict[str, Any] = {"params": {k: v.detach().cpu().clone() for k, v in self.params.items()},
                                 "version": self.version}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v.to(self.device))
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.version = int(state.get("version", 0))

    # ---- per-task work (overlaps sampling) ----------------------------------------------------------
    def add_task(self, result: dict[str, Any]) -> None:
        """Take one worker result: move its episodes to the device and attach advantages."""
        start = time.perf_counter()
        r = self.cfg.rl
        index = int(result["task_index"])
        self.iteration = result.get("iteration")
        if not result.get("valid", True):
            self.invalid[index] = str(result.get("reason") or f"task {index} (iteration {self.iteration}) is invalid")
            return
        batches = [advantaged(b, r.gamma, r.gae_lambda, self.device) for b in result["episodes"]]
        for b in batches:
            if not all_finite([b.observations, b.rewards, b.advantages]):
                self.invalid[index] = (f"non-finite observation, reward or advantage in task {index} "
                                       f"(iteration {self.iteration})")
                return
        lrs = tuple(float(x) for x in result.get("lrs", (self.cfg.maml.inner_lr,) * (len(batches) - 1)))
        self.tasks[index] = TaskData(index, batches, lrs)
        self.prepare_time_s += time.perf_counter() - start

    def discard_tasks(self) -> None:
        """Forget the tasks added since the last step (an iteration abandoned on a stop request)."""
        self.tasks, self.invalid, self.prepare_time_s = {}, {}, 0.0

    # ---- the outer step -----------------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        """One outer update on the tasks added since the last step; returns its metrics."""
        if not self.tasks and not self.invalid:
            raise RuntimeError("MetaLearner.step called with no tasks")
        tasks = [self.tasks[i] for i in sorted(self.tasks)]
        start = time.perf_counter()
        dropped = ""
        if self.invalid and not self._enough_valid():  # too few usable tasks: no update this iteration, θ kept
            metrics = _skipped(self._invalid_reasons(with_count=True))
        else:  # rl.on_task_error=skip_task: the update goes on without the invalid tasks
            dropped = self._invalid_reasons() if self.invalid else ""
            metrics = self._trpo(tasks) if self.cfg.rl.outer == "trpo" else self._ppo(tasks)
        metrics["tasks_invalid"] = len(self.invalid)
        metrics["tasks_skipped"] = len(self.invalid) if dropped else 0
        if dropped:
            metrics["skipped_reason"] = dropped
        metrics["learner_time_s"] = time.perf_counter() - start + self.prepare_time_s
        metrics["return_pre"] = _mean([t.batches[0].total_return().mean().item() for t in tasks])
        metrics["return_post"] = _mean([t.val.total_return().mean().item() for t in tasks])
        self.discard_tasks()
        if metrics.get("accepted"):
            self.version += 1
        return metrics

    def _enough_valid(self) -> bool:
        """Whether the valid tasks may be updated on without the invalid ones: ``rl.on_task_error=skip_task`` and
        at least ``rl.min_task_fraction`` of the meta-batch valid (e.g. 15 of 20; 2 of 3 is not enough at 0.75)."""
        r = self.cfg.rl
        total = len(self.tasks) + len(self.invalid)
        return (r.on_task_error == "skip_task" and bool(self.tasks)
                and len(self.tasks) >= r.min_task_fraction * total - 1e-9)

    def _invalid_reasons(self, with_count: bool = False) -> str:
        """The first three invalid tasks' reasons (with the count of valid ones, for a skipped update)."""
        bad = sorted(self.invalid)
        text = "; ".join(self.invalid[i] for i in bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        if with_count and self.cfg.rl.on_task_error == "skip_task":
            total = len(self.tasks) + len(bad)
            text += (f" ({len(self.tasks)} of {total} tasks valid, fewer than rl.min_task_fraction="
                     f"{self.cfg.rl.min_task_fraction:g})")
        return text

    def _nonfinite_phi(self, phis: Params, tasks: list[TaskData]) -> str | None:
        """The skip reason if any task's adapted φ (stacked, task-major) is not finite, naming those tasks."""
        ok = torch.ones(len(tasks), dtype=torch.bool, device=self.device)
        for v in phis.values():
            ok &= torch.isfinite(v.detach().reshape(len(tasks), -1)).all(dim=1)
        if bool(ok.all()):
            return None
        bad = [t.task_index for t, good in zip(tasks, ok.tolist(), strict=True) if not good]
        return f"non-finite inner gradient (adapted φ) in task {', '.join(map(str, bad))} (iteration {self.iteration})"

    def _objective(self, tasks: list[TaskData]) -> MamlRlObjective:
        batch = MetaBatch.from_tasks([t.batches for t in tasks])
        lrs = {t.lrs for t in tasks}
        if len(lrs) != 1:
            raise ValueError(f"the tasks of one meta-batch were adapted with different inner step sizes: {sorted(lrs)}")
        return MamlRlObjective(self.policy, self.inner_loss, lrs.pop(), self.cfg.maml.first_order, batch)

    def _trpo(self, tasks: list[TaskData]) -> dict[str, Any]:
        obj = self._objective(tasks)
        curvature_tasks = curvature_task_count(self.cfg.rl.cg_task_fraction, len(tasks))
        hvp, solution = None, None
        if self.direction is not None:
            phis_old, old_logp, gradient, x, r = self._compiled(
                "direction", natural_direction, obj, {k: v.detach() for k, v in self.params.items()},
                self.trpo.cg_damping, self.trpo.cg_iters, curvature_tasks)
            solution = (x, r)
        else:
            phis_old, old_logp, gradient, hvp = obj.trpo_terms(self.params, self.trpo.cg_damping, curvature_tasks)
        bad_phi = self._nonfinite_phi(phis_old, tasks)
        if bad_phi:
            return _skipped(bad_phi)
        # φ(θ) is known already: the surrogate before the step needs no second adaptation.
        cache: dict[str, Any] = {"key": self.params,  # the KL at θ itself is 0
                                 "terms": (obj.surrogate_at(phis_old, old_logp), old_logp.new_zeros(()))}

        def terms(params: Params) -> tuple[torch.Tensor, torch.Tensor]:
            # The line search evaluates surrogate and KL at the same candidate: adapt once per candidate.
            if cache["key"] is not params:
                cache["key"], cache["terms"] = params, self._compiled(
                    "candidate", candidate_terms, obj, {k: v.detach() for k, v in params.items()}, old_logp, phis_old)
            return cache["terms"]

        result = trpo_step(self.params, lambda p: terms(p)[0], lambda p: terms(p)[1], self.trpo, gradient=gradient,
                           hvp=hvp, solution=solution)
        if result.accepted and result.new_params is not None:
            with torch.no_grad():
                for k, v in result.new_params.items():
                    self.params[k].copy_(v)
        return {"accepted": result.accepted, "reason": result.reason, "surrogate_before": result.surrogate_before,
                "surrogate_after": result.surrogate_after, "kl": result.kl, "grad_norm": result.grad_norm,
                "ls_steps": result.ls_steps_taken}

    def _compiled(self, name: str, eager: Any, *args: Any) -> Any:
        """``self.<name>(*args)``, compiled with ``rl.compile``. If compiling fails: one warning, then ``eager``
        here and for every compiled function from then on (it computes the same numbers)."""
        fn = getattr(self, name)
        if fn is eager:
            return eager(*args)
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure: the eager path computes the same numbers
            cause = next((line for line in str(err).splitlines() if line.strip() and "raised:" not in line), "")
            warnings.warn(f"rl.compile: the compiled learner failed (compiling or running), running it eagerly from now "
                          f"on: {type(err).__name__}: {cause}", stacklevel=3)
            self.direction, self.candidate = None, candidate_terms
            return eager(*args)

    def _ppo(self, tasks: list[TaskData]) -> dict[str, Any]:
        """ProMP-style outer step: Adam on the clipped surrogate for ``ppo_epochs`` epochs."""
        assert self.optimizer is not None
        obj = self._objective(tasks)
        with torch.no_grad():
            phis_old = obj.adapted(self.params)
        bad_phi = self._nonfinite_phi(phis_old, tasks)
        if bad_phi:
            return _skipped(bad_phi)
        old_logp = obj.old_log_probs(phis_old)
        backup = {k: v.detach().clone() for k, v in self.params.items()}
        optimizer_backup = copy.deepcopy(self.optimizer.state_dict())  # a skipped update leaves Adam as it was too
        losses: list[float] = []
        reason = "ok"
        for _ in range(self.cfg.rl.ppo_epochs):
            loss = obj.ppo_at(obj.adapted(self.params), old_logp, self.cfg.rl.ppo_clip)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not math.isfinite(float(loss.detach())) or not all_finite([p.grad for p in self.params.values()]):
                reason = "non-finite loss or gradient"
                break
            self.optimizer.step()
            losses.append(float(loss.detach()))
        accepted = reason == "ok" and all_finite(self.params)
        if not accepted:
            with torch.no_grad():
                for k, v in backup.items():
                    self.params[k].copy_(v)
            self.optimizer.load_state_dict(optimizer_backup)
        with torch.no_grad():
            kl = obj.kl(self.params, phis_old)
        return {"accepted": accepted, "reason": reason, "surrogate_before": losses[0] if losses else math.nan,
                "surrogate_after": losses[-1] if losses else math.nan, "kl": float(kl), "grad_norm": math.nan,
                "ls_steps": 0}


MIN_CURVATURE_TASKS = 5
"""The fewest tasks whose curvature CG uses (or all, if fewer): one or two tasks' KL curvature underestimates the
meta-batch's badly, so TRPO's full step overshoots and the line search can run out (seen at meta-batches of 3)."""


def curvature_task_count(fraction: float, tasks: int) -> int:
    """How many tasks' exact KL curvature CG uses: ``rl.cg_task_fraction`` of them, at least
    :data:`MIN_CURVATURE_TASKS` (nav2d's 20 tasks give 5, HalfCheetah's 40 give 10)."""
    return min(tasks, max(MIN_CURVATURE_TASKS, round(fraction * tasks)))


def _skipped(reason: str) -> dict[str, Any]:
    """The metrics of an update skipped before any outer-step number was computed."""
    return {"accepted": False, "reason": reason, "surrogate_before": math.nan, "surrogate_after": math.nan,
            "kl": math.nan, "grad_norm": math.nan, "ls_steps": 0}


def _mean(values: list[float]) -> float:
    """Mean of the valid tasks' returns; NaN when no task was valid."""
    return float(np.mean(values)) if values else math.nan
