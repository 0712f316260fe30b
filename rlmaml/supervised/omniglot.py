"""Few-shot Omniglot classification (paper section 5.2): dataset, cache, splits, task sampler, domain.

Source
    The dataset as published at https://github.com/brendenlake/omniglot (``python/images_background.zip``
    and ``python/images_evaluation.zip``): 1623 characters from 50 alphabets, 20 drawings each, 105x105
    one-bit PNGs laid out as ``images_background/<Alphabet>/characterNN/*.png``. Either the two zips or
    their extracted folders are read from ``omniglot.root``, else ``$RLMAML_DATA`` (the folder holding
    them, or a parent with an ``omniglot/`` subfolder). Nothing is downloaded.

Preprocessing (once, then cached)
    Each PNG is converted to 8-bit grey (``Image.convert("L")``), resized with
    ``Image.resize((28, 28), Image.LANCZOS)`` and inverted, so ink is bright: stored as uint8 ``255 - grey``,
    fed to the network as ``uint8 / 255`` in [0, 1]. This is the original code's ``1.0 - image / 255``.
    (The original resized the 1-bit image directly; Pillow then silently uses nearest-neighbour for
    mode "1", so its 28x28 images are binary. We convert to grey first, as intended, so strokes are
    anti-aliased.) The result is ONE array, uint8 ``[characters, 20, 28, 28]`` (25 MB), saved as ``.npy``
    next to a small JSON with the character names and a fingerprint of the source (SHA-256 of each zip,
    or size and mtime of every PNG of a folder), in ``omniglot.cache_dir``, else ``$RLMAML_CACHE``, else
    ``~/.cache/rlmaml``. A changed source has a new fingerprint and is decoded again. Files are written
    to a temporary name and moved into place (``os.replace``), so a crash never leaves a half cache.
    Decoding takes 5-10 s for the 32,460 PNGs in one process (0.14 ms each on a 2-core CPU), so no
    worker pool: forking a process that has torch loaded costs more than it saves. Loading the cache
    takes well under a second.

Characters are ordered background first (alphabets and characters sorted by name), then evaluation.

Splits
    ``split="paper"``: ``train_characters`` (1200) characters drawn from all 1623 with
    ``numpy.random.default_rng(split_seed)``, the other 423 for testing (the original code also held
    out 100 of the 1200 for validation; we do not). ``split="alphabet"``: the 964 background characters
    train, the 659 evaluation characters test (Lake et al.'s split).

Rotations
    With ``rotations=True`` every class in a task is shown at a random multiple of 90 degrees, the same
    rotation for all of its drawings, so each character yields 4 classes (4800 training classes in the
    paper split). The original code does this for test tasks too (its ``# and FLAGS.train:`` is commented
    out), and so do we: 1692 test classes. As in the original, a task's ``N`` classes are ``N`` distinct
    characters, each at its own random rotation.

Tasks
    An N-way K-shot task picks N characters, a random rotation for each, K + Q distinct drawings of each,
    and a random permutation of the labels 0..N-1. Support ``(x [T, N*K, 1, 28, 28] float32,
    y [T, N*K] int64)`` and query ``(x [T, N*Q, 1, 28, 28], y [T, N*Q])`` are grouped by class (all images
    of one label together); with batch statistics and a mean loss the order within a task is irrelevant.
    Sampling is vectorised over the cached uint8 array, and all randomness comes from the caller's
    ``numpy.random.Generator``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from rlmaml.config import OmniglotConfig
from rlmaml.meta import LossFn, Params, model_loss
from rlmaml.supervised.domain import TaskBatch, seeded_init
from rlmaml.supervised.models import build_network

PARTS = ("images_background", "images_evaluation")
ZIPS = tuple(f"{part}.zip" for part in PARTS)
PUBLISHED = "github.com/brendenlake/omniglot (python/images_background.zip and python/images_evaluation.zip)"
DRAWINGS = 20
SOURCE_SIZE = (105, 105)
IMAGE_SIZE = 28
CHARACTERS = 1623
BACKGROUND_CHARACTERS = 964
CACHE_VERSION = 1
RESIZE = "convert('L'), resize((28, 28), LANCZOS), 255 - grey"
SPLITS = ("train", "test")


class OmniglotNotFoundError(FileNotFoundError):
    """The Omniglot files are not where rlmaml looked; the message says what to put where."""


class OmniglotFormatError(ValueError):
    """An Omniglot source file or folder is unreadable or laid out wrongly; the message names it."""


# --------------------------------------------------------------------------------------------- finding


def _where(root: Path) -> dict[str, Path] | None:
    """Each part's source in ``root``: ``<part>.zip`` if present, else the folder ``<part>/``."""
    found = {}
    for part in PARTS:
        if (root / f"{part}.zip").is_file():
            found[part] = root / f"{part}.zip"
        elif (root / part).is_dir():
            found[part] = root / part
        else:
            return None
    return found


def _not_found(detail: str) -> OmniglotNotFoundError:
    return OmniglotNotFoundError(
        f"Omniglot not found: {detail}; expected {ZIPS[0]} and {ZIPS[1]} (or their extracted folders), "
        f"published at {PUBLISHED}; put them in a folder and point rlmaml at it with omniglot.root=<folder> "
        f"or the RLMAML_DATA environment variable"
    )


def find_sources(root: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """The zip or folder of each part (``images_background``, ``images_evaluation``).

    ``root`` (else ``$RLMAML_DATA``) is the folder holding them or a parent with an ``omniglot/`` folder.
    """
    given = str(root) if root else os.environ.get("RLMAML_DATA", "")
    if not given:
        raise _not_found("no location given (omniglot.root is empty and RLMAML_DATA is not set)")
    base = Path(given).expanduser()
    for candidate in (base, base / "omniglot"):
        found = _where(candidate)
        if found is not None:
            return found
    missing = [z for z in ZIPS if not (base / z).exists() and not (base / z.removesuffix(".zip")).is_dir()]
    raise _not_found(f"{' and '.join(missing) or 'a part'} missing in {base} (also looked in {base / 'omniglot'})")


def cache_directory(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$RLMAML_CACHE``, else ``~/.cache/rlmaml``."""
    chosen = str(cache_dir) if cache_dir else os.environ.get("RLMAML_CACHE", "")
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "rlmaml"


# --------------------------------------------------------------------------------------------- listing

Listing = dict[tuple[str, str], list[str]]  # (alphabet, character) -> member names / file paths, sorted


def _layout_error(source: Path, item: str) -> OmniglotFormatError:
    part = source.name.removesuffix(".zip")
    return OmniglotFormatError(
        f"{source}: unexpected layout at {item!r}; expected {part}/<Alphabet>/characterNN/*.png as in the "
        f"published {part}.zip"
    )


def _is_junk(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return name.startswith("__MACOSX/") or base.startswith(".")


def _group(source: Path, relative_names: Iterable[tuple[str, str]]) -> Listing:
    """Group ``(relative path, key)`` pairs of PNGs by (alphabet, character), checking the layout."""
    groups: Listing = {}
    for relative, key in relative_names:
        parts = relative.split("/")
        if len(parts) != 3:
            raise _layout_error(source, relative)
        groups.setdefault((parts[0], parts[1]), []).append(key)
    if not groups:
        raise _layout_error(source, "(no PNG files found)")
    for (alphabet, character), members in groups.items():
        if len(members) != DRAWINGS:
            raise OmniglotFormatError(
                f"{source}: {alphabet}/{character} has {len(members)} drawings, expected {DRAWINGS}"
            )
        members.sort()
    return dict(sorted(groups.items()))


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise OmniglotFormatError(
            f"{path}: not a readable zip ({error}); download it again from {PUBLISHED}"
        ) from error


def _list_zip(path: Path, part: str) -> Listing:
    with _open_zip(path) as archive:
        names = [n for n in archive.namelist() if n.lower().endswith(".png") and not _is_junk(n)]
    pairs = []
    for name in names:
        if not name.startswith(part + "/"):
            raise _layout_error(path, name)
        pairs.append((name[len(part) + 1:], name))
    return _group(path, pairs)


def _list_folder(path: Path) -> Listing:
    pairs = []
    for file in path.rglob("*"):
        if file.is_file() and file.suffix.lower() == ".png" and not file.name.startswith("."):
            pairs.append((file.relative_to(path).as_posix(), str(file)))
    return _group(path, pairs)


def _list(source: Path, part: str) -> Listing:
    return _list_zip(source, part) if source.suffix == ".zip" else _list_folder(source)


def _fingerprint(source: Path) -> dict[str, Any]:
    """What identifies a source's content: a zip's size and SHA-256, a folder's PNG sizes and mtimes."""
    if source.suffix == ".zip":
        digest = hashlib.sha256()
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return {"zip": source.name, "size": source.stat().st_size, "sha256": digest.hexdigest()}
    digest = hashlib.sha256()
    count = 0
    for file in sorted(source.rglob("*.png")):
        stat = file.stat()
        digest.update(f"{file.relative_to(source).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        count += 1
    return {"folder": source.name, "pngs": count, "listing_sha256": digest.hexdigest()}


# -------------------------------------------------------------------------------------------- decoding


def decode_png(data: bytes, name: str) -> np.ndarray:
    """One 105x105 Omniglot PNG as the cached 28x28 uint8 image (ink bright); errors name the file."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            if size == SOURCE_SIZE:
                grey = image.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise OmniglotFormatError(f"{name}: not a readable PNG ({error})") from error
    if size != SOURCE_SIZE:
        raise OmniglotFormatError(
            f"{name}: image is {size[0]}x{size[1]}, expected {SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} (Omniglot PNG)"
        )
    return 255 - np.asarray(grey, dtype=np.uint8)


def _decode(source: Path, listing: Listing) -> np.ndarray:
    out = np.empty((len(listing), DRAWINGS, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    if source.suffix == ".zip":
        with _open_zip(source) as archive:
            for c, members in enumerate(listing.values()):
                for d, member in enumerate(members):
                    try:
                        data = archive.read(member)
                    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as error:
                        raise OmniglotFormatError(f"{source}: cannot read {member} ({error})") from error
                    out[c, d] = decode_png(data, f"{source}:{member}")
    else:
        for c, files in enumerate(listing.values()):
            for d, file in enumerate(files):
                out[c, d] = decode_png(Path(file).read_bytes(), file)
    return out


# ----------------------------------------------------------------------------------------------- cache


@dataclass(frozen=True)
class OmniglotData:
    """The whole dataset at 28x28: ``images`` uint8 ``[characters, 20, 28, 28]``, ink bright (255)."""

    images: np.ndarray
    characters: tuple[str, ...]
    """``'<Alphabet>/characterNN'`` of each row of ``images``."""
    background: int
    """The first ``background`` characters are from images_background, the rest from images_evaluation."""

    def __len__(self) -> int:
        return len(self.characters)

    @property
    def alphabets(self) -> tuple[str, ...]:
        """The alphabet of each character."""
        return tuple(name.split("/", 1)[0] for name in self.characters)


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def cache_paths(sources: dict[str, Path], cache_dir: str | os.PathLike[str] | None = None
                ) -> tuple[Path, Path, dict[str, Any]]:
    """The cache array and metadata paths for ``sources``, and the metadata they must match."""
    meta = {
        "version": CACHE_VERSION,
        "resize": RESIZE,
        "sources": {part: _fingerprint(source) for part, source in sources.items()},
    }
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    directory = cache_directory(cache_dir)
    stem = f"omniglot-{IMAGE_SIZE}px-{key}"
    return directory / f"{stem}.npy", directory / f"{stem}.json", {**meta, "key": key}


def _read_cache(array_path: Path, meta_path: Path, meta: dict[str, Any]) -> OmniglotData | None:
    try:
        stored = json.loads(meta_path.read_text())
        if any(stored.get(k) != v for k, v in meta.items()):
            return None
        images = np.load(array_path, allow_pickle=False)
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    expected = (len(stored["characters"]), DRAWINGS, IMAGE_SIZE, IMAGE_SIZE)
    if images.shape != expected or images.dtype != np.uint8:
        return None
    return OmniglotData(images, tuple(stored["characters"]), int(stored["background"]))


def load_omniglot(root: str | os.PathLike[str] | None = None,
                  cache_dir: str | os.PathLike[str] | None = None) -> OmniglotData:
    """The whole dataset at 28x28, from the cache when it matches the source, else decoded and cached."""
    sources = find_sources(root)
    array_path, meta_path, meta = cache_paths(sources, cache_dir)
    cached = _read_cache(array_path, meta_path, meta)
    if cached is not None:
        return cached
    listings = {part: _list(source, part) for part, source in sources.items()}
    arrays = [_decode(sources[part], listings[part]) for part in PARTS]
    characters = tuple(f"{a}/{c}" for part in PARTS for a, c in listings[part])
    data = OmniglotData(np.concatenate(arrays), characters, len(listings[PARTS[0]]))
    array_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(array_path, lambda f: np.save(f, data.images, allow_pickle=False))
    record = {**meta, "shape": list(data.images.shape), "background": data.background,
              "characters": list(characters)}
    _write_atomic(meta_path, lambda f: f.write(json.dumps(record, indent=1).encode()))
    return data


# ---------------------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class ClassPool:
    """The characters of one split and how many rotations each shows (4 with augmentation, else 1)."""

    characters: np.ndarray
    rotations: int = 1

    @property
    def num_classes(self) -> int:
        """Distinct classes: characters x rotations."""
        return len(self.characters) * self.rotations


def make_splits(data: OmniglotData, split: str = "paper", train_characters: int = 1200, split_seed: int = 1,
                rotations: bool = True) -> dict[str, ClassPool]:
    """The 'train' and 'test' class pools (see the module docstring)."""
    total = len(data)
    if split == "paper":
        if not 0 < train_characters < total:
            raise ValueError(f"omniglot.train_characters must be in 1..{total - 1}, got {train_characters}")
        order = np.random.default_rng(split_seed).permutation(total)
        train, test = np.sort(order[:train_characters]), np.sort(order[train_characters:])
    elif split == "alphabet":
        train, test = np.arange(data.background), np.arange(data.background, total)
    else:
        raise ValueError(f"omniglot.split must be 'paper' or 'alphabet', got {split!r}")
    turns = 4 if rotations else 1
    return {"train": ClassPool(train, turns), "test": ClassPool(test, turns)}


# --------------------------------------------------------------------------------------------- sampler


def check_task_size(ways: int, shots: int, queries: int, characters: int | None = None,
                    drawings: int = DRAWINGS, where: str = "") -> None:
    """Raise ValueError naming the offending value if such tasks cannot be drawn."""
    if ways < 1:
        raise ValueError(f"omniglot.ways must be >= 1, got {ways}")
    if shots < 1:
        raise ValueError(f"omniglot.shots must be >= 1, got {shots}")
    if queries < 1:
        raise ValueError(f"omniglot.queries must be >= 1, got {queries}")
    if shots + queries > drawings:
        raise ValueError(f"omniglot.shots + omniglot.queries = {shots} + {queries} = {shots + queries} "
                         f"exceeds the {drawings} drawings of each character")
    if characters is not None and ways > characters:
        raise ValueError(f"omniglot.ways = {ways} exceeds the {characters} characters of the {where or 'chosen'} "
                         "split")


def sample_task_batch(images: np.ndarray, pool: ClassPool, n: int, ways: int, shots: int, queries: int,
                      rng: np.random.Generator) -> TaskBatch:
    """``n`` N-way K-shot tasks: ``((x [n, N*K, 1, 28, 28], y [n, N*K]), (x [n, N*Q, 1, 28, 28], y))``."""
    check_task_size(ways, shots, queries, len(pool.characters), images.shape[1])
    per_class = shots + queries
    # N distinct characters per task: the N smallest of uniform keys (vectorised sampling without replacement)
    slots = np.argpartition(rng.random((n, len(pool.characters))), ways - 1, axis=1)[:, :ways]
    characters = pool.characters[slots]                                              # [n, N]
    drawings = np.argsort(rng.random((n, ways, images.shape[1])), axis=2)[..., :per_class]  # [n, N, K+Q]
    turns = rng.integers(0, pool.rotations, size=(n, ways))                          # [n, N]
    labels = np.argsort(rng.random((n, ways)), axis=1)                               # a permutation per task
    x = images[characters[:, :, None], drawings]                                     # [n, N, K+Q, 28, 28]
    for k in range(1, pool.rotations):
        chosen = turns == k
        if chosen.any():
            x[chosen] = np.rot90(x[chosen], k, axes=(-2, -1))

    def part(images_: np.ndarray, count: int) -> tuple[Tensor, Tensor]:
        inputs = torch.from_numpy(np.ascontiguousarray(images_).reshape(n, ways * count, 1, *images.shape[2:]))
        targets = torch.from_numpy(np.repeat(labels, count, axis=1))
        return inputs.to(torch.float32).div_(255.0), targets.to(torch.int64)

    return part(x[:, :, :shots], shots), part(x[:, :, shots:], queries)


# ---------------------------------------------------------------------------------------------- domain


class OmniglotDomain:
    """N-way K-shot Omniglot classification for the shared supervised trainer.

    The dataset is loaded on the first ``sample_tasks`` (or ``data``) call; the configuration is checked
    at construction against the standard dataset's sizes, and again against the loaded data.
    """

    name = "omniglot"

    def __init__(self, cfg: OmniglotConfig, data: OmniglotData | None = None) -> None:
        if cfg.model not in ("conv", "mlp"):
            raise ValueError(f"omniglot.model must be 'conv' or 'mlp', got {cfg.model!r}")
        if cfg.split not in ("paper", "alphabet"):
            raise ValueError(f"omniglot.split must be 'paper' or 'alphabet', got {cfg.split!r}")
        if data is None:
            if cfg.split == "paper":
                if not 0 < cfg.train_characters < CHARACTERS:
                    raise ValueError(f"omniglot.train_characters must be in 1..{CHARACTERS - 1}, "
                                     f"got {cfg.train_characters}")
                sizes = {"train": cfg.train_characters, "test": CHARACTERS - cfg.train_characters}
            else:
                sizes = {"train": BACKGROUND_CHARACTERS, "test": CHARACTERS - BACKGROUND_CHARACTERS}
            for split, size in sizes.items():
                check_task_size(cfg.ways, cfg.shots, cfg.queries, size, where=f"{cfg.split} {split}")
        self.cfg = cfg
        self._data = data
        self._pools: dict[str, ClassPool] | None = None

    @property
    def data(self) -> OmniglotData:
        """The dataset (loaded, from the cache when possible, on first use)."""
        if self._data is None:
            self._data = load_omniglot(self.cfg.root or None, self.cfg.cache_dir or None)
        return self._data

    @property
    def pools(self) -> dict[str, ClassPool]:
        """The 'train' and 'test' class pools."""
        if self._pools is None:
            cfg = self.cfg
            pools = make_splits(self.data, cfg.split, cfg.train_characters, cfg.split_seed, cfg.rotations)
            for split, pool in pools.items():
                check_task_size(cfg.ways, cfg.shots, cfg.queries, len(pool.characters),
                                self.data.images.shape[1], where=f"{cfg.split} {split}")
            self._pools = pools
        return self._pools

    def build_model(self, seed: int) -> nn.Module:
        """The conv net or the MLP of the paper (see :mod:`rlmaml.supervised.models`), seeded."""
        bn_steps = max(self.cfg.test_steps, 1) if self.cfg.per_step_bn else 1  # later steps reuse the last set
        return seeded_init(seed, lambda: build_network(self.cfg.model, self.cfg.ways, bn_steps=bn_steps))

    def sample_tasks(self, n: int, rng: np.random.Generator, split: str = "train", shots: int | None = None,
                     queries: int | None = None) -> TaskBatch:
        """``n`` tasks of ``split`` ('train' or 'test') stacked along a leading task dimension."""
        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return sample_task_batch(self.data.images, self.pools[split], n, self.cfg.ways,
                                 shots or self.cfg.shots, queries or self.cfg.queries, rng)

    def loss_fn(self, model: nn.Module) -> LossFn:
        """Cross-entropy of the model run functionally with ``params``."""
        return model_loss(model, F.cross_entropy, per_step=self.cfg.per_step_bn)

    def metrics(self, model: nn.Module, params: Params, batch: Any, step: int = 0) -> dict[str, Tensor]:
        """Cross-entropy and accuracy of ``params`` on one task's ``(inputs, labels)``.

        Batch norm normalises with the statistics of this batch (the query set), as the original code.
        """
        inputs, labels = batch
        kwargs = {"step": step} if self.cfg.per_step_bn else {}
        logits = functional_call(model, params, (inputs,), kwargs)
        return {"loss": F.cross_entropy(logits, labels),
                "accuracy": (logits.argmax(-1) == labels).to(logits.dtype).mean()}

    def preferred_batching(self, device: torch.device) -> str:
        """'loop' on CPU (measured), 'vmap' on CUDA (a guess, not measured).

        One second-order 5-way 1-shot meta-step (conv net, meta-batch 32, 15 queries, 1 inner step) through
        ``meta_objective`` on a 2-core CPU, torch 2.13, one thread, median of interleaved repeats: loop
        1.03 s vs vmap 2.15 s on a quiet machine, 1.75 s vs 3.44 s under load
        (``benchmarks/omniglot_speed.py``; 20-way 1-shot, 5 steps: 3.76 s vs 4.97 s). Under vmap each
        adapted conv becomes a grouped convolution, slower on CPU than T dense ones, and batch norm takes
        its slower composite form (see :mod:`rlmaml.supervised.models`). On a GPU the loop launches ~T
        times as many small kernels, so vmap should win there; this has not been measured.
        """
        return "vmap" if torch.device(device).type == "cuda" else "loop"
