"""The Omniglot images: finding the published zips (or folders), decoding, and the 28x28 cache.

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
from PIL import Image, UnidentifiedImageError

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
