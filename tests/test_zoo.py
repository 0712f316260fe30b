"""The shipped meta-policies (``zoo/``): each entry is a run directory that ``rlmaml eval`` evaluates on a
fresh clone with no training, and its committed ``eval.json`` is what that evaluation gives."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from rlmaml.cli import main
from rlmaml.runs import RunDir

ZOO = Path(__file__).parents[1] / "zoo"
ENTRIES = sorted(p for p in ZOO.iterdir() if (p / "config.yaml").is_file()) if ZOO.is_dir() else []


def test_the_zoo_ships_nav2d() -> None:
    assert "nav2d" in {p.name for p in ENTRIES}


@pytest.mark.parametrize("entry", ENTRIES, ids=[p.name for p in ENTRIES])
def test_a_zoo_entry_loads_with_weights_only_and_is_small(entry: Path) -> None:
    files = list(entry.rglob("*"))
    assert sum(f.stat().st_size for f in files if f.is_file()) < 2_000_000
    run = RunDir.open(entry)
    best = run.load_checkpoint("best")
    params = best["learner"]["params"] if "learner" in best else best["params"]  # RL or supervised
    assert all(torch.isfinite(v).all() for v in params.values())
    for pt in entry.rglob("*.pt"):
        torch.load(pt, weights_only=True)


def _copy(entry: Path, tmp_path: Path) -> Path:
    """The entry copied out of the repository, so that evaluating it writes nothing into the checkout."""
    target = tmp_path / entry.name
    shutil.copytree(entry, target)
    return target


def test_the_nav2d_zoo_policy_evaluates_end_to_end_and_is_trained(tmp_path: Path, one_thread) -> None:
    run = _copy(ZOO / "nav2d", tmp_path)
    assert main(["eval", str(run), "eval.goals=3", "eval.trajectories=8", "eval.rl_steps=1",
                 "eval.batch=trajectories", "--backend", "local"]) == 0
    rows = {r["steps"]: r["mean"] for r in json.loads((run / "eval.json").read_text())["rows"]}
    assert rows[0] > -65 and rows[1] > rows[0]  # trained θ (random init scores about −80), and adaptation helps


@pytest.mark.slow
def test_the_nav2d_zoo_results_reproduce_exactly_with_rlmaml_eval(tmp_path: Path, one_thread) -> None:
    entry = ZOO / "nav2d"
    committed = json.loads((entry / "eval.json").read_text())
    run = _copy(entry, tmp_path)
    assert main(["eval", str(run), "--backend", "local"]) == 0
    fresh = json.loads((run / "eval.json").read_text())
    assert [(r["steps"], round(r["mean"], 3)) for r in fresh["rows"]] == \
        [(r["steps"], round(r["mean"], 3)) for r in committed["rows"]]


def test_the_sinusoid_zoo_model_reproduces_its_eval_json(tmp_path: Path, one_thread) -> None:
    """``rlmaml eval zoo/sinusoid`` (600 test tasks, a few seconds) gives the committed figures, up to float
    rounding across machines, and they are at the paper's level (K=5 MSE after 10 steps below 0.35 + its CI)."""
    entry = ZOO / "sinusoid"
    committed = json.loads((entry / "eval.json").read_text())
    run = _copy(entry, tmp_path)
    assert main(["eval", str(run)]) == 0
    fresh = json.loads((run / "eval.json").read_text())
    key = [(r["shots"], r["steps"]) for r in committed["rows"]]
    assert [(r["shots"], r["steps"]) for r in fresh["rows"]] == key
    for old, new in zip(committed["rows"], fresh["rows"], strict=True):
        assert new["mean"] == pytest.approx(old["mean"], rel=1e-3)
    k5 = {r["steps"]: r for r in fresh["rows"] if r["shots"] == 5}
    assert k5[10]["mean"] - k5[10]["ci95"] < 0.35 and k5[1]["mean"] < k5[0]["mean"] / 3


@pytest.mark.mujoco
def test_the_halfcheetah_dir_zoo_policy_evaluates_on_a_fresh_clone(tmp_path: Path, one_thread) -> None:
    """``rlmaml eval zoo/halfcheetah-dir`` (a MuJoCo entry) runs with no training, at small sizes: it evaluates the
    shipped best checkpoint (#165) and records every goal's direction and returns."""
    pytest.importorskip("mujoco")
    run = _copy(ZOO / "halfcheetah-dir", tmp_path)
    assert main(["eval", str(run), "eval.goals=2", "eval.trajectories=4", "eval.rl_steps=1",
                 "--backend", "local"]) == 0
    res = json.loads((run / "eval.json").read_text())
    assert res["checkpoint_iteration"] == 165
    assert [(r["steps"], r["goals"]) for r in res["rows"]] == [(0, 2), (1, 2)]
    assert {abs(t["direction"]) for t in res["per_goal"]["tasks"]} == {1.0}
    assert torch.isfinite(torch.tensor(res["per_goal"]["returns"])).all()


@pytest.mark.slow
def test_the_omniglot_zoo_model_reproduces_its_eval_json(tmp_path: Path, one_thread, omniglot_source,
                                                           monkeypatch) -> None:
    """``rlmaml eval zoo/omniglot-5w1s`` with the images found through ``$RLMAML_DATA`` (600 test tasks of the
    paper's 423 test characters) gives the committed accuracies, up to float rounding across machines."""
    root, cache = omniglot_source
    monkeypatch.setenv("RLMAML_DATA", str(root))
    entry = ZOO / "omniglot-5w1s"
    committed = json.loads((entry / "eval.json").read_text())
    run = _copy(entry, tmp_path)
    assert main(["eval", str(run), f"omniglot.cache_dir={cache}"]) == 0
    fresh = json.loads((run / "eval.json").read_text())
    key = [(r["shots"], r["steps"], r["metric"]) for r in committed["rows"]]
    assert [(r["shots"], r["steps"], r["metric"]) for r in fresh["rows"]] == key
    for old, new in zip(committed["rows"], fresh["rows"], strict=True):
        assert new["mean"] == pytest.approx(old["mean"], rel=1e-3)
    accuracy = {r["steps"]: r["mean"] for r in fresh["rows"] if r["metric"] == "accuracy"}
    assert accuracy[0] < 0.25 and accuracy[3] > 0.97  # chance before adapting; the paper's level after
