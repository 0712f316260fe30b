"""Meta-training for supervised few-shot domains (sinusoid, Omniglot) through the shared core.

Algorithm 2 of the paper: sample a meta-batch of tasks, adapt on each task's support set, and take an Adam
step on the mean query loss of the adapted parameters. With ``maml.inner_steps=0`` the same loop trains
the paper's "pretrained on all tasks" baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rlmaml.config import Config
from rlmaml.devices import resolve_device
from rlmaml.loop import Outcome, StopRequest, run_loop
from rlmaml.meta import (
    InnerLR,
    Params,
    all_finite,
    cosine_lr,
    learnable_inner_lr,
    meta_objective,
    multi_step_weights,
)
from rlmaml.runs import RunDir
from rlmaml.seeding import iteration_rng
from rlmaml.supervised.domain import SupervisedDomain


def tree_to(tree: Any, device: torch.device) -> Any:
    """Move every tensor of a pytree to ``device``."""
    return torch.utils._pytree.tree_map(lambda x: x.to(device) if isinstance(x, Tensor) else x, tree)


@dataclass
class MetaState:
    """Everything a supervised run needs to continue: θ, learned inner rates, optimiser, iteration."""

    model: nn.Module
    params: Params
    inner_lr: InnerLR
    optimizer: torch.optim.Optimizer
    iteration: int = 0

    def learned_lr(self) -> dict[str, Tensor]:
        return dict(self.inner_lr) if isinstance(self.inner_lr, dict) else {}

    def to_checkpoint(self, cfg: Config) -> dict[str, Any]:
        from rlmaml.config import to_dict

        return {
            "kind": "supervised",
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "inner_lr": {k: v.detach().cpu() for k, v in self.learned_lr().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": {"seed": cfg.run.seed, "next_iteration": self.iteration},
            "config": to_dict(cfg),
        }


def init_state(cfg: Config, domain: SupervisedDomain, device: torch.device,
               checkpoint: dict[str, Any] | None = None) -> MetaState:
    """Fresh θ from the run seed, or θ, rates and optimiser restored from ``checkpoint``."""
    model = domain.build_model(cfg.run.seed).to(device)
    params = {k: v.detach().clone().to(device).requires_grad_(True) for k, v in model.named_parameters()}
    inner_lr: InnerLR = cfg.maml.inner_lr
    if cfg.maml.learn_inner_lr:
        inner_lr = learnable_inner_lr(params, max(cfg.maml.inner_steps, 1), cfg.maml.inner_lr)
    leaves = list(params.values()) + (list(inner_lr.values()) if isinstance(inner_lr, dict) else [])
    optimizer = torch.optim.Adam(leaves, lr=cfg.optim.meta_lr)
    state = MetaState(model, params, inner_lr, optimizer)
    if checkpoint is not None:
        with torch.no_grad():
            for k, v in checkpoint["params"].items():
                params[k].copy_(v)
            for k, v in checkpoint.get("inner_lr", {}).items():
                if isinstance(inner_lr, dict):
                    inner_lr[k].copy_(v)
        optimizer.load_state_dict(checkpoint["optimizer"])
        state.iteration = int(checkpoint["iteration"]) + 1
    return state


def choose_batching(cfg: Config, domain: SupervisedDomain, device: torch.device) -> str:
    """The configured batching, or the domain's measured preference for ``auto``."""
    return domain.preferred_batching(device) if cfg.maml.batching == "auto" else cfg.maml.batching


def meta_step(cfg: Config, domain: SupervisedDomain, state: MetaState, device: torch.device,
              batching: str) -> dict[str, float]:
    """One outer step; a non-finite loss or gradient skips the update and keeps θ."""
    it = state.iteration
    progress = it / cfg.run.iterations
    train, val = tree_to(domain.sample_tasks(cfg.optim.meta_batch, iteration_rng(cfg.run.seed, it), "train"), device)
    steps = cfg.maml.inner_steps
    first_order = cfg.maml.first_order or progress < cfg.maml.first_order_until
    weights = None
    if cfg.maml.multi_step_loss and steps > 1:
        weights = multi_step_weights(steps, progress, cfg.maml.msl_anneal_fraction).to(device)
    loss_fn = domain.loss_fn(state.model)
    loss = meta_objective(loss_fn, loss_fn, state.params, train, val, steps=steps, lr=state.inner_lr,
                          first_order=first_order, step_weights=weights, batching=batching)
    record: dict[str, float] = {"meta_loss": float(loss.detach())}
    state.optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        record["skipped"] = 1.0
        record["skip_reason"] = "non-finite meta-loss"  # type: ignore[assignment]
        return record
    loss.backward()
    leaves = [p for g in state.optimizer.param_groups for p in g["params"]]
    grads = [p.grad for p in leaves if p.grad is not None]
    grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    record["grad_norm"] = float(grad_norm)
    if not all_finite(grads):
        state.optimizer.zero_grad(set_to_none=True)
        record["skipped"] = 1.0
        record["skip_reason"] = "non-finite meta-gradient"  # type: ignore[assignment]
        return record
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(leaves, cfg.optim.grad_clip)
    if cfg.optim.cosine:
        for group in state.optimizer.param_groups:
            group["lr"] = cosine_lr(cfg.optim.meta_lr, progress, cfg.optim.min_meta_lr)
    record["meta_lr"] = state.optimizer.param_groups[0]["lr"]
    state.optimizer.step()
    if isinstance(state.inner_lr, dict):
        with torch.no_grad():
            for v in state.inner_lr.values():
                v.clamp_(min=1e-6)
    record["skipped"] = 0.0
    return record


class SupervisedTrainer:
    """Algorithm 2's iterations on one domain, for :func:`rlmaml.loop.run_loop`."""

    def __init__(self, cfg: Config, domain: SupervisedDomain, state: MetaState, device: torch.device,
                 batching: str) -> None:
        self.cfg, self.domain, self.meta, self.device, self.batching = cfg, domain, state, device, batching

    def iterate(self, it: int, stop: StopRequest) -> Outcome:
        start = time.perf_counter()
        record = meta_step(self.cfg, self.domain, self.meta, self.device, self.batching)
        self.meta.iteration = it + 1
        skipped = bool(record.get("skipped"))
        return Outcome({**record, "time_s": time.perf_counter() - start}, not skipped,
                       str(record.get("skip_reason", "")), {"meta_loss": record["meta_loss"]})

    def state(self, next_iteration: int, best: float, failures: int) -> dict[str, Any]:
        return self.meta.to_checkpoint(self.cfg)


def train_supervised(cfg: Config, domain: SupervisedDomain, run: RunDir,
                     checkpoint: dict[str, Any] | None = None) -> MetaState:
    """Meta-train ``domain`` for ``cfg.run.iterations`` iterations, logging and checkpointing into ``run``."""
    device = resolve_device(cfg.run.device)
    state = init_state(cfg, domain, device, checkpoint)
    batching = choose_batching(cfg, domain, device)
    if checkpoint is not None:
        run.truncate_metrics(state.iteration - 1)
    if cfg.run.tensorboard:
        run.enable_tensorboard()
    run_loop(cfg, run, SupervisedTrainer(cfg, domain, state, device, batching), state.iteration, desc=domain.name)
    return state
