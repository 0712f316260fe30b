"""Specifications of the ``rlmaml`` command line: help, presets, train/eval, and one-line usage errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlmaml.cli import main
from rlmaml.config import build_config, field_help
from rlmaml.runs import RunDir


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch) -> Path:
    """Run in an empty folder, so that a default run directory (./runs/...) would show up there."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


_FAST = ["run.device=cpu", "optim.meta_batch=5", "run.log_every=100000"]


# ---- usage errors --------------------------------------------------------------------------------------------------

BAD_TRAIN = [
    (["nope-preset"], "nope-preset"),
    (["sinusoid", "maml.nope=1"], "maml.nope"),
    (["sinusoid", "run.iterations=abc"], "run.iterations"),
    (["sinusoid", "optim.meta_batch=0"], "optim.meta_batch"),
    (["sinusoid", "run.iterations=-1"], "run.iterations"),
    (["sinusoid", "run.iterations=0"], "run.iterations"),
    (["sinusoid", "maml.inner_lr=0"], "maml.inner_lr"),
    (["sinusoid", "maml.inner_lr=-0.5"], "maml.inner_lr"),
    (["sinusoid", "optim.meta_lr=-1"], "optim.meta_lr"),
    (["sinusoid", "optim.meta_lr=0"], "optim.meta_lr"),
    (["sinusoid", "iterations"], "iterations"),  # no '='
    (["sinusoid", "run.device=tpu"], "run.device"),
]


@pytest.mark.parametrize(("args", "named"), BAD_TRAIN, ids=[" ".join(a) for a, _ in BAD_TRAIN])
def test_bad_train_input_is_one_line_exit_2_before_any_work(args, named, cwd: Path, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "would-be-run"
    preset, *bad = args
    # The bad override comes last (later overrides win); a tiny run.iterations bounds the damage of a miss.
    code = main(["train", preset, f"run.dir={run_dir}", "run.iterations=2", *_FAST, *bad])
    out, err = capsys.readouterr()
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("rlmaml: error: ")
    assert named in err
    assert out == ""
    assert not run_dir.exists()
    assert list(cwd.iterdir()) == []


def test_bad_input_without_run_dir_creates_no_default_runs_folder(cwd: Path, capsys) -> None:
    assert main(["train", "sinusoid", "optim.meta_batch=0"]) == 2
    assert "optim.meta_batch" in capsys.readouterr().err
    assert list(cwd.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_run_device_cuda_without_a_gpu_is_a_usage_error_before_the_run_dir_exists(cwd, tmp_path, capsys) -> None:
    run_dir = tmp_path / "gpu-run"
    assert main(["train", "sinusoid", f"run.dir={run_dir}", "run.device=cuda"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "run.device" in err
    assert not run_dir.exists()


def test_resume_of_a_directory_that_does_not_exist_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no-such-run"
    assert main(["train", "--resume", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and str(missing) in err and "does not exist" in err
    assert not missing.exists()


def test_resume_of_a_run_dir_with_no_checkpoint_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    run = RunDir.create(build_config("sinusoid", [f"run.dir={tmp_path / 'empty-run'}"]))
    assert main(["train", "--resume", str(run.path), "run.iterations=5"]) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1, err
    assert str(run.path) in err and "no checkpoint" in err
    assert run.metrics() == [] and not run.has_checkpoint()


def test_a_second_trainer_on_a_run_dir_in_use_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    run = RunDir.create(build_config("sinusoid", [f"run.dir={tmp_path / 'busy-run'}"]))
    with run.exclusive():  # another `rlmaml train` holds it
        assert main(["train", "sinusoid", f"run.dir={tmp_path / 'busy-run'}", "run.iterations=2"]) == 2
    _, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 2, err  # "run directory ..." then the one-line error
    assert "in use by another training process" in err and run.metrics() == []


def test_resume_of_a_folder_that_is_not_a_run_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["train", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not an rlmaml run directory" in err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["train"], "preset"),
        (["train", "sinusoid", "--resume", "somewhere"], "--resume"),
        (["eval", "definitely/not/here"], "definitely/not/here"),
    ],
)
def test_other_usage_mistakes_are_one_line_exit_2(argv, named, cwd: Path, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and named in err
    assert list(cwd.iterdir()) == []


# ---- help and presets ----------------------------------------------------------------------------------------------


def test_top_level_help_exits_0_and_names_the_commands_and_presets(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("train", "eval", "presets", "sinusoid"):
        assert word in out


def test_train_help_exits_0_and_lists_every_config_key(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.split()}
    keys = [key for key, _, _ in field_help()]
    missing = [key for key in keys if key not in listed]
    assert missing == []
    assert "--resume" in out


def test_presets_lists_the_shipped_presets(capsys) -> None:
    assert main(["presets"]) == 0
    names = capsys.readouterr().out.split()
    assert "sinusoid" in names and "sinusoid-pretrained" in names


def test_the_console_script_exits_with_the_codes_of_main(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("rlmaml")
    if not script.is_file():
        pytest.skip("the rlmaml console script is not installed beside this interpreter")
    ok = subprocess.run([str(script), "presets"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "sinusoid" in ok.stdout.split()
    bad = subprocess.run([str(script), "train", "sinusoid", "maml.inner_lr=0", f"run.dir={tmp_path / 'r'}"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "maml.inner_lr" in bad.stderr
    assert not (tmp_path / "r").exists()


# ---- train, then eval ----------------------------------------------------------------------------------------------


def test_train_then_eval_writes_eval_json_csv_and_png(tmp_path: Path, capsys, one_thread) -> None:
    run_dir = tmp_path / "run"
    assert main(["train", "sinusoid", "run.iterations=20", f"run.dir={run_dir}", "run.checkpoint_every=10",
                 *_FAST]) == 0
    err = capsys.readouterr().err
    assert str(run_dir) in err and f"rlmaml eval {run_dir}" in err
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file()
    assert len(RunDir.open(run_dir).metrics()) == 20

    assert main(["eval", str(run_dir), "eval.test_tasks=20"]) == 0
    out = capsys.readouterr().out
    result = json.loads((run_dir / "eval.json").read_text())
    assert json.loads(out) == result["summary"]
    assert result["experiment"] == "sinusoid" and result["checkpoint_iteration"] == 19
    assert result["config"]["eval"]["test_tasks"] == 20
    rows = result["rows"]
    assert {(r["shots"], r["steps"]) for r in rows} == {(k, s) for k in (5, 10, 20) for s in (0, 1, 5, 10)}
    assert all(r["metric"] == "mse" and r["tasks"] == 20 and r["mean"] >= 0 and r["ci95"] >= 0 for r in rows)
    with open(run_dir / "eval.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows) and set(table[0]) >= {"shots", "steps", "metric", "mean", "ci95"}
    assert (run_dir / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overrides_may_follow_options(tmp_path: Path, capsys, one_thread) -> None:
    run_dir = tmp_path / "run"
    assert main(["train", "sinusoid", "--runs-dir", str(tmp_path), "run.iterations=3", f"run.dir={run_dir}",
                 "run.checkpoint_every=3", *_FAST]) == 0
    assert len(RunDir.open(run_dir).metrics()) == 3


@pytest.mark.parametrize("argv", [["bogus"], ["train", "--nope"], ["eval"], ["train", "sinusoid", "--backend", "local",
                                                                            "stray"]])
def test_argparse_mistakes_are_one_line_with_exit_code_2(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rlmaml: error:")


def test_a_time_limit_stops_training_with_a_checkpoint(tmp_path: Path, one_thread) -> None:
    run_dir = tmp_path / "run"
    code = main(["train", "sinusoid", "run.iterations=1000000", "run.time_limit_min=0.005", f"run.dir={run_dir}"])
    assert code == 0
    run = RunDir.open(run_dir)
    done = len(run.metrics())
    assert 0 < done < 1_000_000
    assert run.load_checkpoint()["iteration"] == done - 1
