"""Reliability round 2 (issue 19): each test injects one fault and checks that it ends in one line and loses nothing.

1. A refused trainer never touches a live run's record; a resume records its config; a resume with another seed
   is refused. 2. I/O faults (full disk, read-only folder, failing picture, damaged config/checkpoint/metrics).
3. Bounded readers for config.yaml and goals files. 4. Env faults as a policy (``rl.on_task_error``), timeouts on
   the local backend, Ray's automatic timeout. 5. What the embedded Ray exposes. 6. Ctrl-C, a deleted manifest,
   ``faults_*`` per iteration. Runs are tiny nav2d ones on ``--backend local`` (CPU).
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import signal
import stat
import time
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces

import rlmaml.runs as runs_module
from rlmaml.checkpoints import CHECKPOINT_FORMAT, load_verified, sha256_bytes
from rlmaml.cli import main
from rlmaml.config import ConfigError, build_config
from rlmaml.runs import RunDir, RunError

TINY = ["--backend", "local", "optim.meta_batch=3", "rl.trajectories=4", "rl.horizon=10", "rl.hidden=[16]",
        "run.iterations=3", "run.checkpoint_every=1", "run.log_every=1000", "run.device=cpu"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One torch thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny nav2d run of 3 iterations with a checkpoint after each; tests work on copies (:func:`_copy`)."""
    path = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "nav2d", *TINY, f"run.dir={path}"]) == 0
    return path


def _copy(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(("rlmaml: error:", "rlmaml: stopped:"))]


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = _errors(err)
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# ---- 1. a refused trainer, the record of a resume, the seed of a resume ------------------------------------------

def test_a_refused_second_trainer_leaves_the_live_runs_config_as_it_was(tmp_path, capsys) -> None:
    live = RunDir.create(build_config("nav2d", [*TINY[2:], f"run.dir={tmp_path / 'run'}"]))
    before = (live.path / "config.yaml").read_bytes()
    with live.exclusive():  # the first trainer, before its first checkpoint
        assert main(["train", "nav2d", *TINY, f"run.dir={live.path}", "run.seed=7"]) == 2
    assert "in use by another training process" in _one_error(capsys)
    assert (live.path / "config.yaml").read_bytes() == before
    assert sorted(p.name for p in live.path.iterdir()) == ["checkpoints", "config.yaml"]


def test_a_resume_records_its_resolved_config_and_overrides(trained, tmp_path) -> None:
    run = RunDir.open(_copy(trained, tmp_path))
    assert main(["train", "--resume", str(run.path), "run.iterations=4"]) == 0
    assert run.config().run.iterations == 4  # a later plain --resume continues with what this one ran
    (entry,) = [json.loads(line) for line in (run.path / "resumes.jsonl").read_text().splitlines()]
    assert entry["overrides"] == ["run.iterations=4"] and entry["changed"] == {"run.iterations": [3, 4]}
    assert entry["checkpoint_iteration"] == 2
    assert [r["iteration"] for r in run.metrics()] == [0, 1, 2, 3]


def test_a_resume_with_another_seed_than_its_checkpoint_is_refused_in_one_line(trained, tmp_path, capsys) -> None:
    path = _copy(trained, tmp_path)
    metrics = (path / "metrics.jsonl").read_bytes()
    assert main(["train", "--resume", str(path), "run.seed=3", "run.iterations=4"]) == 2
    line = _one_error(capsys)
    assert "run.seed=3" in line and "seed 0" in line and "given on the command line" in line
    assert (path / "metrics.jsonl").read_bytes() == metrics and RunDir.open(path).config().run.seed == 0


# ---- 2. I/O faults ------------------------------------------------------------------------------------------------

def _metrics_fd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl")
    except OSError:
        return False


def test_a_full_disk_mid_line_leaves_no_torn_metrics_line(tmp_path, monkeypatch) -> None:
    run = RunDir.create(build_config("sinusoid", [f"run.dir={tmp_path / 'run'}"]))
    run.log({"iteration": 0, "meta_loss": 1.0})
    before = run.metrics_path.read_bytes()
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:  # what a filling disk does: a short write
        return real_write(fd, data[: len(data) // 2]) if _metrics_fd(fd) else real_write(fd, data)

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(RunError, match="metrics.jsonl") as info:
        run.log({"iteration": 1, "meta_loss": 0.5})
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert run.metrics_path.read_bytes() == before


def test_a_full_disk_during_training_is_one_line_and_resume_continues(trained, tmp_path, monkeypatch, capsys) -> None:
    path = tmp_path / "run"
    real_write, lines = os.write, {"n": 0}

    def full_at_the_third_line(fd: int, data: bytes) -> int:
        if _metrics_fd(fd):
            lines["n"] += 1
            if lines["n"] == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_at_the_third_line)
    assert main(["train", "nav2d", *TINY, f"run.dir={path}"]) == 2
    line = _one_error(capsys)
    assert "metrics.jsonl" in line and "No space left on device" in line
    monkeypatch.undo()
    run = RunDir.open(path)
    assert [r["iteration"] for r in run.metrics()] == [0, 1]
    assert (path / "metrics.csv").read_text().count("\n") == 3  # header and two rows, not truncated to 0 bytes
    assert main(["train", "--resume", str(path)]) == 0
    assert [r["iteration"] for r in run.metrics()] == [0, 1, 2]


def test_a_failed_csv_rebuild_keeps_the_previous_csv(tmp_path, monkeypatch) -> None:
    run = RunDir.create(build_config("sinusoid", [f"run.dir={tmp_path / 'run'}"]))
    run.log({"iteration": 0, "meta_loss": 1.0})
    before = run.write_csv().read_bytes()
    run.log({"iteration": 1, "meta_loss": 0.5})

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RunError, match="metrics.csv.*No space left on device"):
        run.write_csv()
    monkeypatch.undo()
    assert (run.path / "metrics.csv").read_bytes() == before
    assert not [p for p in run.path.iterdir() if ".tmp" in p.name]


def test_a_read_only_run_dir_is_one_line_at_resume_naming_the_lock(trained, tmp_path, monkeypatch, capsys) -> None:
    path = _copy(trained, tmp_path)
    if os.geteuid() == 0:  # root writes anywhere: make opening .lock fail as on a read-only folder
        real_open = open

        def read_only(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if str(file).endswith(".lock"):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(runs_module, "open", read_only, raising=False)
    else:
        path.chmod(0o555)
    try:
        assert main(["train", "--resume", str(path)]) == 2
    finally:
        path.chmod(0o755)
    line = _one_error(capsys)
    assert str(path / ".lock") in line and "writable" in line


def test_eval_writes_eval_json_before_its_pictures_and_a_failing_picture_is_one_line(trained, tmp_path, monkeypatch,
                                                                                     capsys) -> None:
    import rlmaml.plots as plots

    path = _copy(trained, tmp_path)
    seen: list[bool] = []

    def full_disk(*args: Any, **kwargs: Any) -> Path:
        seen.append((path / "eval.json").is_file())
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(plots, "plot_nav_trajectories", full_disk)
    assert main(["eval", str(path), "eval.goals=2", "eval.rl_steps=1", "eval.trajectories=4"]) == 2
    line = _one_error(capsys)
    assert seen == [True] and "nav_trajectories.png" in line and "eval.json" in line
    assert [r["steps"] for r in json.loads((path / "eval.json").read_text())["rows"]] == [0, 1]


@pytest.mark.parametrize("content", [b"", b"\x00\xff\xfe binary \x80"], ids=["empty", "binary"])
def test_an_empty_or_binary_config_yaml_is_one_line(trained, tmp_path, content, capsys) -> None:
    path = _copy(trained, tmp_path)
    (path / "config.yaml").write_bytes(content)
    for argv in (["train", "--resume", str(path)], ["eval", str(path)]):
        assert main(argv) == 2
        assert "config.yaml" in _one_error(capsys)


def _forge_latest(path: Path, change) -> None:
    """Rewrite the newest checkpoint (iteration 2) with ``change(state)``, its manifest matching the new bytes."""
    pt = path / "checkpoints" / "ckpt-00000002.pt"
    state = load_verified(pt.with_suffix(".json"))
    change(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    pt.write_bytes(data)
    manifest = {"format": CHECKPOINT_FORMAT, "iteration": 2, "file": pt.name, "bytes": len(data),
                "sha256": sha256_bytes(data), "time": 0.0}
    pt.with_suffix(".json").write_text(json.dumps(manifest))


def _first_param(state: dict) -> str:
    return next(iter(state["learner"]["params"]))


WRONG = {
    "missing-params": (lambda s: s["learner"].pop("params"), "without 'learner.params'"),
    "nan-theta": (lambda s: s["learner"]["params"][_first_param(s)].fill_(math.nan), "non-finite"),
    "wrong-shape": (lambda s: s["learner"]["params"].__setitem__(_first_param(s), torch.zeros(3, 3)), "shape"),
}


@pytest.mark.parametrize("kind", list(WRONG))
def test_a_checkpoint_with_a_valid_checksum_but_the_wrong_structure_falls_back(trained, tmp_path, kind,
                                                                               capsys) -> None:
    path = _copy(trained, tmp_path)
    change, named = WRONG[kind]
    _forge_latest(path, change)
    assert main(["train", "--resume", str(path), "run.iterations=4"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("rlmaml: warning:") and "ckpt-00000002" in line]
    assert len(warnings) == 1 and named in warnings[0], err
    run = RunDir.open(path)
    assert [r["iteration"] for r in run.metrics()] == [0, 1, 2, 3]  # iteration 2 redone from checkpoint 1
    assert json.loads((path / "resumes.jsonl").read_text())["checkpoint_iteration"] == 1


def test_a_corrupt_metrics_line_before_the_last_is_refused_at_resume_naming_it(trained, tmp_path, capsys) -> None:
    path = _copy(trained, tmp_path)
    lines = (path / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    before = (path / "metrics.jsonl").read_bytes()
    assert main(["train", "--resume", str(path)]) == 2
    assert "metrics.jsonl line 2" in _one_error(capsys)
    assert (path / "metrics.jsonl").read_bytes() == before  # kept for the user to fix
    warned: list[str] = []
    assert [r["iteration"] for r in RunDir.open(path).metrics(warn=warned.append)] == [0, 2]
    assert len(warned) == 1 and "line 2" in warned[0]  # readers (plots) skip it, saying so


# ---- 3. bounded readers -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"- a\n- b\n", b"\x00\xff binary"], ids=["a-list", "binary"])
def test_plot_and_report_read_config_yaml_within_the_limits(tmp_path, content) -> None:
    from rlmaml.plots import plot_learning_curves
    from rlmaml.report import render_report

    run = RunDir.create(build_config("sinusoid", [f"run.dir={tmp_path / 'run'}"]))
    for it in range(3):
        run.log({"iteration": it, "meta_loss": 1.0 / (it + 1)})
    rows = [{"shots": 5, "steps": s, "metric": "mse", "mean": 1.0, "ci95": 0.1, "tasks": 10} for s in (0, 1)]
    (run.path / "eval.json").write_text(json.dumps({"experiment": "sinusoid", "rows": rows, "summary": {},
                                                    "config": {"run": {"name": "sinusoid"}}}))
    (run.path / "config.yaml").write_bytes(content)
    assert plot_learning_curves([run], tmp_path / "curves.png").stat().st_size > 1000
    assert "rlmaml eval" in render_report([run])


def test_the_goals_file_is_read_within_the_yaml_limits(tmp_path) -> None:
    import envs
    from rlmaml.rl.evaluation.evaluate import load_goals_file

    path = tmp_path / "goals.yaml"
    path.write_text("- &g {goal: [0.1, 0.2]}\n" + "- *g\n" * 150)
    with pytest.raises(ConfigError, match="aliases") as info:
        load_goals_file(path, envs.task_distribution("rlmaml/Navigation2D-v0"))
    assert "goals.yaml" in str(info.value) and "\n" not in str(info.value)


# ---- 4. env faults as a policy --------------------------------------------------------------------------------------

class FaultLineEnv(gymnasium.Env):
    """Walk along a line to a goal; a task's ``fault`` makes it raise, return NaN, or hang (at reset)."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._task: dict = {"goal": 0.5}
        self._x, self._t = 0.0, 0

    def set_task(self, task: dict) -> None:
        self._task = dict(task)

    def get_task(self) -> dict:
        return dict(self._task)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._x, self._t = 0.0, 0
        if self._task.get("fault") == "hang":
            time.sleep(20.0)
        return np.array([self._x], dtype=np.float32), {}

    def step(self, action):
        self._t += 1
        self._x += 0.1 * float(np.clip(action, -1.0, 1.0)[0])
        fault = self._task.get("fault") if self._t == 3 else None
        if fault == "raise":
            raise ValueError("injected env failure")
        reward = math.nan if fault == "nan" else -abs(self._x - self._task["goal"])
        return np.array([self._x], dtype=np.float32), reward, False, False, {}


class FaultGoals:
    """Goals in [-1, 1]; ``plan`` maps (iteration, task index) to the fault that task carries."""

    plan: dict[tuple[int, int], str] = {}

    def __init__(self) -> None:
        self.calls = 0  # the trainer samples once per iteration, from iteration 0

    def sample(self, n: int, rng: np.random.Generator) -> list[dict]:
        iteration, self.calls = self.calls, self.calls + 1
        tasks = [{"goal": float(g)} for g in rng.uniform(-1.0, 1.0, size=n)]
        for (it, index), fault in self.plan.items():
            if it == iteration:
                tasks[index]["fault"] = fault
        return tasks


gymnasium.register(id="round2/FaultLine-v0", entry_point=FaultLineEnv, max_episode_steps=10)
FAULT_ENV = ["rl.env=round2/FaultLine-v0", "rl.task_distribution=test_reliability_round2:FaultGoals",
             "optim.meta_batch=4"]


def _theta(path: Path, iteration: int) -> dict[str, torch.Tensor]:
    return load_verified(path / "checkpoints" / f"ckpt-{iteration:08d}.json")["learner"]["params"]


@pytest.mark.parametrize("fault", ["nan", "raise"])
def test_skip_task_drops_a_faulty_task_and_updates_on_the_rest(fault, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(FaultGoals, "plan", {(1, 1): fault})
    path = tmp_path / "run"
    assert main(["train", "nav2d", *TINY, *FAULT_ENV, f"run.dir={path}"]) == 0
    rows = RunDir.open(path).metrics()
    assert [r["accepted"] for r in rows] == [True, True, True]
    assert [r["tasks_skipped"] for r in rows] == [0, 1, 0]
    assert "task 1" in rows[1]["skipped_reason"] and "seed" in rows[1]["skipped_reason"]
    assert not all(torch.equal(a, b) for a, b in zip(_theta(path, 0).values(), _theta(path, 1).values(),
                                                      strict=True))  # the update went on with 3 of 4 tasks
    err = capsys.readouterr().err
    assert "Traceback" not in err and "rlmaml: iteration 1: 1 task(s) left out of the update" in err
    assert "1 task(s) were dropped" in err  # the run does not end in a plain 'done'


def test_too_few_valid_tasks_skip_the_update_and_the_failure_cap_stops_the_run(tmp_path, monkeypatch,
                                                                               capsys) -> None:
    monkeypatch.setattr(FaultGoals, "plan", {(it, i): "raise" for it in (1, 2) for i in (0, 2)})  # 2 of 4 left
    path = tmp_path / "run"
    assert main(["train", "nav2d", *TINY, *FAULT_ENV, "run.max_consecutive_failures=2", f"run.dir={path}"]) == 1
    line = _one_error(capsys)
    assert "2 consecutive updates skipped" in line
    rows = RunDir.open(path).metrics()
    assert [r["accepted"] for r in rows] == [True, False, False] and rows[1]["tasks_invalid"] == 2
    assert "2 of 4 tasks valid" in rows[1]["reason"]


def test_on_task_error_fail_ends_the_run_in_one_line_keeping_the_traceback(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(FaultGoals, "plan", {(1, 2): "raise"})
    path = tmp_path / "run"
    assert main(["train", "nav2d", *TINY, *FAULT_ENV, "rl.on_task_error=fail", f"run.dir={path}"]) == 1
    line = _one_error(capsys)
    assert "task 2" in line and "run seed 0" in line and "env seed" in line and "ValueError" in line
    assert str(path / "error.log") in line and f"--resume {path}" in line
    log = (path / "error.log").read_text()
    assert "Traceback" in log and "injected env failure" in log
    assert RunDir.open(path).load_checkpoint()["iteration"] == 0


@pytest.mark.parametrize("policy", ["skip_task", "fail"])
def test_the_local_backend_times_out_a_hung_task_naming_it(policy, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(FaultGoals, "plan", {(1, 3): "hang"})
    path = tmp_path / "run"
    start = time.monotonic()
    code = main(["train", "nav2d", *TINY, *FAULT_ENV, "run.iterations=2", "rl.task_timeout_s=1",
                 f"rl.on_task_error={policy}", f"run.dir={path}"])
    assert time.monotonic() - start < 18  # not the 20 s hang
    rows = RunDir.open(path).metrics()
    if policy == "skip_task":
        assert code == 0 and rows[1]["tasks_skipped"] == 1
        assert "task 3" in rows[1]["skipped_reason"] and "rl.task_timeout_s=1" in rows[1]["skipped_reason"]
    else:
        assert code == 1
        line = _one_error(capsys)
        assert "task 3" in line and "ran past rl.task_timeout_s=1" in line
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # the watchdog is gone


def test_the_task_timeout_is_derived_from_measured_task_times_when_left_at_0() -> None:
    from rlmaml.rl.sampling.ray_sampler import RaySampler
    from rlmaml.rl.sampling.samplers import TaskTimer, auto_task_timeout

    assert (auto_task_timeout(None), auto_task_timeout(0.5), auto_task_timeout(45.0)) == (300.0, 60.0, 450.0)
    timer = TaskTimer(0.0)
    timer.observe({"sample_time_s": 12.0})
    assert timer.seconds() == 300.0  # until the first iteration has been measured
    timer.iteration_done()
    assert timer.seconds() == 120.0 and "automatic" in timer.describe()
    sampler = object.__new__(RaySampler)  # its timeout logic, without starting Ray
    sampler.task_timeout_s, sampler.timer = 0.0, timer
    assert sampler.timeout_per_task() == 120.0
    sampler.task_timeout_s = 7.0  # an explicit value is kept as is
    assert sampler.timeout_per_task() == 7.0
    assert build_config("nav2d", ["rl.task_timeout_s=0"]).rl.task_timeout_s == 0
    with pytest.raises(ConfigError, match="rl.task_timeout_s"):
        build_config("nav2d", ["rl.task_timeout_s=-1"])
    with pytest.raises(ConfigError, match="rl.on_task_error"):
        build_config("nav2d", ["rl.on_task_error=ignore"])


@pytest.mark.ray
@pytest.mark.slow
def test_ray_skip_task_returns_the_failed_task_and_the_others(ray_session) -> None:
    import ray_test_envs

    from rlmaml.rl.learning.learner import MetaLearner
    from rlmaml.rl.sampling.ray_sampler import RaySampler
    from rlmaml.rl.sampling.rollout import task_seeds
    from rlmaml.rl.sampling.worker import TaskRequest, WorkerSpec

    spec = WorkerSpec(env_id=ray_test_envs.FAULTY_ID, horizon=20, trajectories=4, hidden=(16,), init_std=1.0,
                      min_std=1e-6, gamma=0.99, gae_lambda=1.0, inner_loss="reinforce", seed=3,
                      env_module="ray_test_envs", env_kwargs={"raise_seed": task_seeds(3, 0, 2)[0]})
    sampler = RaySampler(spec, num_workers=2, task_timeout_s=60, max_task_retries=1, tasks_per_call=2,
                         skip_failed=True)
    try:
        cfg = build_config("nav2d", ["rl.hidden=[16]", "run.seed=3"])
        weights = MetaLearner(cfg, *sampler.spaces(), torch.device("cpu")).weights()
        rng = np.random.default_rng(0)
        requests = [TaskRequest(0, i, {"goal": rng.uniform(-0.5, 0.5, 2)}, (0.1,), invalid_ok=True) for i in range(4)]
        results = {r["task_index"]: r for r in sampler.sample(weights, requests)}
    finally:
        sampler.close()
    assert sorted(results) == [0, 1, 2, 3]
    assert [results[i]["valid"] for i in range(4)] == [True, True, False, True]
    assert "task 2" in results[2]["reason"] and "injected env failure" in results[2]["reason"]


# ---- 5. exposure of the embedded Ray --------------------------------------------------------------------------------

class _Stop(Exception):
    """Raised by the fake ``ray.init`` once it has recorded its arguments."""


@pytest.fixture
def fake_ray_init(monkeypatch, tmp_path) -> list[dict]:
    """``ray.init`` recorded instead of run, HOME in a temporary folder, no Ray settings in the environment."""
    ray = pytest.importorskip("ray")
    calls: list[dict] = []

    def fake_init(*args, **kwargs):
        calls.append(kwargs)
        raise _Stop

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_enable_metrics_collection"):
        monkeypatch.delenv(var, raising=False)
    return calls


def test_the_embedded_ray_gets_a_private_token_file_and_no_metrics_export(fake_ray_init, tmp_path) -> None:
    from rlmaml.rl.ray_runtime import init_ray

    with pytest.raises(_Stop):
        init_ray("")
    token = tmp_path / "home" / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert len(token.read_text()) == 64
    assert fake_ray_init[0]["_system_config"] == {"enable_metrics_collection": False}


def test_a_token_file_others_can_read_is_narrowed_with_a_warning(fake_ray_init, tmp_path, capsys) -> None:
    from rlmaml.rl.ray_runtime import init_ray

    token = tmp_path / "home" / ".ray" / "auth_token"
    token.parent.mkdir(parents=True)
    token.write_text("a" * 64)
    token.chmod(0o644)
    with pytest.raises(_Stop):
        init_ray("")
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == "a" * 64
    assert "readable by other users" in capsys.readouterr().err


@pytest.mark.ray
def test_the_running_embedded_ray_exports_no_metrics(ray_session) -> None:
    node = ray_session._private.worker.global_worker.node
    assert node.metrics_export_port in (None, -1)


def test_the_launch_readme_says_which_ports_bind_where() -> None:
    text = (Path(__file__).resolve().parent.parent / "launch" / "README.md").read_text()
    section = text[text.index("## 5. Ports of a local run"):]
    assert "127.0.0.1" in section and "all interfaces" in section and "metrics_export_port" in section


# ---- 6. Ctrl-C, a deleted manifest, faults per iteration -------------------------------------------------------------

def test_ctrl_c_prints_the_run_path_to_resume(tmp_path, monkeypatch, capsys) -> None:
    from rlmaml.rl.trainer import RLTrainer

    iterate = RLTrainer.iterate

    def interrupted(self, it, stop):
        if it == 2:
            raise AssertionError("the loop should have stopped")
        outcome = iterate(self, it, stop)
        if it == 1:
            os.kill(os.getpid(), signal.SIGINT)  # one Ctrl-C after iteration 1's update: a checkpoint, then stop
        return outcome

    monkeypatch.setattr(RLTrainer, "iterate", interrupted)
    path = tmp_path / "run"
    assert main(["train", "nav2d", *TINY, "run.checkpoint_every=10", f"run.dir={path}"]) == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert f"resume with: rlmaml train --resume {path}" in err
    assert RunDir.open(path).load_checkpoint()["iteration"] == 1

    def twice(self, it, stop):  # a second Ctrl-C stops at once
        raise KeyboardInterrupt

    monkeypatch.setattr(RLTrainer, "iterate", twice)
    assert main(["train", "--resume", str(path)]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"rlmaml: interrupted; the last checkpoint is kept: rlmaml train --resume {path}")


def test_a_deleted_manifest_falls_back_with_a_warning(trained, tmp_path) -> None:
    path = _copy(trained, tmp_path)
    (path / "checkpoints" / "ckpt-00000002.json").unlink()
    warned: list[str] = []
    assert RunDir.open(path).load_checkpoint(warn=warned.append)["iteration"] == 1
    assert len(warned) == 1 and "ckpt-00000002.pt has no manifest" in warned[0]


def test_faults_counters_in_the_metrics_are_per_iteration(tmp_path) -> None:
    from rlmaml.rl.sampling.samplers import LocalSampler
    from rlmaml.rl.sampling.worker import WorkerSpec
    from rlmaml.rl.trainer import train_rl

    class Counting:
        """A local sampler whose cumulative fault counts grow by 2 retries per iteration."""

        def __init__(self, inner: LocalSampler) -> None:
            self.inner, self.retries = inner, 0

        def sample(self, weights, requests):
            self.retries += 2
            yield from self.inner.sample(weights, requests)

        def spaces(self):
            return self.inner.spaces()

        def fault_counts(self):
            return {"actor_deaths": 0, "timeouts": 0, "retries": self.retries}

        def close(self):
            self.inner.close()

    cfg = build_config("nav2d", [*TINY[2:], f"run.dir={tmp_path / 'run'}"])
    run = RunDir.create(cfg)
    train_rl(cfg, run, sampler=Counting(LocalSampler(WorkerSpec.from_config(cfg))))
    assert [r["faults_retries"] for r in run.metrics()] == [2, 2, 2]
