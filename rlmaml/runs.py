"""The run directory: resolved config, metrics, the lock, and its checkpoints (format: :mod:`rlmaml.checkpoints`).

Layout of a run directory::

    config.yaml              the resolved config (yaml.safe_load-able)
    metrics.jsonl            one JSON object per iteration (metrics.csv mirrors it at close)
    checkpoints/ckpt-00000100.pt    tensors and plain data only: torch.load(weights_only=True)
    checkpoints/ckpt-00000100.json  manifest: format, iteration, size and SHA-256 of the .pt
    checkpoints/best.pt + best.json the best checkpoint by the trainer's score

"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from rlmaml.checkpoints import atomic_write_bytes, load_latest, numbered, save_checkpoint
from rlmaml.config import Config, ConfigError, build_config, to_yaml
from rlmaml.errors import CheckpointError, RunError, TrainingStopped

__all__ = ["RunDir", "RunError", "CheckpointError", "TrainingStopped", "atomic_write_bytes"]



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
        """Atomically write a checkpoint of ``state`` into ``checkpoints/`` (see :mod:`rlmaml.checkpoints`)."""
        return save_checkpoint(self.checkpoint_dir, state, iteration, keep, tag)

    def _numbered(self) -> list[Path]:
        return numbered(self.checkpoint_dir)

    def has_checkpoint(self) -> bool:
        """Whether any checkpoint manifest exists."""
        return self.checkpoint_dir.is_dir() and any(self.checkpoint_dir.glob("*.json"))

    def load_checkpoint(self, which: str = "latest", map_location: str | torch.device = "cpu",
                        warn: Any = None) -> dict[str, Any]:
        """The latest (or 'best') good checkpoint, falling back past bad ones (see :func:`load_latest`)."""
        return load_latest(self.checkpoint_dir, which, map_location, warn, where=str(self.path))

    def iter_checkpoints(self) -> Iterator[Path]:
        """Manifests of the numbered checkpoints, oldest first."""
        yield from self._numbered()
