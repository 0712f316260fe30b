"""Specifications of ``rlmaml report``: the markdown reproduction table from stored eval.json files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlmaml.cli import main
from rlmaml.config import build_config, to_dict
from rlmaml.report import PAPER_RL, method_kind, render_report
from rlmaml.runs import RunDir, RunError


def rl_rows(method: str, means: list[float], ci: float = 1.0, goals: int = 40) -> list[dict[str, Any]]:
    return [{"method": method, "steps": s, "mean": m, "ci95": ci, "goals": goals} for s, m in enumerate(means)]


def make_evaluated_run(root: Path, preset: str, overrides: list[str], rows: list[dict[str, Any]],
                       eval_overrides: list[str] = (), **extra: Any) -> Path:
    """A run directory (config.yaml) with an eval.json as ``rlmaml eval`` writes it."""
    cfg = build_config(preset, [f"run.dir={root / preset}", *overrides])
    run = RunDir.create(cfg, root)
    eval_cfg = build_config(preset, [f"run.dir={root / preset}", *overrides, *eval_overrides])
    result = {"experiment": cfg.experiment, "run": str(run.path), "checkpoint_iteration": 99,
              "config": to_dict(eval_cfg), "rows": rows, "summary": {}, **extra}
    (run.path / "eval.json").write_text(json.dumps(result))
    return run.path


@pytest.fixture
def evaluated(tmp_path) -> dict[str, Path]:
    hw = {"platform": "Linux-test", "cpu": "Test CPU", "cpu_count": 2, "gpu": "none", "torch": "2.13"}
    protocol = {"goals": 40, "trajectories": 40, "horizon": 100}
    return {
        "maml": make_evaluated_run(tmp_path, "nav2d", ["run.iterations=50"], rl_rows("nav2d", [-41.25, -12.5, -4.0, -3.5]),
                                   ["eval.goals=40"], hardware=hw, protocol=protocol),
        "oracle": make_evaluated_run(tmp_path, "nav2d-oracle", [], rl_rows("nav2d-oracle", [-2.75], 0.25),
                                     protocol=protocol),
        "sinusoid": make_evaluated_run(tmp_path, "sinusoid", [], [
            {"shots": k, "steps": s, "metric": "mse", "mean": 0.1 * s + k, "ci95": 0.05, "tasks": 600}
            for k in (5, 10) for s in (0, 1, 5, 10)]),
    }


def test_report_puts_our_returns_beside_the_papers(evaluated) -> None:
    metrics = [{"iteration": i, "iteration_time_s": 30.0} for i in range(50)]
    metrics.append({"iteration": 49, "iteration_time_s": 60.0})  # a resume reran iteration 49: the rerun counts
    (evaluated["maml"] / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in metrics) + "\n{\"iter")
    text = render_report([RunDir.open(evaluated["maml"]), RunDir.open(evaluated["oracle"])])
    lines = text.splitlines()
    assert "## Meta-RL: 2D navigation" in lines
    maml = "| MAML | paper | ≤ 500 it | -40.4 | -11.7 | -3.3 | -3.2 | 40 goals |"
    oracle = "| oracle | paper | ≤ 500 it | -2.3 | – | – | – | 40 goals |"
    # 50 iterations, 49 x 30 s + 60 s = 25.5 min (the cut-short last line is skipped); evaluated checkpoint #99
    assert ("| MAML | ours: nav2d | 50 it, 26 min; #99 | -41.2 ± 1.0 | -12.5 ± 1.0 | -4.0 ± 1.0 | -3.5 ± 1.0 "
            "| 40 goals, K=40, H=100 |") in lines
    assert maml in lines
    assert "| oracle | ours: nav2d-oracle | – | -2.8 ± 0.2 | – | – | – | 40 goals, K=40, H=100 |" in lines  # no metrics
    assert oracle in lines
    assert "| random init | paper | none | -82.7 | -58.0 | -53.8 | -46.8 | 40 goals |" in lines
    assert lines.index(maml) < lines.index(oracle)


def test_report_has_the_sinusoid_k5_table(evaluated) -> None:
    text = render_report([evaluated["sinusoid"]])
    assert "| MAML | ours: sinusoid | 5.10 ± 0.05 | 5.50 ± 0.05 | 6.00 ± 0.05 |" in text
    assert "| MAML | paper | 0.67 | 0.38 | 0.35 |" in text
    assert "| pretrained | paper | 2.41 | 2.23 | 2.19 |" in text
    assert "Meta-RL" not in text


def test_report_lists_hardware_and_command_lines(evaluated) -> None:
    text = render_report([evaluated["maml"]])
    assert "- evaluated on: Linux-test; CPU Test CPU × 2; GPU none; torch 2.13" in text
    assert "- report rendered on:" in text
    assert "rlmaml train nav2d run.iterations=50" in text
    assert f"rlmaml eval {evaluated['maml']}" in text
    assert f"rlmaml report {evaluated['maml']}" in text


def test_report_omniglot_accuracy_in_percent(tmp_path) -> None:
    rows = [{"shots": 1, "steps": s, "metric": "accuracy", "mean": a, "ci95": 0.004, "tasks": 600}
            for s, a in ((0, 0.2), (1, 0.9), (3, 0.975))]
    path = make_evaluated_run(tmp_path, "sinusoid", ["experiment=omniglot", "omniglot.ways=5", "omniglot.shots=1",
                                                      "omniglot.test_steps=3", "run.name=omni"], rows)
    text = render_report([path])
    assert "| 5w1s | ours: omni (3 steps) | 97.50 ± 0.40 |" in text
    assert "| 5w1s | MAML (paper) | 98.7 ± 0.4 |" in text


def test_cli_report_writes_the_markdown(evaluated, tmp_path, capsys) -> None:
    out = tmp_path / "report.md"
    assert main(["report", str(evaluated["maml"]), str(evaluated["sinusoid"]), "--out", str(out)]) == 0
    assert out.read_text().strip() == capsys.readouterr().out.strip()
    assert out.read_text().startswith("# rlmaml reproduction report")


def test_a_run_without_eval_json_is_a_clear_error(tmp_path, capsys) -> None:
    run = RunDir.create(build_config("nav2d"), tmp_path)
    with pytest.raises(RunError, match="has no eval.json; evaluate it first"):
        render_report([run])
    assert main(["report", str(run.path)]) == 2
    assert "rlmaml eval" in capsys.readouterr().err


@pytest.mark.parametrize(("preset", "kind"), [("nav2d", "MAML"), ("nav2d-pretrained", "pretrained"),
                                              ("nav2d-random", "random"), ("nav2d-oracle", "oracle"),
                                              ("halfcheetah-vel-oracle", "oracle"),
                                              ("halfcheetah-vel-pretrained", "pretrained"),
                                              ("halfcheetah-dir-oracle", "oracle"),
                                              ("halfcheetah-dir-pretrained", "pretrained"),
                                              ("ant-vel", "MAML"), ("ant-vel-oracle", "oracle"),
                                              ("ant-vel-pretrained", "pretrained")])
def test_presets_are_classified_as_their_method(preset, kind) -> None:
    assert method_kind(to_dict(build_config(preset))) == kind


def test_paper_table_matches_reference_for_2d_navigation() -> None:
    nav = PAPER_RL["Navigation2D"]
    assert nav["MAML"] == (-40.4, -11.7, -3.3, -3.2) and nav["random"][-1] == -46.8 and nav["oracle"] == (-2.3,)
