"""``rlmaml eval``: load a run's checkpoint and evaluate adaptation, for any experiment.

Writes ``eval.json`` (config of the evaluation, rows, summary) and ``eval.csv`` into the run directory first,
then the pictures (``eval.png`` and the experiment's figures and videos), and rewrites eval.json to list them. A
picture that cannot be written is a one-line RunError; the numbers are kept. Supervised runs report metric
mean ± 95% CI per support size and step count; meta-RL runs report mean return ± 95% CI after 0..N policy-gradient
steps (see :mod:`rlmaml.rl.evaluation.evaluate`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlmaml.config import to_dict
from rlmaml.devices import resolve_device
from rlmaml.runs import RunDir, RunError, atomic_write_bytes


def write_rows_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows of flat dicts as CSV (columns from the first row), replaced atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())


def _write_numbers(run: RunDir, result: dict[str, Any]) -> None:
    try:
        atomic_write_bytes(run.path / "eval.json", json.dumps(result, indent=2).encode())
        write_rows_csv(run.path / "eval.csv", result["rows"])
    except OSError as exc:
        raise RunError(f"cannot write the evaluation of {run.path} ({exc.filename or 'eval.json'}): "
                       f"{exc.strerror or exc}") from None


def _draw(run: RunDir, name: str, draw: Callable[[], Any]) -> Any:
    """Run one picture's ``draw``; any failure is a one-line RunError that says the numbers are kept."""
    try:
        return draw()
    except RunError as exc:  # e.g. a --compare run without eval.json: its own one line
        raise RunError(f"{exc}; eval.json and eval.csv in {run.path} are written") from None
    except Exception as exc:  # noqa: BLE001 - a failed picture (disk full, matplotlib, moviepy) must not lose eval.json
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise RunError(f"could not write {run.path / name} ({type(exc).__name__}: {text}); eval.json and eval.csv "
                       f"in {run.path} are written") from None


def evaluate_run(run: RunDir, overrides: list[str], checkpoint: str = "best", video: bool = False,
                 compare: list[str] | None = None) -> dict[str, Any]:
    """Evaluate ``run`` and write eval.json / eval.csv / eval.png; returns the eval.json content."""
    cfg = run.config(overrides)
    state = run.load_checkpoint(checkpoint)
    pictures: list[Any] = []  # (key in eval.json or None, file name, draw), drawn once the numbers are saved
    if cfg.experiment == "rl":
        from rlmaml.rl.evaluation.evaluate import evaluate_rl_run

        result = evaluate_rl_run(cfg, run, state, video=video, pictures=pictures)
    else:
        result = _evaluate_supervised_run(cfg, state)
    result = {"experiment": cfg.experiment, "run": str(run.path), "checkpoint_iteration": state["iteration"],
              "config": to_dict(cfg), **result}
    _write_numbers(run, result)
    from rlmaml import plots

    pictures.insert(0, (None, "eval.png", lambda: plots.plot_eval(result, run.path / "eval.png")))
    if cfg.experiment == "sinusoid":
        pictures.append((None, "sinusoid_fits.png",
                         lambda: plots.plot_sinusoid_fits(cfg, state, run.path / "sinusoid_fits.png")))
    if compare:
        pictures.append((None, "compare.png",
                         lambda: plots.plot_compare([run.path, *map(Path, compare)], run.path / "compare.png")))
    listed = False
    for key, name, draw in pictures:
        names = _draw(run, name, draw)
        if key is not None:
            result[key] = [*result.get(key, []), *names]
            listed = True
    if listed:  # eval.json names the figures and videos that now exist
        _write_numbers(run, result)
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
