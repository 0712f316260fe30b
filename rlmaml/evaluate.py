"""``rlmaml eval``: load a run's checkpoint and evaluate adaptation, for any experiment.

Writes ``eval.json`` (config of the evaluation, rows, summary), ``eval.csv`` and ``eval.png`` into the run
directory. Supervised runs report metric mean ± 95% CI per support size and step count; meta-RL runs
report mean return ± 95% CI after 0..N policy-gradient steps (see :mod:`rlmaml.rl.evaluation.evaluate`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from rlmaml.config import to_dict
from rlmaml.devices import resolve_device
from rlmaml.runs import RunDir, atomic_write_bytes


def write_rows_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows of flat dicts as CSV (columns from the first row)."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def evaluate_run(run: RunDir, overrides: list[str], checkpoint: str = "best", video: bool = False,
                 compare: list[str] | None = None) -> dict[str, Any]:
    """Evaluate ``run`` and write eval.json / eval.csv / eval.png; returns the eval.json content."""
    cfg = run.config(overrides)
    state = run.load_checkpoint(checkpoint)
    if cfg.experiment == "rl":
        from rlmaml.rl.evaluation.evaluate import evaluate_rl_run

        result = evaluate_rl_run(cfg, run, state, video=video)
    else:
        result = _evaluate_supervised_run(cfg, state)
    result = {"experiment": cfg.experiment, "run": str(run.path), "checkpoint_iteration": state["iteration"],
              "config": to_dict(cfg), **result}
    atomic_write_bytes(run.path / "eval.json", json.dumps(result, indent=2).encode())
    write_rows_csv(run.path / "eval.csv", result["rows"])
    from rlmaml.plots import plot_eval

    plot_eval(result, run.path / "eval.png")
    if cfg.experiment == "sinusoid":
        from rlmaml.plots import plot_sinusoid_fits

        plot_sinusoid_fits(cfg, state, run.path / "sinusoid_fits.png")
    if compare:
        from rlmaml.plots import plot_compare

        plot_compare([run.path, *map(Path, compare)], run.path / "compare.png")
    return result


def _evaluate_supervised_run(cfg: Any, state: dict[str, Any]) -> dict[str, Any]:
    from rlmaml.supervised import make_domain
    from rlmaml.supervised.evaluate import evaluate_supervised
    from rlmaml.supervised.trainer import choose_batching

    device = resolve_device(cfg.run.device)
    domain = make_domain(cfg)
    model = domain.build_model(cfg.run.seed).to(device)
    params = {k: v.to(device) for k, v in state["params"].items()}
    lr = {k: v.to(device) for k, v in state["inner_lr"].items()} or cfg.maml.inner_lr
    rows = evaluate_supervised(cfg, domain, model, params, lr, device, choose_batching(cfg, domain, device))
    summary = {f"{r['metric']}@K={r['shots']},steps={r['steps']}": f"{r['mean']:.4f} ± {r['ci95']:.4f}"
               for r in rows}
    return {"rows": rows, "summary": summary}
