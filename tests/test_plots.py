"""Specifications of the pictures (:mod:`rlmaml.plots`): every plot writes a real PNG of the expected size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rlmaml.cli import main
from rlmaml.config import build_config, to_dict
from rlmaml.plots import (
    plot_compare,
    plot_eval,
    plot_learning_curves,
    plot_nav_trajectories,
    plot_sinusoid_fits,
)
from rlmaml.runs import RunDir, RunError


def assert_png(path: Path, width: int, height: int, min_bytes: int = 5000) -> None:
    assert path.stat().st_size > min_bytes
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (width, height)
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 10  # not blank


def evaluated_run(root: Path, preset: str, means: list[float]) -> Path:
    cfg = build_config(preset, [f"run.dir={root / preset}"])
    run = RunDir.create(cfg, root)
    rows = [{"method": preset, "steps": s, "mean": m, "ci95": 1.5, "goals": 40} for s, m in enumerate(means)]
    result = {"experiment": "rl", "run": str(run.path), "config": to_dict(cfg), "rows": rows, "summary": {},
              "env": cfg.rl.env, "protocol": {"goals": 40, "trajectories": 40, "horizon": 100}}
    (run.path / "eval.json").write_text(json.dumps(result))
    return run.path


def test_plot_eval_png(tmp_path) -> None:
    rows = [{"method": "nav2d", "steps": s, "mean": -40 + 10 * s, "ci95": 2.0, "goals": 40} for s in range(4)]
    out = plot_eval({"experiment": "rl", "run": "runs/nav2d", "rows": rows}, tmp_path / "eval.png")
    assert_png(out, 660, 480)


def test_plot_compare_png_with_paper_table(tmp_path) -> None:
    paths = [evaluated_run(tmp_path, "nav2d", [-40.0, -12.0, -5.0, -4.0]),
             evaluated_run(tmp_path, "nav2d-pretrained", [-41.0, -20.0, -12.0, -9.0]),
             evaluated_run(tmp_path, "nav2d-random", [-80.0, -60.0, -52.0, -47.0]),
             evaluated_run(tmp_path, "nav2d-oracle", [-2.5])]
    out = plot_compare(paths, tmp_path / "compare.png")
    assert_png(out, 1320, 528, min_bytes=20000)


def test_cli_eval_compare_of_a_run_without_eval_json_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(RunError, match="has no eval.json"):
        plot_compare([RunDir.create(build_config("nav2d"), tmp_path).path], tmp_path / "c.png")


def test_plot_nav_trajectories_png(tmp_path) -> None:
    t = np.linspace(0, 1, 30)[:, None]
    goals = [{"goal": np.array([0.3, -0.2]),
              "paths": {0: [np.hstack([0.4 * t, 0.4 * t])], 1: [np.hstack([0.25 * t, -0.1 * t])],
                        3: [np.hstack([0.3 * t, -0.2 * t])]}} for _ in range(4)]
    out = plot_nav_trajectories(goals, tmp_path / "nav.png", title="nav2d")
    assert_png(out, 1584, 468)


def test_plot_sinusoid_fits_png(tmp_path) -> None:
    from rlmaml.supervised.sinusoid import SinusoidDomain

    cfg = build_config("sinusoid", ["eval.shots=[5]", "eval.steps=[1,10]"])
    model = SinusoidDomain(cfg.sinusoid).build_model(0)
    state = {"params": {k: v.detach() for k, v in model.named_parameters()}, "inner_lr": {}}
    out = plot_sinusoid_fits(cfg, state, tmp_path / "fits.png")
    assert_png(out, 1512, 420)


def _run_with_metrics(root: Path, name: str, seed: int, rows: list[dict]) -> RunDir:
    run = RunDir.create(build_config("nav2d", [f"run.dir={root / f'{name}-{seed}'}", f"run.name={name}"]), root)
    for row in rows:
        run.log(row)
    return run


def test_plot_learning_curves_rl_mean_and_std_over_seeds(tmp_path) -> None:
    runs = [_run_with_metrics(tmp_path, "nav2d", seed, [
        {"iteration": i, "return_pre": -40 + i + seed, "return_post": -30 + 2 * i + seed, "kl": 0.01,
         "env_steps_per_s": 1e4 + 100 * seed} for i in range(10)]) for seed in range(3)]
    out = plot_learning_curves(runs, tmp_path / "curves.png")
    assert_png(out, 1656, 432)


def test_plot_learning_curves_supervised_meta_loss(tmp_path) -> None:
    run = _run_with_metrics(tmp_path, "sinusoid", 0, [{"iteration": i, "meta_loss": 4.0 / (1 + i)}
                                                       for i in range(300)])
    out = plot_learning_curves([run.path], tmp_path / "loss.png")
    assert_png(out, 552, 432)


def test_cli_plot_writes_the_png(tmp_path, capsys) -> None:
    run = _run_with_metrics(tmp_path, "nav2d", 0, [{"iteration": i, "return_pre": -40.0 + i, "return_post": -30.0 + i,
                                                     "kl": 0.01, "env_steps_per_s": 1e4} for i in range(5)])
    out = tmp_path / "lc.png"
    assert main(["plot", str(run.path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert_png(out, 1656, 432)


def test_cli_plot_without_out_writes_into_the_run_not_the_working_directory(tmp_path, capsys, monkeypatch) -> None:
    run = _run_with_metrics(tmp_path, "nav2d", 0, [{"iteration": i, "return_pre": -40.0 + i, "return_post": -30.0 + i,
                                                     "kl": 0.01, "env_steps_per_s": 1e4} for i in range(5)])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["plot", str(run.path)]) == 0
    assert capsys.readouterr().out.strip() == str(run.path / "learning_curves.png")
    assert_png(run.path / "learning_curves.png", 1656, 432)
    assert not list(elsewhere.iterdir())


def test_cli_plot_of_a_run_without_metrics_is_a_clear_error(tmp_path, capsys) -> None:
    run = RunDir.create(build_config("nav2d"), tmp_path)
    assert main(["plot", str(run.path), "--out", str(tmp_path / "x.png")]) == 2
    assert "has no metrics" in capsys.readouterr().err
