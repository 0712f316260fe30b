"""The run directory: resolved config, metrics, the lock, and its checkpoints (format: :mod:`rlmaml.checkpoints`).

Layout of a run directory::

    .lock                    held (flock) by the one trainer of the run; taken before anything else is written
    config.yaml              the resolved config (yaml.safe_load-able), rewritten atomically by a resume
    resumes.jsonl            one line per resume: when, from which checkpoint, the overrides, what they changed
    metrics.jsonl            one JSON object per iteration (metrics.csv mirrors it at close)
    error.log                the traceback of a run that ended on a task failure (rl.on_task_error=fail)
    checkpoints/ckpt-00000100.pt    tensors and plain data only: torch.load(weights_only=True)
    checkpoints/ckpt-00000100.json  manifest: format, iteration, size and SHA-256 of the .pt
    checkpoints/best.pt + best.json the best checkpoint by the trainer's score

Writes either complete or leave the file as it was: a metrics line is appended with one ``write`` and fsynced,
and cut back to the previous size if that fails (a full disk); the CSV mirror and config.yaml are replaced via a
temporary file. A failure is a one-line :class:`RunError` naming the file.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rlmaml.checkpoints import atomic_write_bytes, load_latest, numbered, save_checkpoint
from rlmaml.config import Config, ConfigError, build_config, read_config_file, to_dict, to_yaml
from rlmaml.errors import CheckpointError, RunError, TrainingStopped

__all__ = ["RunDir", "RunError", "CheckpointError", "TrainingStopped", "atomic_write_bytes", "append_line"]


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
        """A new run directory for ``cfg`` (``run.dir`` or ``root/<name>-<timestamp>``) with its config.

        The lock is taken before config.yaml is written (:meth:`start`), so a trainer that is refused never
        touches a live run's files; it is released on return. ``rlmaml train`` keeps it instead: :meth:`new`,
        then :meth:`start` inside :meth:`exclusive`.
        """
        run = cls.new(cfg, root)
        with run.exclusive():
            run.start(cfg)
        return run

    @classmethod
    def new(cls, cfg: Config, root: str | Path = "runs") -> RunDir:
        """The directory of a new run, created empty (nothing in it is written; see :meth:`start`)."""
        if cfg.run.dir:
            path = Path(cfg.run.dir)
            _refuse_checkpoints(path)
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
        return cls(path)

    def start(self, cfg: Config) -> None:
        """Write a new run's config.yaml (call under :meth:`exclusive`); refused if the folder holds checkpoints."""
        _refuse_checkpoints(self.path)  # again, now that no other trainer can be writing here
        try:
            self.checkpoint_dir.mkdir(exist_ok=True)
            atomic_write_bytes(self.path / "config.yaml", to_yaml(cfg).encode())
        except OSError as exc:
            raise RunError(f"cannot write the config of run {self.path}: {exc.strerror or exc}") from None

    def record_resume(self, cfg: Config, overrides: list[str] | tuple[str, ...], checkpoint: dict[str, Any]) -> None:
        """Record a resume (call under :meth:`exclusive`): config.yaml becomes the resolved config, overrides
        included (atomically), and ``resumes.jsonl`` gets a line with the overrides and the keys they changed."""
        before = _flat(read_config_file(self.path / "config.yaml"))
        after = _flat(to_dict(cfg))
        changed = {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v}
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid": os.getpid(),
                 "checkpoint_iteration": int(checkpoint.get("iteration", -1)), "overrides": list(overrides),
                 "changed": changed}
        try:
            if changed:
                atomic_write_bytes(self.path / "config.yaml", to_yaml(cfg).encode())
            append_line(self.path / "resumes.jsonl", json.dumps(entry, default=str))
        except OSError as exc:
            raise RunError(f"cannot record the resume in {self.path}: {exc.strerror or exc}") from None

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
        """Hold the run directory for one training process (an advisory ``flock`` on ``.lock``, which holds the pid).

        A second ``rlmaml train`` on the same directory (a resume started twice) would interleave metrics
        and overwrite checkpoints; it gets a one-line :class:`RunError` naming the holder's pid instead. The
        OS drops the lock when the holder exits, however it exits, so a crashed run can always be resumed.
        ``.lock`` is removed on release (while still locked; a process that locked the removed file sees that its
        inode is no longer ``.lock`` and tries again). A directory where ``.lock`` cannot be created (read-only)
        is a one-line RunError naming it. Where ``fcntl`` does not exist (Windows) this does nothing.
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        lock = self.path / ".lock"
        for _ in range(100):
            try:
                fh = open(lock, "a+")  # noqa: SIM115 - closing the file releases the lock
            except OSError as exc:
                raise RunError(f"cannot lock run directory {self.path} ({lock}: {exc.strerror or exc}); a run needs "
                               "a writable directory for its lock, metrics and checkpoints") from None
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                fh.close()
                raise RunError(f"run directory {self.path} is in use by another training process (pid {holder}); "
                               "wait for it or stop it first") from None
            if _same_file(fh, lock):
                break
            fh.close()  # the holder removed it as we opened it: lock the new one
        else:  # pragma: no cover - a hundred holders in a row
            raise RunError(f"cannot lock run directory {self.path}: {lock} keeps being replaced")
        with fh:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    lock.unlink()

    def config(self, overrides: list[str] | tuple[str, ...] = ()) -> Config:
        """The run's saved config (read within the limits of :func:`rlmaml.config.read_config_file`), with optional
        dotted overrides applied. An empty, binary, oversize or unsafe config.yaml is a one-line RunError."""
        try:
            data = read_config_file(self.path / "config.yaml")
        except ConfigError as exc:
            raise RunError(str(exc)) from None
        try:
            return build_config(data, overrides)
        except ConfigError as exc:
            raise RunError(f"{self.path / 'config.yaml'}: {exc}") from None

    # ---- metrics --------------------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        """Append one iteration's metrics as one line, whole or not at all (:func:`append_line`)."""
        clean = {k: _jsonable(v) for k, v in record.items()}
        try:
            append_line(self.metrics_path, json.dumps(clean))
        except OSError as exc:
            raise RunError(f"cannot append to {self.metrics_path}: {exc.strerror or exc}; the lines before are "
                           "intact") from None
        if self._tb is not None and "iteration" in clean:
            for key, value in clean.items():
                if isinstance(value, int | float) and key != "iteration":
                    self._tb.add_scalar(key, value, clean["iteration"])

    def metrics(self, warn: Any = None) -> list[dict[str, Any]]:
        """Every complete metrics line. A torn last line (a crash mid-write) is ignored; a corrupt line before the
        last is skipped with a warning naming it (through ``warn``, default stderr)."""
        rows, bad = self._read_metrics()
        if bad:
            (warn or _warn)(f"{self.metrics_path} line {bad[0]} is not a JSON object; skipped"
                            + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
        return rows

    def _read_metrics(self) -> tuple[list[dict[str, Any]], list[int]]:
        """The parsed rows and the 1-based numbers of the corrupt lines before the last."""
        if not self.metrics_path.is_file():
            return [], []
        lines = self.metrics_path.read_bytes().decode("utf-8", errors="replace").splitlines()
        rows, bad = [], []
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            elif number < len(lines) and line.strip():
                bad.append(number)
        return rows, bad

    def check_metrics(self) -> list[dict[str, Any]]:
        """The metrics rows; a RunError naming the first corrupt line before the last (a resume checks this first)."""
        rows, bad = self._read_metrics()
        if bad:
            raise RunError(f"{self.metrics_path} line {bad[0]} is not a JSON object (a damaged record); resuming would "
                           "drop it: fix or delete that line, then resume")
        return rows

    def truncate_metrics(self, last_iteration: int) -> None:
        """Drop metrics of iterations after ``last_iteration`` (work redone after a resume).

        A corrupt line before the last is refused (RunError naming it) rather than dropped for good: it is a
        recorded iteration this rewrite would lose. Fix or delete the line, then resume again.
        """
        rows = self.check_metrics()
        rows = [r for r in rows if r.get("iteration", -1) <= last_iteration]
        try:
            atomic_write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows).encode())
        except OSError as exc:
            raise RunError(f"cannot rewrite {self.metrics_path}: {exc.strerror or exc}; it is unchanged") from None

    def write_csv(self) -> Path:
        """Mirror metrics.jsonl as metrics.csv (columns: the union of keys, in first-seen order), replaced
        atomically: a failure (a full disk) leaves the previous CSV as it was."""
        rows = self.metrics(warn=lambda msg: None)
        keys: list[str] = []
        for row in rows:
            keys.extend(k for k in row if k not in keys)
        out = self.path / "metrics.csv"
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        try:
            atomic_write_bytes(out, text.getvalue().encode())
        except OSError as exc:
            raise RunError(f"cannot write {out}: {exc.strerror or exc}; the previous one is kept") from None
        return out

    def enable_tensorboard(self) -> None:
        """Mirror metrics to TensorBoard event files under ``tensorboard/``."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RunError("run.tensorboard=true needs TensorBoard: pip install 'rlmaml[tensorboard]'") from None
        self._tb = SummaryWriter(str(self.path / "tensorboard"))

    def close(self, quiet: bool = False) -> None:
        """Flush the CSV mirror and TensorBoard. ``quiet``: a run already failing; a CSV that cannot be written
        then stays as it was, and the run's own error is the one reported."""
        try:
            self.write_csv()
        except RunError:
            if not quiet:
                raise
        finally:
            if self._tb is not None:
                self._tb.close()
                self._tb = None

    # ---- checkpoints ----------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any], iteration: int, keep: int = 3, tag: str | None = None) -> Path:
        """Atomically write a checkpoint of ``state`` into ``checkpoints/`` (see :mod:`rlmaml.checkpoints`)."""
        return save_checkpoint(self.checkpoint_dir, state, iteration, keep, tag)

    def _numbered(self) -> list[Path]:
        return numbered(self.checkpoint_dir)

    def has_checkpoint(self) -> bool:
        """Whether any checkpoint manifest exists."""
        return self.checkpoint_dir.is_dir() and any(self.checkpoint_dir.glob("*.json"))

    def load_checkpoint(self, which: str = "latest", map_location: str | torch.device = "cpu",
                        warn: Any = None, expect: Any = None) -> dict[str, Any]:
        """The latest (or 'best') good checkpoint, falling back past bad ones (see :func:`load_latest`)."""
        return load_latest(self.checkpoint_dir, which, map_location, warn, where=str(self.path), expect=expect)

    def write_error_log(self, text: str) -> Path | None:
        """Append ``text`` (a traceback) to ``error.log``; None if even that cannot be written."""
        try:
            append_line(self.path / "error.log", f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} pid {os.getpid()}\n"
                                                 f"{text.rstrip()}")
        except OSError:
            return None
        return self.path / "error.log"

    def iter_checkpoints(self) -> Iterator[Path]:
        """Manifests of the numbered checkpoints, oldest first."""
        yield from self._numbered()


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` with one ``write`` on an ``O_APPEND`` descriptor, then fsync.

    If the write is short or fails (a full disk) the file is cut back to its previous size, so it never ends in a
    torn line, and the OSError is raised. A file whose last line was torn by a crash gets a newline first.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        data = (line.rstrip("\n") + "\n").encode()
        if size and _last_byte(path, size) != b"\n":  # a torn line from a crash stays a line of its own
            data = b"\n" + data
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(size - 1)
        return fh.read(1)


def _same_file(fh: Any, path: Path) -> bool:
    """Whether the open file ``fh`` is still the file at ``path`` (not removed or replaced since it was opened)."""
    try:
        return os.path.samestat(os.fstat(fh.fileno()), os.stat(path))
    except OSError:
        return False


def _refuse_checkpoints(path: Path) -> None:
    if (path / "checkpoints").is_dir() and any((path / "checkpoints").glob("*.json")):
        raise RunError(f"run directory {path} already holds checkpoints; use --resume {path} to continue")


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config mapping as dotted keys."""
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _warn(message: str) -> None:
    print(f"rlmaml: warning: {message}", file=sys.stderr)
