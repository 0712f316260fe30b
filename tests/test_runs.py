"""Specifications of rlmaml.runs: run directories, metrics, atomic checksummed checkpoints, and exact resume."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

import rlmaml.checkpoints as checkpoints
from rlmaml.checkpoints import CHECKPOINT_FORMAT, atomic_write_bytes, load_checkpoint_file, sha256_bytes
from rlmaml.cli import main
from rlmaml.config import build_config
from rlmaml.errors import CheckpointError, RunError
from rlmaml.runs import RunDir


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    cfg = build_config("sinusoid", [f"run.dir={tmp_path / 'run'}"])
    return RunDir.create(cfg)


def _state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "params": {"w": torch.randn(3, 2, generator=g), "b": torch.randn(2, generator=g, dtype=torch.float64)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
        "meta": {"names": ["a", "b"], "pair": (1, 2), "none": None, "flag": True, "x": 1.5, "text": "héllo"},
    }


class _Warnings(list):
    def __call__(self, message: str) -> None:
        self.append(message)


def _no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(".") or ".tmp" in p.name]


# ---- run directories -----------------------------------------------------------------------------------------------


def test_create_writes_a_loadable_config_and_open_reads_it_back(tmp_path: Path) -> None:
    cfg = build_config("sinusoid", [f"run.dir={tmp_path / 'r'}", "maml.inner_lr=0.02"])
    created = RunDir.create(cfg)
    assert created.path == tmp_path / "r"
    assert created.checkpoint_dir.is_dir()
    assert RunDir.open(tmp_path / "r").config() == cfg
    assert RunDir.open(tmp_path / "r").config(["maml.inner_lr=0.5"]).maml.inner_lr == 0.5


def test_create_without_a_dir_makes_unique_timestamped_dirs_under_root(tmp_path: Path) -> None:
    cfg = build_config("sinusoid")
    a = RunDir.create(cfg, tmp_path)
    b = RunDir.create(cfg, tmp_path)
    assert a.path != b.path
    assert a.path.parent == b.path.parent == tmp_path
    assert a.path.name.startswith("sinusoid-") and b.path.name.startswith("sinusoid-")


def test_create_refuses_a_dir_that_already_holds_checkpoints(run: RunDir) -> None:
    run.save_checkpoint(_state(), 1)
    with pytest.raises(RunError, match="--resume"):
        RunDir.create(run.config())


def test_open_of_a_missing_or_non_run_directory_is_a_run_error(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="does not exist"):
        RunDir.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(RunError, match="not an rlmaml run directory"):
        RunDir.open(tmp_path / "plain")


# ---- checkpoints: round trip, format, pruning ----------------------------------------------------------------------


def test_checkpoint_round_trip_gives_equal_tensors_plain_data_and_iteration(run: RunDir) -> None:
    state = _state()
    path = run.save_checkpoint(state, 7)
    assert path == run.checkpoint_dir / "ckpt-00000007.pt"
    loaded = run.load_checkpoint()
    assert loaded["iteration"] == 7
    assert loaded["format"] == CHECKPOINT_FORMAT
    for k, v in state["params"].items():
        assert torch.equal(loaded["params"][k], v) and loaded["params"][k].dtype == v.dtype
    assert torch.equal(loaded["optimizer"]["state"][0]["step"], torch.tensor(3.0))
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert loaded["meta"] == state["meta"]


def test_a_raw_checkpoint_file_loads_with_torch_weights_only(run: RunDir) -> None:
    path = run.save_checkpoint(_state(), 3)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and raw["iteration"] == 3
    assert torch.equal(raw["params"]["w"], _state()["params"]["w"])
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["bytes"] == path.stat().st_size
    assert manifest["sha256"] == sha256_bytes(path.read_bytes())
    assert manifest["iteration"] == 3 and manifest["file"] == path.name


def test_load_checkpoint_file_verifies_against_the_manifest_beside_it(run: RunDir) -> None:
    path = run.save_checkpoint(_state(), 3)
    assert load_checkpoint_file(path)["iteration"] == 3
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint_file(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_file(run.checkpoint_dir / "nope.pt")


def test_only_the_newest_n_checkpoints_are_kept_and_best_is_never_pruned(run: RunDir) -> None:
    run.save_checkpoint(_state(), 0, tag="best")
    for it in range(1, 6):
        run.save_checkpoint(_state(it), it, keep=2)
    names = sorted(p.name for p in run.checkpoint_dir.iterdir())
    assert names == ["best.json", "best.pt", "ckpt-00000004.json", "ckpt-00000004.pt",
                     "ckpt-00000005.json", "ckpt-00000005.pt"]
    assert run.load_checkpoint()["iteration"] == 5
    assert run.load_checkpoint("best")["iteration"] == 0


def test_best_falls_back_to_the_latest_when_there_is_no_best(run: RunDir) -> None:
    run.save_checkpoint(_state(), 4)
    assert run.load_checkpoint("best")["iteration"] == 4


def test_a_run_with_no_checkpoint_is_a_checkpoint_error(run: RunDir) -> None:
    assert not run.has_checkpoint()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run.load_checkpoint()


# ---- checkpoints: damage ---------------------------------------------------------------------------------------------


def test_a_truncated_latest_checkpoint_is_detected_and_the_previous_one_is_used(run: RunDir) -> None:
    run.save_checkpoint(_state(1), 1)
    latest = run.save_checkpoint(_state(2), 2)
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    warnings = _Warnings()
    loaded = run.load_checkpoint(warn=warnings)
    assert loaded["iteration"] == 1
    assert torch.equal(loaded["params"]["w"], _state(1)["params"]["w"])
    assert len(warnings) == 1 and "ckpt-00000002" in warnings[0] and "truncated" in warnings[0]


def test_a_corrupted_byte_is_a_checksum_mismatch_and_the_previous_one_is_used(run: RunDir, capsys) -> None:
    run.save_checkpoint(_state(1), 1)
    latest = run.save_checkpoint(_state(2), 2)
    data = bytearray(latest.read_bytes())
    data[-100] ^= 0x01  # same size, one bit flipped
    latest.write_bytes(bytes(data))
    assert run.load_checkpoint()["iteration"] == 1
    err = capsys.readouterr().err
    assert err.startswith("rlmaml: warning:") and "ckpt-00000002" in err and "checksum" in err


def test_a_missing_pt_or_an_unreadable_manifest_falls_back_to_the_previous_checkpoint(run: RunDir) -> None:
    run.save_checkpoint(_state(1), 1)
    run.save_checkpoint(_state(2), 2).unlink()
    warnings = _Warnings()
    assert run.load_checkpoint(warn=warnings)["iteration"] == 1
    assert "missing" in warnings[0]
    (run.checkpoint_dir / "ckpt-00000003.json").write_text("{not json")
    assert run.load_checkpoint(warn=_Warnings())["iteration"] == 1


def test_when_every_checkpoint_is_bad_loading_raises_checkpoint_error(run: RunDir) -> None:
    for it in (1, 2):
        run.save_checkpoint(_state(it), it).write_bytes(b"garbage")
    warnings = _Warnings()
    with pytest.raises(CheckpointError, match="no good checkpoint"):
        run.load_checkpoint(warn=warnings)
    assert len(warnings) == 2


def _forge(run: RunDir, iteration: int, data: bytes) -> Path:
    """Place ``data`` as a numbered checkpoint with a manifest whose size and checksum match it."""
    pt = run.checkpoint_dir / f"ckpt-{iteration:08d}.pt"
    pt.write_bytes(data)
    manifest = {"format": CHECKPOINT_FORMAT, "iteration": iteration, "file": pt.name, "bytes": len(data),
                "sha256": sha256_bytes(data), "time": 0.0}
    pt.with_suffix(".json").write_text(json.dumps(manifest))
    return pt


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_torch_bytes({"iteration": 2, "params": {"w": torch.ones(2)}}), id="plain-dict-no-format-tag"),
        pytest.param(_torch_bytes({"format": "something-else-v9", "iteration": 2}), id="wrong-format-tag"),
        pytest.param(_torch_bytes([1, 2, 3]), id="not-a-dict"),
        pytest.param(os.urandom(4096), id="random-bytes"),
        pytest.param(b"", id="empty"),
    ],
)
def test_a_file_that_is_not_an_rlmaml_checkpoint_is_a_checkpoint_error(run: RunDir, tmp_path: Path, data) -> None:
    loose = tmp_path / "loose.pt"
    loose.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_file(loose)
    assert "\n" not in str(info.value)

    # Behind a manifest whose checksum matches, it is still refused; the previous good one is used.
    run.save_checkpoint(_state(1), 1)
    _forge(run, 2, data)
    warnings = _Warnings()
    assert run.load_checkpoint(warn=warnings)["iteration"] == 1
    assert len(warnings) == 1 and "ckpt-00000002" in warnings[0]


class _Evil:
    """Unpickling this would create ``marker`` (it stands in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused(run: RunDir, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = _torch_bytes({"format": CHECKPOINT_FORMAT, "iteration": 2, "params": {}, "payload": _Evil(marker)})

    # The crafted file is real: an unsafe load would create the marker.
    control = tmp_path / "control"
    torch.load(io.BytesIO(_torch_bytes({"x": _Evil(control)})), weights_only=False)
    assert control.exists()

    run.save_checkpoint(_state(1), 1)
    pt = _forge(run, 2, data)  # size and checksum match: only the safe unpickler stands in the way
    warnings = _Warnings()
    assert run.load_checkpoint(warn=warnings)["iteration"] == 1
    assert len(warnings) == 1 and "not a loadable" in warnings[0]
    with pytest.raises(CheckpointError):
        load_checkpoint_file(pt)
    pt.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError):
        load_checkpoint_file(pt)
    assert not marker.exists()


def test_weights_only_unpickling_is_not_bypassed_by_a_plain_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    loose = tmp_path / "evil.pt"
    loose.write_bytes(pickle.dumps({"format": CHECKPOINT_FORMAT, "x": _Evil(marker)}, protocol=2))
    with pytest.raises(CheckpointError):
        load_checkpoint_file(loose)
    assert not marker.exists()


# ---- checkpoints: a full disk ----------------------------------------------------------------------------------------


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_at_fsync_raises_checkpoint_error_and_keeps_the_previous_checkpoint(run, monkeypatch) -> None:
    run.save_checkpoint(_state(1), 1)
    before = sorted(p.name for p in run.checkpoint_dir.iterdir())
    monkeypatch.setattr(checkpoints.os, "fsync", _enospc)
    with pytest.raises(CheckpointError, match="No space left on device") as info:
        run.save_checkpoint(_state(2), 2)
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert sorted(p.name for p in run.checkpoint_dir.iterdir()) == before
    loaded = run.load_checkpoint(warn=_Warnings())
    assert loaded["iteration"] == 1 and torch.equal(loaded["params"]["w"], _state(1)["params"]["w"])


def test_a_full_disk_while_writing_raises_checkpoint_error_and_leaves_no_temp_file(run, monkeypatch) -> None:
    run.save_checkpoint(_state(1), 1)
    real_open = builtins.open

    class _FullFile:
        def __init__(self, fh) -> None:
            self._fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self._fh.close()

        def write(self, data) -> int:
            self._fh.write(data[: len(data) // 2])
            _enospc()

    def full_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        return _FullFile(fh) if "w" in mode else fh

    monkeypatch.setattr(checkpoints, "open", full_open, raising=False)
    with pytest.raises(CheckpointError, match="previous checkpoint is intact"):
        run.save_checkpoint(_state(2), 2)
    monkeypatch.undo()
    assert _no_temp_files(run.checkpoint_dir)
    assert not (run.checkpoint_dir / "ckpt-00000002.pt").exists()
    assert not (run.checkpoint_dir / "ckpt-00000002.json").exists()
    warnings = _Warnings()
    assert run.load_checkpoint(warn=warnings)["iteration"] == 1 and warnings == []


def test_a_full_disk_at_the_manifest_keeps_the_previous_checkpoint_as_latest(run, monkeypatch) -> None:
    run.save_checkpoint(_state(1), 1)
    real_fsync = os.fsync
    calls = []

    def fsync_fails_second_file(fd: int) -> None:
        calls.append(fd)
        if len(calls) >= 3:  # 1: the .pt, 2: its directory, 3: the manifest
            _enospc()
        real_fsync(fd)

    monkeypatch.setattr(checkpoints.os, "fsync", fsync_fails_second_file)
    with pytest.raises(CheckpointError):
        run.save_checkpoint(_state(2), 2)
    monkeypatch.undo()
    assert _no_temp_files(run.checkpoint_dir)
    assert not (run.checkpoint_dir / "ckpt-00000002.json").exists()
    warnings = _Warnings()
    assert run.load_checkpoint(warn=warnings)["iteration"] == 1 and warnings == []


def test_a_failed_save_leaves_the_checkpoint_folder_as_it_was(run, monkeypatch) -> None:
    run.save_checkpoint(_state(1), 1)
    before = sorted(p.name for p in run.checkpoint_dir.iterdir())
    real_fsync = os.fsync
    calls = []

    def fsync_fails_at_the_manifest(fd: int) -> None:
        calls.append(fd)
        if len(calls) >= 3:
            _enospc()
        real_fsync(fd)

    monkeypatch.setattr(checkpoints.os, "fsync", fsync_fails_at_the_manifest)
    with pytest.raises(CheckpointError):
        run.save_checkpoint(_state(2), 2)
    monkeypatch.undo()
    assert sorted(p.name for p in run.checkpoint_dir.iterdir()) == before


def test_atomic_write_keeps_the_old_content_when_the_write_fails(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"old")
    monkeypatch.setattr(checkpoints.os, "fsync", _enospc)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new content")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


# ---- metrics -------------------------------------------------------------------------------------------------------


def test_log_appends_json_lines_with_tensors_and_non_finite_values_made_plain(run: RunDir) -> None:
    run.log({"iteration": 0, "meta_loss": torch.tensor(1.5), "vec": torch.tensor([1.0, 2.0]), "n": 3})
    run.log({"iteration": 1, "meta_loss": float("nan"), "grad": float("inf"), "np": __import__("numpy").float32(2)})
    lines = run.metrics_path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)
    rows = run.metrics()
    assert rows[0] == {"iteration": 0, "meta_loss": 1.5, "vec": [1.0, 2.0], "n": 3}
    assert rows[1]["meta_loss"] == "nan" and rows[1]["grad"] == "inf" and rows[1]["np"] == 2.0


def test_truncate_metrics_drops_iterations_after_the_given_one(run: RunDir) -> None:
    for it in range(6):
        run.log({"iteration": it, "meta_loss": float(it)})
    run.truncate_metrics(3)
    assert [r["iteration"] for r in run.metrics()] == [0, 1, 2, 3]
    run.log({"iteration": 4, "meta_loss": 40.0})
    assert [r["meta_loss"] for r in run.metrics()] == [0.0, 1.0, 2.0, 3.0, 40.0]
    assert _no_temp_files(run.path)


def test_a_torn_last_metrics_line_is_ignored(run: RunDir) -> None:
    for it in range(3):
        run.log({"iteration": it, "meta_loss": 1.0})
    with open(run.metrics_path, "a") as fh:
        fh.write('{"iteration": 3, "meta_lo')
    assert [r["iteration"] for r in run.metrics()] == [0, 1, 2]
    run.truncate_metrics(10)  # rewriting drops the torn line for good
    assert run.metrics_path.read_text().count("\n") == 3
    assert [r["iteration"] for r in run.metrics()] == [0, 1, 2]


def test_metrics_of_a_new_run_are_empty_and_close_writes_the_csv_mirror(run: RunDir) -> None:
    assert run.metrics() == []
    run.log({"iteration": 0, "meta_loss": 2.0})
    run.log({"iteration": 1, "meta_loss": 1.0, "skipped": 0.0})
    run.close()
    lines = (run.path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "iteration,meta_loss,skipped"
    assert lines[1:] == ["0,2.0,", "1,1.0,0.0"]


# ---- exact resume --------------------------------------------------------------------------------------------------

_FAST = ["optim.meta_batch=5", "run.log_every=1000", "run.device=cpu"]


def _final(run_dir: Path) -> tuple[dict, list[float], list[int]]:
    rd = RunDir.open(run_dir)
    state = rd.load_checkpoint()
    rows = rd.metrics()
    return state, [r["meta_loss"] for r in rows], [r["iteration"] for r in rows]


def _assert_same_training(a: Path, b: Path, n: int) -> None:
    sa, la, ia = _final(a)
    sb, lb, ib = _final(b)
    assert sa["iteration"] == sb["iteration"] == n - 1
    assert ia == ib == list(range(n))
    assert la == lb
    assert sa["params"].keys() == sb["params"].keys()
    for k in sa["params"]:
        assert torch.equal(sa["params"][k], sb["params"][k]), k
    for i, s in sa["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(s[name], sb["optimizer"]["state"][i][name])


def test_resume_continues_exactly_as_one_uninterrupted_run(tmp_path: Path, capsys, one_thread) -> None:
    n = 16
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "sinusoid", f"run.iterations={n}", f"run.dir={one}", "run.checkpoint_every=4", *_FAST]) == 0
    assert main(["train", "sinusoid", f"run.iterations={n // 2}", f"run.dir={two}", "run.checkpoint_every=4",
                 *_FAST]) == 0
    assert RunDir.open(two).load_checkpoint()["iteration"] == n // 2 - 1
    assert main(["train", "--resume", str(two), f"run.iterations={n}"]) == 0
    _assert_same_training(one, two, n)


def test_resume_after_a_crash_redoes_the_work_after_the_last_checkpoint(tmp_path: Path, capsys, one_thread) -> None:
    n = 16
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "sinusoid", f"run.iterations={n}", f"run.dir={one}", "run.checkpoint_every=4", *_FAST]) == 0
    # Turn the second run into one that "crashed" while writing the metrics line of iteration 10, with
    # iterations 0..9 logged but the last valid checkpoint after iteration 7.
    assert main(["train", "sinusoid", f"run.iterations={n}", f"run.dir={two}", "run.checkpoint_every=4",
                 *_FAST]) == 0
    rd = RunDir.open(two)
    for manifest in rd.iter_checkpoints():
        if json.loads(manifest.read_text())["iteration"] > 7:
            manifest.unlink()
    rd.truncate_metrics(9)
    with open(rd.metrics_path, "a") as fh:
        fh.write('{"iteration": 10, "meta_')
    assert rd.load_checkpoint()["iteration"] == 7
    assert main(["train", "--resume", str(two)]) == 0
    _assert_same_training(one, two, n)


def test_exclusive_refuses_a_second_holder_naming_the_pid_and_is_released_after(run: RunDir) -> None:
    with run.exclusive():
        assert (run.path / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RunError, match=rf"in use by another training process \(pid {os.getpid()}\)"), \
                run.exclusive():
            pass
    with run.exclusive():  # released on leaving the block
        pass


def test_exclusive_is_released_when_the_holder_process_dies(run: RunDir) -> None:
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from rlmaml.runs import RunDir\n"
        f"with RunDir.open({str(run.path)!r}).exclusive():\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=f"pid {holder.pid}"), run.exclusive():
            pass
    finally:
        holder.kill()
        holder.wait()
    with run.exclusive():  # SIGKILL dropped the lock: the run can be resumed
        pass
