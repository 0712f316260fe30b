"""Omniglot few-shot classification: train within a wall-clock budget, then evaluate on 600 test tasks.

    python benchmarks/omniglot.py                           # 5-way 1-shot, 60 minutes, this CPU
    python benchmarks/omniglot.py --preset omniglot-20w1s --minutes 30
    python benchmarks/omniglot.py --minutes 5 maml.first_order=true   # extra dotted overrides

Reads the dataset from ../shared/data/omniglot (or --root / $RLMAML_DATA). Prints the test accuracy with its
95% CI beside the paper's figure; the CPU goal for 5-way 1-shot is >= 97% within 60 minutes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from rlmaml.config import build_config
from rlmaml.devices import resolve_device
from rlmaml.runs import RunDir
from rlmaml.supervised import make_domain
from rlmaml.supervised.evaluate import evaluate_supervised
from rlmaml.supervised.trainer import choose_batching, train_supervised

PAPER = {"omniglot-5w1s": 98.7, "omniglot-5w5s": 99.9, "omniglot-20w1s": 95.8, "omniglot-20w5s": 98.9}
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="omniglot-5w1s")
    parser.add_argument("--minutes", type=float, default=60.0, help="training wall-clock budget")
    parser.add_argument("--root", default=os.environ.get("RLMAML_DATA", str(SHARED)))
    parser.add_argument("--run-dir", default="", help="keep the run here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("overrides", nargs="*", help="extra dotted config overrides")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or str(Path(tmp) / "run")
        cfg = build_config(args.preset, [f"omniglot.root={args.root}", f"run.dir={run_dir}",
                                         f"run.time_limit_min={args.minutes}", "run.checkpoint_every=500",
                                         *args.overrides])
        domain = make_domain(cfg)
        start = time.perf_counter()
        state = train_supervised(cfg, domain, RunDir.create(cfg))
        minutes = (time.perf_counter() - start) / 60
        device = resolve_device(cfg.run.device)
        rows = evaluate_supervised(cfg, domain, state.model, state.params, state.inner_lr, device,
                                   choose_batching(cfg, domain, device))
    acc = {r["steps"]: r for r in rows if r["metric"] == "accuracy"}
    print(f"\n{args.preset}: {state.iteration} meta-iterations in {minutes:.1f} min on {device}, "
          f"{cfg.eval.test_tasks} test tasks")
    print(f"{'inner steps':>11} | {'accuracy %':>16} | paper")
    for steps, row in sorted(acc.items()):
        paper = f"{PAPER.get(args.preset, float('nan')):.1f}" if steps == max(acc) else ""
        print(f"{steps:>11} | {100 * row['mean']:>7.2f} ± {100 * row['ci95']:.2f} | {paper}")


if __name__ == "__main__":
    main()
