"""Sinusoid regression at the paper's full setting: MAML against the pretrained baseline.

Trains MAML (K=10, one inner step, alpha=1e-3 as the original code ran it, meta-batch 25, Adam 1e-3) and
the "pretrained on all tasks" baseline for the same number of iterations, evaluates both on 600 seeded test
tasks and prints K=5 MSE after 1 / 5 / 10 steps beside the paper's figures. Usage:

    python benchmarks/sinusoid.py                    # 70,000 iterations each (the paper)
    python benchmarks/sinusoid.py --iterations 5000  # a quicker look
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from rlmaml.config import build_config
from rlmaml.devices import resolve_device
from rlmaml.runs import RunDir
from rlmaml.supervised import make_domain
from rlmaml.supervised.evaluate import evaluate_supervised, per_task_metrics
from rlmaml.supervised.trainer import choose_batching, train_supervised

PAPER = {"maml": {1: 0.67, 5: 0.38, 10: 0.35}, "pretrained": {1: 2.41, 5: 2.23, 10: 2.19}}


def run_one(preset: str, iterations: int, seed: int, root: str
            ) -> tuple[dict[tuple[int, int], tuple[float, float]], dict[int, float], float]:
    """Train and evaluate one preset: {(K, steps): (mean, ci)}, {K: median MSE after 10 steps}, training seconds."""
    cfg = build_config(preset, [f"run.iterations={iterations}", f"run.seed={seed}", f"run.dir={root}/{preset}",
                                f"run.checkpoint_every={iterations}", f"run.log_every={max(iterations // 10, 1)}"])
    domain = make_domain(cfg)
    start = time.perf_counter()
    state = train_supervised(cfg, domain, RunDir.create(cfg))
    seconds = time.perf_counter() - start
    device = resolve_device(cfg.run.device)
    batching = choose_batching(cfg, domain, device)
    rows = evaluate_supervised(cfg, domain, state.model, state.params, state.inner_lr, device, batching)
    medians = {}
    for k in cfg.eval.shots:  # the same seeded test tasks as evaluate_supervised draws
        support, query = domain.sample_tasks(cfg.eval.test_tasks, np.random.default_rng([cfg.eval.seed, k]), "test",
                                             shots=k, queries=cfg.eval.query_points)
        per_task = per_task_metrics(domain, state.model, state.params, state.inner_lr, [10], batching, support, query)
        medians[k] = float(per_task[10]["mse"].median())
    return {(r["shots"], r["steps"]): (r["mean"], r["ci95"]) for r in rows}, medians, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=70_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest here)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        results = {name: run_one(preset, args.iterations, args.seed, root)
                   for name, preset in (("maml", "sinusoid"), ("pretrained", "sinusoid-pretrained"))}
    print(f"\nSinusoid regression, {args.iterations} meta-iterations, 600 test tasks, MSE ± 95% CI")
    print(f"{'method':<11} {'K':>3} {'train s':>8} | {'1 step':>15} {'5 steps':>15} {'10 steps':>15} "
          f"| {'median@10':>9} | paper (K=5)")
    for name, (table, medians, seconds) in results.items():
        for k in (5, 10, 20):
            cells = " ".join(f"{table[(k, s)][0]:>7.3f} ± {table[(k, s)][1]:.3f}" for s in (1, 5, 10))
            paper = " / ".join(str(PAPER[name][s]) for s in (1, 5, 10)) if k == 5 else ""
            print(f"{name:<11} {k:>3} {seconds:>8.0f} | {cells} | {medians[k]:>9.3f} | {paper}")


if __name__ == "__main__":
    main()
