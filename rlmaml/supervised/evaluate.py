"""Evaluation of supervised meta-learning: adapt on K support points of held-out tasks, measure the query.

For each support size K it samples ``eval.test_tasks`` seeded test tasks, runs inner steps with the
trained step size (first order: no outer graph is needed) and reports each metric after every requested
number of steps as mean ± 95% CI over tasks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from rlmaml.config import Config
from rlmaml.meta import InnerLR, Params, adapt_path, index_tasks
from rlmaml.stats import mean_ci95
from rlmaml.supervised.domain import SupervisedDomain
from rlmaml.supervised.trainer import tree_to


def eval_plan(cfg: Config) -> tuple[list[int], list[int], int | None]:
    """(support sizes, step counts, query size) to evaluate for this experiment."""
    if cfg.experiment == "omniglot":
        return [cfg.omniglot.shots], sorted({0, 1, cfg.omniglot.test_steps}), None
    return list(cfg.eval.shots), sorted({0, *cfg.eval.steps}), cfg.eval.query_points


def per_task_metrics(domain: SupervisedDomain, model: torch.nn.Module, params: Params, lr: InnerLR,
                     steps: list[int], batching: str, support: Any, query: Any,
                     chunk: int = 100) -> dict[int, dict[str, Tensor]]:
    """{steps: {metric: [tasks]}} after each number of inner steps, for a stacked batch of tasks."""
    loss_fn = domain.loss_fn(model)
    detached = {k: v.detach() for k, v in params.items()}
    lr_d = {k: v.detach() for k, v in lr.items()} if isinstance(lr, dict) else lr

    def one(sup: Any, qry: Any) -> dict[int, dict[str, Tensor]]:
        path = adapt_path(loss_fn, detached, sup, steps=max(steps), lr=lr_d, first_order=True)
        return {s: {k: v.detach() for k, v in domain.metrics(model, path[s], qry, step=max(s - 1, 0)).items()}
                for s in steps}

    n = torch.utils._pytree.tree_leaves(support)[0].shape[0]
    parts = []
    for lo in range(0, n, chunk):
        sl = slice(lo, min(lo + chunk, n))
        sup = torch.utils._pytree.tree_map(lambda x, sl=sl: x[sl], support)
        qry = torch.utils._pytree.tree_map(lambda x, sl=sl: x[sl], query)
        if batching == "vmap":
            parts.append(vmap(one, randomness="different")(sup, qry))
        else:
            rows = [one(index_tasks(sup, i), index_tasks(qry, i)) for i in range(sl.stop - sl.start)]
            parts.append({s: {k: torch.stack([r[s][k] for r in rows]) for k in rows[0][s]} for s in steps})
    return {s: {k: torch.cat([p[s][k] for p in parts]) for k in parts[0][s]} for s in steps}


def evaluate_supervised(cfg: Config, domain: SupervisedDomain, model: torch.nn.Module, params: Params,
                        lr: InnerLR, device: torch.device, batching: str) -> list[dict[str, Any]]:
    """Rows of {shots, steps, metric, mean, ci95, tasks} over ``eval.test_tasks`` seeded test tasks."""
    shots_list, steps, queries = eval_plan(cfg)
    rows: list[dict[str, Any]] = []
    for shots in shots_list:
        rng = np.random.default_rng([cfg.eval.seed, shots])
        support, query = tree_to(
            domain.sample_tasks(cfg.eval.test_tasks, rng, "test", shots=shots, queries=queries), device)
        results = per_task_metrics(domain, model, params, lr, steps, batching, support, query)
        for s in steps:
            for metric, values in results[s].items():
                mean, ci = mean_ci95(values.cpu().numpy())
                rows.append({"shots": shots, "steps": s, "metric": metric, "mean": mean, "ci95": ci,
                             "tasks": int(values.numel())})
    return rows
