"""``MetaLearner``: owns θ on its device and takes the outer step (TRPO, or PPO-style clipping).

Per task it recomputes φ from the pre-update episodes *with* the graph (second order unless first order
is asked for) and builds the outer surrogate on the post-update episodes. The TRPO step is the paper's:
conjugate gradient on exact Hessian-vector products of the mean KL between the old and new post-update
policies, a step scaled to ``max_kl``, and a backtracking line search on surrogate and KL. Any non-finite
number skips the update and keeps θ.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlmaml.config import Config
from rlmaml.meta import Params, all_finite
from rlmaml.rl.episodes import Episodes
from rlmaml.rl.maml_objective import MamlRlObjective, MetaBatch
from rlmaml.rl.objectives import inner_loss, with_advantages
from rlmaml.rl.policies import make_policy, params_to_numpy
from rlmaml.rl.trpo import TrpoConfig, trpo_step
from rlmaml.seeding import seeded_init


@dataclass
class TaskData:
    """One task's episode batches on the learner's device, advantages attached, in adaptation order."""

    task_index: int
    batches: list[Episodes]

    @property
    def train(self) -> list[Episodes]:
        return self.batches[:-1]

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
        self.trpo = TrpoConfig(max_kl=r.max_kl, cg_iters=r.cg_iters, cg_damping=r.cg_damping,
                               ls_steps=r.ls_steps, ls_ratio=r.ls_ratio)
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=cfg.optim.meta_lr) if r.outer == "ppo" else None
        self.tasks: dict[int, TaskData] = {}
        self.version = 0
        self.prepare_time_s = 0.0

    # ---- weights and state --------------------------------------------------------------------------
    def weights(self) -> dict[str, np.ndarray]:
        """θ as numpy on the CPU, for publishing to workers."""
        return params_to_numpy(self.params)

    def state_dict(self) -> dict[str, Any]:
        """θ (and the PPO optimiser) as tensors and plain data."""
        state: dict[str, Any] = {"params": {k: v.detach().cpu() for k, v in self.params.items()},
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
        batches = [with_advantages(Episodes.from_numpy(b, self.device), r.gamma, r.gae_lambda)
                   for b in result["episodes"]]
        for b in batches:
            if not all_finite([b.observations, b.rewards, b.advantages]):
                raise FloatingPointError(f"non-finite observation, reward or advantage in task {index} "
                                         f"(iteration {result.get('iteration')})")
        self.tasks[index] = TaskData(index, batches)
        self.prepare_time_s += time.perf_counter() - start

    # ---- the outer step -----------------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        """One outer update on the tasks added since the last step; returns its metrics."""
        if not self.tasks:
            raise RuntimeError("MetaLearner.step called with no tasks")
        tasks = [self.tasks[i] for i in sorted(self.tasks)]
        start = time.perf_counter()
        metrics = self._trpo(tasks) if self.cfg.rl.outer == "trpo" else self._ppo(tasks)
        metrics["learner_time_s"] = time.perf_counter() - start + self.prepare_time_s
        metrics["return_pre"] = float(np.mean([t.batches[0].total_return().mean().item() for t in tasks]))
        metrics["return_post"] = float(np.mean([t.val.total_return().mean().item() for t in tasks]))
        self.tasks = {}
        self.prepare_time_s = 0.0
        if metrics.get("accepted"):
            self.version += 1
        return metrics

    def _objective(self, tasks: list[TaskData]) -> MamlRlObjective:
        batch = MetaBatch.from_tasks([t.batches for t in tasks])
        return MamlRlObjective(self.policy, self.inner_loss, self.cfg.maml.inner_lr, self.cfg.maml.first_order, batch)

    def _trpo(self, tasks: list[TaskData]) -> dict[str, Any]:
        obj = self._objective(tasks)
        curvature_tasks = max(1, round(self.cfg.rl.cg_task_fraction * len(tasks)))
        phis_old, old_logp, gradient, hvp = obj.trpo_terms(self.params, self.trpo.cg_damping, curvature_tasks)
        cache: dict[str, Any] = {"key": None, "phis": None}

        def adapted(params: Params) -> Params:
            # The line search evaluates surrogate and KL at the same candidate: adapt once per candidate.
            if cache["key"] is not params:
                cache["key"], cache["phis"] = params, obj.adapted(params)
            return cache["phis"]

        result = trpo_step(self.params, lambda p: obj.surrogate_at(adapted(p), old_logp),
                           lambda p: obj.kl_at(adapted(p), phis_old), self.trpo, gradient=gradient, hvp=hvp)
        if result.accepted and result.new_params is not None:
            with torch.no_grad():
                for k, v in result.new_params.items():
                    self.params[k].copy_(v)
        return {"accepted": result.accepted, "reason": result.reason, "surrogate_before": result.surrogate_before,
                "surrogate_after": result.surrogate_after, "kl": result.kl, "grad_norm": result.grad_norm,
                "ls_steps": result.ls_steps_taken}

    def _ppo(self, tasks: list[TaskData]) -> dict[str, Any]:
        """ProMP-style outer step: Adam on the clipped surrogate for ``ppo_epochs`` epochs."""
        assert self.optimizer is not None
        obj = self._objective(tasks)
        with torch.no_grad():
            phis_old = obj.adapted(self.params)
        old_logp = obj.old_log_probs(phis_old)
        backup = {k: v.detach().clone() for k, v in self.params.items()}
        losses: list[float] = []
        reason = "ok"
        for _ in range(self.cfg.rl.ppo_epochs):
            loss = obj.ppo_at(obj.adapted(self.params), old_logp, self.cfg.rl.ppo_clip)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not math.isfinite(float(loss)) or not all_finite([p.grad for p in self.params.values()]):
                reason = "non-finite loss or gradient"
                break
            self.optimizer.step()
            losses.append(float(loss))
        accepted = reason == "ok" and all_finite(self.params)
        if not accepted:
            with torch.no_grad():
                for k, v in backup.items():
                    self.params[k].copy_(v)
        with torch.no_grad():
            kl = obj.kl(self.params, phis_old)
        return {"accepted": accepted, "reason": reason, "surrogate_before": losses[0] if losses else math.nan,
                "surrogate_after": losses[-1] if losses else math.nan, "kl": float(kl), "grad_norm": math.nan,
                "ls_steps": 0}
