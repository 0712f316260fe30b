"""Crash and resume of a meta-RL run, end to end through the ``rlmaml`` command.

A ``nav2d`` run (``--backend local``, CPU) is SIGKILLed at a chosen moment by the test hook
``RLMAML_TEST_KILL_AT=<stage>:<iteration>`` (:func:`rlmaml.kill_hook.kill_point`): while sampling, during the outer
step, and between a checkpoint's ``.pt`` and its manifest. ``rlmaml train --resume RUN_DIR`` must then finish
with metrics and parameters identical to an uninterrupted run of the same seed (timing fields aside).
Also here: resuming past a corrupted latest checkpoint, PPO's Adam state across a resume, and configs that
try to run code through YAML tags. Unit-level checkpoint damage is in tests/test_runs.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlmaml.cli import main
from rlmaml.config import build_config
from rlmaml.kill_hook import KILL_ENV
from rlmaml.runs import RunDir

ITERATIONS = 6
SMALL = ["optim.meta_batch=4", "rl.trajectories=6", "rl.horizon=25", f"run.iterations={ITERATIONS}",
         "run.checkpoint_every=2", "run.log_every=1000", "run.device=cpu", "run.seed=3"]
"""Checkpoints after iterations 1, 3 and 5."""


def _env(kill_at: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    # One intra-op thread in every process, so that reductions run in one order in all of them.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if kill_at:
        env[KILL_ENV] = kill_at
    return env


def _rlmaml(args: list[str], cwd: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlmaml.cli", *args], cwd=cwd, env=_env(kill_at),
                          capture_output=True, text=True, timeout=300)


def _train(run_dir: Path, cwd: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    return _rlmaml(["train", "nav2d", *SMALL, f"run.dir={run_dir}", "--backend", "local"], cwd, kill_at)


def _resume(run_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    return _rlmaml(["train", "--resume", str(run_dir)], cwd)


def _is_timing(key: str) -> bool:
    return key.endswith("_time_s") or key == "env_steps_per_s"


def _metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if not _is_timing(k)} for row in RunDir.open(run_dir).metrics()]


def _assert_params_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _assert_same_run(reference: Path, resumed: Path) -> None:
    """Every non-timing metric of every iteration, and the final and best checkpoints, are identical."""
    ref_rows, rows = _metrics(reference), _metrics(resumed)
    assert [r["iteration"] for r in rows] == list(range(ITERATIONS))
    assert rows == ref_rows
    ref, res = RunDir.open(reference), RunDir.open(resumed)
    a, b = ref.load_checkpoint(), res.load_checkpoint()
    assert a["iteration"] == b["iteration"] == ITERATIONS - 1
    _assert_params_equal(a["learner"]["params"], b["learner"]["params"])
    assert a["learner"]["version"] == b["learner"]["version"]
    assert a["best_return"] == b["best_return"] and a["rng"] == b["rng"]
    best_a, best_b = ref.load_checkpoint("best"), res.load_checkpoint("best")
    assert best_a["iteration"] == best_b["iteration"]
    _assert_params_equal(best_a["learner"]["params"], best_b["learner"]["params"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted run of the same seed and sizes."""
    work = tmp_path_factory.mktemp("reference")
    proc = _train(work / "run", work)
    assert proc.returncode == 0, proc.stderr
    return work / "run"


def _killed_run(tmp_path: Path, kill_at: str) -> Path:
    run_dir = tmp_path / "run"
    proc = _train(run_dir, tmp_path, kill_at)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    return run_dir


def _last_good_iteration(run_dir: Path) -> int:
    return int(RunDir.open(run_dir).load_checkpoint(warn=lambda msg: None)["iteration"])


# ---- SIGKILL at a chosen moment, then --resume ---------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_while_sampling_then_resume_equals_an_uninterrupted_run(reference: Path, tmp_path: Path) -> None:
    run_dir = _killed_run(tmp_path, "sampling:3")
    assert _last_good_iteration(run_dir) == 1
    assert [r["iteration"] for r in RunDir.open(run_dir).metrics()] == [0, 1, 2]  # iteration 2 is redone
    proc = _resume(run_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    _assert_same_run(reference, run_dir)


@pytest.mark.slow
def test_sigkill_during_the_outer_step_then_resume_equals_an_uninterrupted_run(reference: Path, tmp_path: Path) -> None:
    run_dir = _killed_run(tmp_path, "outer_step:4")
    assert _last_good_iteration(run_dir) == 3
    assert [r["iteration"] for r in RunDir.open(run_dir).metrics()] == [0, 1, 2, 3]
    proc = _resume(run_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    _assert_same_run(reference, run_dir)


@pytest.mark.slow
def test_sigkill_between_checkpoint_data_and_manifest_then_resume_uses_the_previous_one(
        reference: Path, tmp_path: Path) -> None:
    run_dir = _killed_run(tmp_path, "checkpoint_write:3")
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "ckpt-00000003.pt").is_file() and not (ckpts / "ckpt-00000003.json").exists()
    assert _last_good_iteration(run_dir) == 1
    assert [r["iteration"] for r in RunDir.open(run_dir).metrics()] == [0, 1, 2, 3]  # 2 and 3 are dropped, redone
    proc = _resume(run_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    _assert_same_run(reference, run_dir)


@pytest.mark.slow
def test_resume_past_a_corrupted_latest_checkpoint_warns_and_continues_from_the_previous(
        reference: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    latest = run_dir / "checkpoints" / "ckpt-00000005.pt"
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0x01
    latest.write_bytes(bytes(data))
    proc = _resume(run_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("rlmaml: warning:")]
    assert len(warnings) == 1 and "ckpt-00000005" in warnings[0] and "checksum" in warnings[0]
    # Iterations 4 and 5 were recomputed from the checkpoint of iteration 3 and give the same numbers.
    _assert_same_run(reference, run_dir)


# ---- SIGTERM / SIGINT: a clean stop with a checkpoint, then --resume -------------------------------------------------


def _signalled_run(tmp_path: Path, signum: int, after_rows: int) -> tuple[Path, subprocess.CompletedProcess]:
    """Start a run, send ``signum`` once ``after_rows`` iterations are in metrics.jsonl, wait for it to exit."""
    import time

    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "rlmaml.cli", "train", "nav2d", *SMALL, f"run.dir={run_dir}",
                             "--backend", "local"], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= after_rows:
            proc.send_signal(signum)
            break
        time.sleep(0.01)
    out, err = proc.communicate(timeout=240)
    return run_dir, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_writes_a_checkpoint_exits_nonzero_in_one_line_and_resume_is_exact(
        reference: Path, tmp_path: Path, signum: int) -> None:
    run_dir, proc = _signalled_run(tmp_path, signum, after_rows=1)
    assert proc.returncode == 128 + signum, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "*** SIGTERM received" not in proc.stderr  # Ray's stack dump
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"rlmaml: {signal.Signals(signum).name}: stopped after ") and \
        f"resume with: rlmaml train --resume {run_dir}" in last, proc.stderr
    done = len(RunDir.open(run_dir).metrics())
    assert 1 <= done < ITERATIONS
    assert _last_good_iteration(run_dir) == done - 1  # every finished iteration is in the checkpoint
    proc = _resume(run_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    _assert_same_run(reference, run_dir)


# ---- PPO: Adam's state travels with the checkpoint ---------------------------------------------------------------




def test_ppo_resume_restores_adam_state_and_continues_exactly(tmp_path: Path, capsys, one_thread) -> None:
    tiny = ["optim.meta_batch=3", "rl.trajectories=4", "rl.horizon=10", "rl.hidden=[16]", "rl.outer=ppo",
            "rl.ppo_epochs=2", "run.iterations=4", "run.checkpoint_every=2", "run.log_every=1000", "run.device=cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "nav2d", *tiny, f"run.dir={one}", "--backend", "local"]) == 0
    assert main(["train", "nav2d", *tiny, "run.iterations=2", f"run.dir={two}", "--backend", "local"]) == 0
    assert RunDir.open(two).load_checkpoint()["learner"]["optimizer"]["state"]  # Adam's moments are saved
    assert main(["train", "--resume", str(two), "run.iterations=4"]) == 0
    assert _metrics(one) == _metrics(two)
    a, b = RunDir.open(one).load_checkpoint()["learner"], RunDir.open(two).load_checkpoint()["learner"]
    _assert_params_equal(a["params"], b["params"])
    for i, state in a["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[name], b["optimizer"]["state"][i][name])


def test_a_full_disk_at_a_checkpoint_stops_the_run_exit_2_and_resume_continues_exactly(tmp_path: Path, capsys,
                                                                                         monkeypatch, one_thread) -> None:
    import errno

    import rlmaml.runs as runs

    tiny = ["optim.meta_batch=3", "rl.trajectories=4", "rl.horizon=10", "rl.hidden=[16]", "run.iterations=4",
            "run.checkpoint_every=1", "run.log_every=1000", "run.device=cpu", "rl.backend=local"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "nav2d", *tiny, f"run.dir={one}"]) == 0
    save = RunDir.save_checkpoint

    def disk_full_at_iteration_2(self, state, iteration, keep=3, tag=None):
        if iteration == 2 and tag is None:
            def enospc(fd):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            with monkeypatch.context() as m:
                m.setattr(runs.os, "fsync", enospc)
                return save(self, state, iteration, keep, tag)
        return save(self, state, iteration, keep, tag)

    monkeypatch.setattr(RunDir, "save_checkpoint", disk_full_at_iteration_2)
    capsys.readouterr()
    assert main(["train", "nav2d", *tiny, f"run.dir={two}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rlmaml: error: could not write checkpoint ckpt-00000002")
    assert "No space left on device" in err[-1] and "previous checkpoint is intact" in err[-1]
    monkeypatch.setattr(RunDir, "save_checkpoint", save)
    assert _last_good_iteration(two) == 1
    assert main(["train", "--resume", str(two)]) == 0
    assert _metrics(one) == _metrics(two)
    _assert_params_equal(RunDir.open(one).load_checkpoint()["learner"]["params"],
                         RunDir.open(two).load_checkpoint()["learner"]["params"])


# ---- configs are read with yaml.safe_load: a tag that would run code is refused ---------------------------------

EVIL_YAML = "experiment: rl\nrun: !!python/object/apply:os.system ['touch {marker}']\n"


def test_resume_refuses_a_config_yaml_with_a_python_tag_exit_2_and_runs_nothing(tmp_path: Path, capsys) -> None:
    run = RunDir.create(build_config("nav2d", [f"run.dir={tmp_path / 'run'}"]))
    run.save_checkpoint({"kind": "rl"}, 0)
    marker = tmp_path / "pwned"
    (run.path / "config.yaml").write_text(EVIL_YAML.format(marker=marker))
    assert main(["train", "--resume", str(run.path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("rlmaml: error:") and "config.yaml" in err and "python/object" in err
    assert not marker.exists()
    assert run.metrics() == []


def test_a_preset_file_with_a_python_tag_is_refused_exit_2_and_runs_nothing(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(EVIL_YAML.format(marker=marker))
    assert main(["train", str(evil), f"run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("rlmaml: error:") and "evil.yaml" in err
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_the_package_loads_yaml_only_with_safe_load_and_torch_only_with_weights_only() -> None:
    import ast

    import envs
    import rlmaml

    calls = 0
    for root in (Path(rlmaml.__file__).parent, Path(envs.__file__).parent):
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name)):
                    continue
                module, name = node.func.value.id, node.func.attr
                assert (module, name) not in {("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"),
                                              ("yaml", "load_all"), ("pickle", "load"), ("pickle", "loads")}, path
                if (module, name) == ("torch", "load"):
                    calls += 1
                    assert any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                               for k in node.keywords), (path, node.lineno)
    assert calls >= 1  # the checkpoint loader itself


def test_the_kill_hook_is_a_no_op_unless_its_variable_names_the_stage_and_iteration(monkeypatch) -> None:
    from rlmaml.kill_hook import kill_point

    monkeypatch.delenv(KILL_ENV, raising=False)
    kill_point("sampling", 3)  # would end this test process if it fired
    monkeypatch.setenv(KILL_ENV, "sampling:3")
    kill_point("sampling", 4)
    kill_point("outer_step", 3)
    monkeypatch.setenv(KILL_ENV, json.dumps("sampling:3"))  # not the exact form: ignored
    kill_point("sampling", 3)


# ---- with Ray: the same numbers on the CPU (faults_* counters restart with the process) ------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_a_resumed_ray_run_gives_the_numbers_of_an_uninterrupted_one_on_the_cpu(ray_session, tmp_path,
                                                                                one_thread) -> None:
    from rlmaml.rl.trainer import train_rl

    tiny = ["rl.backend=ray", "rl.num_workers=2", "optim.meta_batch=4", "rl.trajectories=4", "rl.horizon=20",
            "rl.hidden=[16,16]", "run.checkpoint_every=2", "run.log_every=1000", "run.device=cpu"]
    one_cfg = build_config("nav2d", [*tiny, "run.iterations=4", f"run.dir={tmp_path / 'one'}"])
    one = RunDir.create(one_cfg)
    theta_one = train_rl(one_cfg, one).params
    two = RunDir.create(build_config("nav2d", [*tiny, "run.iterations=2", f"run.dir={tmp_path / 'two'}"]))
    train_rl(two.config(), two)
    two_cfg = two.config(["run.iterations=4"])
    theta_two = train_rl(two_cfg, two, two.load_checkpoint()).params  # new actors, as after a crash
    for k in theta_one:
        assert torch.equal(theta_one[k], theta_two[k]), k

    def comparable(run: RunDir) -> list[dict]:
        return [{k: v for k, v in r.items() if not (_is_timing(k) or k.startswith("faults_"))} for r in run.metrics()]

    assert comparable(one) == comparable(two)
    assert [r["iteration"] for r in two.metrics()] == [0, 1, 2, 3]
