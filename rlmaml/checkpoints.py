"""The checkpoint file format: atomic, checksummed, loadable with ``torch.load(weights_only=True)``.

A checkpoint is ``<stem>.pt`` (tensors and plain data only) plus its manifest ``<stem>.json`` (format, iteration,
size and SHA-256 of the ``.pt``). A checkpoint counts only once its manifest exists, and the manifest is written
after the ``.pt`` has been fsynced and renamed into place; so a crash or a full disk at any moment leaves the
previous checkpoint as the latest good one. Loading verifies size and checksum, unpickles with
``weights_only=True`` (no code can run), checks the format tag and the structure (:func:`check_structure`: the
keys a trainer reads, θ a dict of finite tensors) and, where the caller knows them, θ's shapes
(:func:`expect_shapes`); :func:`load_latest` falls back to the previous good checkpoint with a warning, also past a
``.pt`` whose manifest is missing (deleted, or a crash before it was written).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rlmaml.errors import CheckpointError
from rlmaml.kill_hook import kill_point

CHECKPOINT_FORMAT = "rlmaml-checkpoint-v1"


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


def save_checkpoint(directory: Path, state: dict[str, Any], iteration: int, keep: int = 3,
                    tag: str | None = None) -> Path:
    """Atomically write a checkpoint of ``state`` (tensors and plain data) and its manifest into ``directory``.

    ``tag`` (e.g. 'best') writes ``<tag>.pt`` instead of a numbered checkpoint and is never pruned; otherwise
    only the ``keep`` newest numbered checkpoints are kept. A failure (e.g. a full disk) raises
    :class:`CheckpointError` and leaves earlier checkpoints intact.
    """
    directory.mkdir(parents=True, exist_ok=True)
    stem = tag or f"ckpt-{iteration:08d}"
    payload = {"format": CHECKPOINT_FORMAT, "iteration": int(iteration), **state}
    buffer = _BytesSink()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    manifest = {"format": CHECKPOINT_FORMAT, "iteration": int(iteration), "file": f"{stem}.pt",
                "bytes": len(data), "sha256": sha256_bytes(data), "time": time.time()}
    try:
        atomic_write_bytes(directory / f"{stem}.pt", data)
        if tag is None:
            kill_point("checkpoint_write", iteration)
        atomic_write_bytes(directory / f"{stem}.json", json.dumps(manifest).encode())
    except OSError as exc:
        if tag is None:  # a .pt without its manifest is never used and never pruned: remove it
            with contextlib.suppress(OSError):
                (directory / f"{stem}.pt").unlink()
        raise CheckpointError(f"could not write checkpoint {stem} in {directory}: "
                              f"{exc.strerror or exc}; the previous checkpoint is intact") from None
    if tag is None:
        prune(directory, keep)
    return directory / f"{stem}.pt"


def numbered(directory: Path) -> list[Path]:
    """Manifests of the numbered checkpoints in ``directory``, oldest first."""
    return sorted(directory.glob("ckpt-*.json"))


def prune(directory: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest numbered checkpoints."""
    for manifest in numbered(directory)[:-keep]:
        for path in (manifest.with_suffix(".pt"), manifest):
            with contextlib.suppress(OSError):
                path.unlink()


def load_latest(directory: Path, which: str = "latest", map_location: str | torch.device = "cpu",
                warn: Callable[[str], Any] | None = None, where: str = "",
                expect: Callable[[dict[str, Any], str], None] | None = None) -> dict[str, Any]:
    """Load and verify the latest (or 'best') good checkpoint in ``directory``.

    A bad newest checkpoint (corrupt, of the wrong structure, or refused by ``expect(state, name)``, which raises
    :class:`CheckpointError`, e.g. :func:`expect_shapes`) is reported through ``warn`` (default: stderr) and the
    previous one is used; so is a newer ``.pt`` without its manifest. Raises :class:`CheckpointError` when no good
    checkpoint exists.
    """
    if warn is None:  # not `warn or ...`: a falsy callable (e.g. a list subclass) is still the caller's
        warn = lambda msg: print(f"rlmaml: warning: {msg}", file=sys.stderr)
    where = where or str(directory)
    if which == "best" and (directory / "best.json").is_file():
        candidates = [directory / "best.json", *reversed(numbered(directory))]
    else:
        candidates = list(reversed(numbered(directory)))
    orphans = _orphans(directory, candidates)
    for pt in orphans:
        warn(f"checkpoint {pt} has no manifest (deleted, or the run stopped while writing it); it is not used")
    if not candidates:
        extra = f" (only {len(orphans)} .pt file(s) without a manifest)" if orphans else ""
        raise CheckpointError(f"run directory {where!r} has no checkpoint{extra}")
    errors = []
    for manifest in candidates:
        try:
            state = load_verified(manifest, map_location)
            if expect is not None:
                expect(state, str(manifest.with_suffix(".pt")))
            return state
        except CheckpointError as exc:
            errors.append(str(exc))
            warn(f"{exc}; trying the previous checkpoint")
    raise CheckpointError(f"no good checkpoint in {where}: {errors[-1]}")


def _orphans(directory: Path, candidates: list[Path]) -> list[Path]:
    """Numbered ``.pt`` files newer than the newest manifest that have no manifest of their own."""
    if not directory.is_dir():
        return []
    newest = max((m.stem for m in candidates if m.stem.startswith("ckpt-")), default="")
    return sorted(pt for pt in directory.glob("ckpt-*.pt")
                  if pt.stem > newest and not pt.with_suffix(".json").exists())


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
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a usable checkpoint"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{name} is not a loadable rlmaml checkpoint ({first[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{name} is not an rlmaml checkpoint")
    check_structure(state, name)
    return state


def check_structure(state: dict[str, Any], name: str) -> None:
    """Refuse a checkpoint (its checksum may be fine) whose content a trainer cannot use: a missing or negative
    ``iteration``, no θ where its kind keeps one (``rl``: ``learner.params``; ``supervised``: ``params``), θ
    that is not a dict of finite tensors. Raises :class:`CheckpointError` naming the bad entry."""
    iteration = state.get("iteration")
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise CheckpointError(f"{name} has no valid 'iteration' (got {iteration!r})")
    kind = state.get("kind")
    if kind == "rl":
        learner = state.get("learner")
        if not isinstance(learner, dict) or "params" not in learner:
            raise CheckpointError(f"{name} is an rl checkpoint without 'learner.params'")
        _check_params(learner["params"], f"{name}: learner.params")
    elif kind == "supervised" or "params" in state:
        if "params" not in state:
            raise CheckpointError(f"{name} is a supervised checkpoint without 'params'")
        _check_params(state["params"], f"{name}: params")


def _check_params(params: Any, where: str) -> None:
    if not isinstance(params, dict) or not params:
        raise CheckpointError(f"{where} must be a non-empty dict of tensors, got {type(params).__name__}")
    for key, value in params.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}[{key!r}] is a {type(value).__name__}, not a tensor")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{where}[{key!r}] holds a non-finite number (NaN or inf)")


def param_shapes(params: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of a dict of tensors (a trainer's θ)."""
    return {k: tuple(v.shape) for k, v in params.items()}


def expect_shapes(expected: dict[str, tuple[int, ...]], *path: str) -> Callable[[dict[str, Any], str], None]:
    """A ``load_latest(expect=...)`` check: the θ at ``state[path[0]][path[1]]...`` has exactly these names and
    shapes (those of the model the config builds); else :class:`CheckpointError` naming the first difference."""

    def check(state: dict[str, Any], name: str) -> None:
        params: Any = state
        for key in path:
            params = params.get(key, {}) if isinstance(params, dict) else {}
        found = param_shapes(params) if isinstance(params, dict) else {}
        if found == expected:
            return
        where = ".".join(path)
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        if missing or extra:
            raise CheckpointError(f"{name}: {where} does not match the config's model (missing {missing[:3]}, "
                                  f"unexpected {extra[:3]})")
        key = next(k for k in expected if found[k] != expected[k])
        raise CheckpointError(f"{name}: {where}[{key!r}] has shape {list(found[key])}; the config's model has "
                              f"{list(expected[key])}")

    return check


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
