"""The run directory: resolved config, metrics, atomic checksummed checkpoints, resume.

Layout of a run directory::

    config.yaml              the resolved config (yaml.safe_load-able)
    metrics.jsonl            one JSON object per iteration (metrics.csv mirrors it at close)
    checkpoints/ckpt-00000100.pt    tensors and plain data only: torch.load(weights_only=True)
    checkpoints/ckpt-00000100.json  manifest: format, iteration, size and SHA-256 of the .pt
    checkpoints/best.pt + best.json the best checkpoint by the trainer's score

A checkpoint counts only once its manifest exists, and the manifest is written after the ``.pt`` has been
fsynced and renamed into place; so a crash or a full disk at any moment leaves the previous checkpoint as
the latest good one. Loading verifies size and checksum, unpickles with ``weights_only=True`` (no code can
run), checks the format tag, and falls back to the previous good checkpoint with a warning.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from rlmaml.config import Config, ConfigError, build_config, to_yaml

CHECKPOINT_FORMAT = "rlmaml-checkpoint-v1"


KILL_ENV = "RLMAML_TEST_KILL_AT"
"""Test hook: ``stage:iteration`` at which :func:`kill_point` SIGKILLs this process (crash-and-resume tests)."""


def kill_point(stage: str, iteration: int) -> None:
    """TEST HOOK. SIGKILL this process if ``$RLMAML_TEST_KILL_AT`` is ``f"{stage}:{iteration}"``; else a no-op.

    The stages are 'sampling' (after the iteration's first worker result), 'outer_step' (θ updated in memory,
    nothing of the iteration written) and 'checkpoint_write' (a numbered checkpoint's ``.pt`` in place, its
    manifest not yet). It lets tests/test_reliability_resume.py land a kill at a chosen moment deterministically.
    """
    target = os.environ.get(KILL_ENV)
    if target and target == f"{stage}:{iteration}":
        os.kill(os.getpid(), signal.SIGKILL)


class RunError(ValueError):
    """A run directory or checkpoint problem the user can act on; the message is one line."""


class TrainingStopped(RuntimeError):
    """A run stopped on purpose (e.g. too many consecutive skipped updates); the message says why."""


class CheckpointError(RunError):
    """A checkpoint that is missing, truncated, corrupted or not an rlmaml checkpoint."""


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename; the old file survives any failure."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and not isinstance(value, list | dict | str):
        with contextlib.suppress(Exception):
            value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunDir:
    """One run's directory on disk. Create with :meth:`create`, reopen with :meth:`open`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.checkpoint_dir = self.path / "checkpoints"
        self._tb: Any = None

    # ---- creation -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: Config, root: str | Path = "runs") -> RunDir:
        """A new run directory for ``cfg`` (``run.dir`` or ``root/<name>-<timestamp>``) with its config."""
        if cfg.run.dir:
            path = Path(cfg.run.dir)
            if (path / "checkpoints").is_dir() and any((path / "checkpoints").glob("*.json")):
                raise RunError(f"run directory {path} already holds checkpoints; use --resume {path} to continue")
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = Path(root) / f"{cfg.run.name or cfg.experiment}-{stamp}"
            suffix = 1
            while path.exists():
                suffix += 1
                path = Path(root) / f"{cfg.run.name or cfg.experiment}-{stamp}-{suffix}"
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot create run directory {path}: {exc.strerror}") from None
        run = cls(path)
        run.checkpoint_dir.mkdir(exist_ok=True)
        atomic_write_bytes(path / "config.yaml", to_yaml(cfg).encode())
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run directory; a clear error if it does not exist or is not a run."""
        path = Path(path)
        if not path.is_dir():
            raise RunError(f"run directory {str(path)!r} does not exist")
        if not (path / "config.yaml").is_file():
            raise RunError(f"{str(path)!r} is not an rlmaml run directory (no config.yaml)")
        return cls(path)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the run directory for one training process (an advisory ``flock`` on ``.lock``).

        A second ``rlmaml train`` on the same directory (a resume started twice) would interleave metrics
        and overwrite checkpoints; it gets a one-line :class:`RunError` naming the holder's pid instead. The
        OS drops the lock when the holder exits, however it exits, so a crashed run can always be resumed.
        Where ``fcntl`` does not exist (Windows) this does nothing.
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        with open(self.path / ".lock", "a+") as fh:  # closing the file releases the lock
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                raise RunError(f"run directory {self.path} is in use by another training process (pid {holder}); "
                               "wait for it or stop it first") from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            yield

    def config(self, overrides: list[str] | tuple[str, ...] = ()) -> Config:
        """The run's saved config (``yaml.safe_load``), with optional dotted overrides applied."""
        try:
            data = yaml.safe_load((self.path / "config.yaml").read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise RunError(f"cannot read {self.path / 'config.yaml'}: {str(exc).splitlines()[0]}") from None
        try:
            return build_config(data, overrides)
        except ConfigError as exc:
            raise RunError(f"{self.path / 'config.yaml'}: {exc}") from None

    # ---- metrics --------------------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        """Append one iteration's metrics (flushed at once, so a crash loses at most this line)."""
        clean = {k: _jsonable(v) for k, v in record.items()}
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(clean) + "\n")
        if self._tb is not None and "iteration" in clean:
            for key, value in clean.items():
                if isinstance(value, int | float) and key != "iteration":
                    self._tb.add_scalar(key, value, clean["iteration"])

    def metrics(self) -> list[dict[str, Any]]:
        """Every complete metrics line (a torn last line from a crash is ignored)."""
        if not self.metrics_path.is_file():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
        return rows

    def truncate_metrics(self, last_iteration: int) -> None:
        """Drop metrics of iterations after ``last_iteration`` (work redone after a resume)."""
        rows = [r for r in self.metrics() if r.get("iteration", -1) <= last_iteration]
        atomic_write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows).encode())

    def write_csv(self) -> Path:
        """Mirror metrics.jsonl as metrics.csv (columns: the union of keys, in first-seen order)."""
        rows = self.metrics()
        keys: list[str] = []
        for row in rows:
            keys.extend(k for k in row if k not in keys)
        out = self.path / "metrics.csv"
        with open(out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        return out

    def enable_tensorboard(self) -> None:
        """Mirror metrics to TensorBoard event files under ``tensorboard/``."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RunError("run.tensorboard=true needs TensorBoard: pip install 'rlmaml[tensorboard]'") from None
        self._tb = SummaryWriter(str(self.path / "tensorboard"))

    def close(self) -> None:
        """Flush the CSV mirror and TensorBoard."""
        self.write_csv()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # ---- checkpoints ----------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any], iteration: int, keep: int = 3, tag: str | None = None) -> Path:
        """Atomically write a checkpoint of ``state`` (tensors and plain data) and its manifest.

        ``tag`` (e.g. 'best') writes ``<tag>.pt`` instead of a numbered checkpoint and is never pruned.
        A failure (e.g. a full disk) raises :class:`CheckpointError` and leaves earlier checkpoints intact.
        """
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        stem = tag or f"ckpt-{iteration:08d}"
        payload = {"format": CHECKPOINT_FORMAT, "iteration": int(iteration), **state}
        buffer = _BytesSink()
        torch.save(payload, buffer)
        data = buffer.getvalue()
        manifest = {"format": CHECKPOINT_FORMAT, "iteration": int(iteration), "file": f"{stem}.pt",
                    "bytes": len(data), "sha256": sha256_bytes(data), "time": time.time()}
        try:
            atomic_write_bytes(self.checkpoint_dir / f"{stem}.pt", data)
            if tag is None:
                kill_point("checkpoint_write", iteration)
            atomic_write_bytes(self.checkpoint_dir / f"{stem}.json", json.dumps(manifest).encode())
        except OSError as exc:
            if tag is None:  # a .pt without its manifest is never used and never pruned: remove it
                with contextlib.suppress(OSError):
                    (self.checkpoint_dir / f"{stem}.pt").unlink()
            raise CheckpointError(f"could not write checkpoint {stem} in {self.checkpoint_dir}: "
                                  f"{exc.strerror or exc}; the previous checkpoint is intact") from None
        if tag is None:
            self._prune(keep)
        return self.checkpoint_dir / f"{stem}.pt"

    def _numbered(self) -> list[Path]:
        return sorted(self.checkpoint_dir.glob("ckpt-*.json"))

    def _prune(self, keep: int) -> None:
        for manifest in self._numbered()[:-keep]:
            for path in (manifest.with_suffix(".pt"), manifest):
                with contextlib.suppress(OSError):
                    path.unlink()

    def has_checkpoint(self) -> bool:
        """Whether any checkpoint manifest exists."""
        return self.checkpoint_dir.is_dir() and any(self.checkpoint_dir.glob("*.json"))

    def load_checkpoint(self, which: str = "latest", map_location: str | torch.device = "cpu",
                        warn: Any = None) -> dict[str, Any]:
        """Load and verify the latest (or 'best') good checkpoint.

        A bad newest checkpoint is reported through ``warn`` (default: stderr) and the previous one is used.
        Raises :class:`CheckpointError` when no good checkpoint exists.
        """
        if warn is None:  # not `warn or ...`: a falsy callable (e.g. a list subclass) is still the caller's
            warn = lambda msg: print(f"rlmaml: warning: {msg}", file=sys.stderr)
        if which == "best" and (self.checkpoint_dir / "best.json").is_file():
            candidates = [self.checkpoint_dir / "best.json", *reversed(self._numbered())]
        else:
            candidates = list(reversed(self._numbered()))
        if not candidates:
            raise CheckpointError(f"run directory {str(self.path)!r} has no checkpoint")
        errors = []
        for manifest in candidates:
            try:
                return load_verified(manifest, map_location)
            except CheckpointError as exc:
                errors.append(str(exc))
                warn(f"{exc}; trying the previous checkpoint")
        raise CheckpointError(f"no good checkpoint in {self.path}: {errors[-1]}")

    def iter_checkpoints(self) -> Iterator[Path]:
        """Manifests of the numbered checkpoints, oldest first."""
        yield from self._numbered()


class _BytesSink:
    """A minimal write-only file for torch.save that keeps the bytes in memory."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._pos = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._pos += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self._pos

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def load_verified(manifest_path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load the checkpoint a manifest names after checking its size, checksum and format."""
    try:
        manifest = json.loads(manifest_path.read_text())
        pt = manifest_path.with_name(manifest["file"])
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint manifest {manifest_path} is unreadable") from None
    if manifest.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{manifest_path} is not an rlmaml checkpoint manifest")
    try:
        data = pt.read_bytes()
    except OSError:
        raise CheckpointError(f"checkpoint {pt} is missing") from None
    if len(data) != manifest.get("bytes") or sha256_bytes(data) != manifest.get("sha256"):
        raise CheckpointError(f"checkpoint {pt} is truncated or corrupted (checksum mismatch)")
    return load_checkpoint_bytes(data, str(pt), map_location)


def load_checkpoint_bytes(data: bytes, name: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Unpickle checkpoint bytes safely (``weights_only=True``) and check the format tag."""
    import io

    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a usable checkpoint"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{name} is not a loadable rlmaml checkpoint ({first[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{name} is not an rlmaml checkpoint")
    return state


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file directly: verified against its manifest when one sits beside it."""
    path = Path(path)
    manifest = path.with_suffix(".json")
    if manifest.is_file():
        return load_verified(manifest, map_location)
    try:
        data = path.read_bytes()
    except OSError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    return load_checkpoint_bytes(data, str(path), map_location)


class Deadline:
    """``run.time_limit_min`` as a wall-clock deadline (0 minutes: none)."""

    def __init__(self, minutes: float) -> None:
        self.minutes = minutes
        self.at = time.monotonic() + 60 * minutes if minutes > 0 else math.inf

    def expired(self) -> bool:
        return time.monotonic() > self.at

    def report(self, iterations_done: int) -> None:
        print(f"rlmaml: run.time_limit_min={self.minutes} reached after {iterations_done} iterations; "
              "a checkpoint was written", file=sys.stderr)


class Progress:
    """A tqdm bar on a terminal; plain periodic lines otherwise (logs, CI, Ray jobs)."""

    def __init__(self, total: int, start: int = 0, every: int = 10, desc: str = "train") -> None:
        self.every = every
        self.total = total
        self.desc = desc
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True)

    def update(self, iteration: int, summary: dict[str, float]) -> None:
        """Report that ``iteration`` (0-based) finished with the given headline numbers."""
        text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items())
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(text, refresh=False)
        elif (iteration + 1) % self.every == 0 or iteration + 1 == self.total:
            print(f"[{self.desc}] iter {iteration + 1}/{self.total} {text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
