"""Few-shot Omniglot classification (paper section 5.2): splits, task sampler, domain.

The images and their cache: :mod:`rlmaml.supervised.omniglot_data`.

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

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from rlmaml.config import OmniglotConfig
from rlmaml.meta import LossFn, Params, model_loss
from rlmaml.supervised.domain import TaskBatch, seeded_init
from rlmaml.supervised.models import build_network
from rlmaml.supervised.omniglot_data import (  # noqa: F401  (re-exported: the dataset's public names)
    BACKGROUND_CHARACTERS,
    CHARACTERS,
    DRAWINGS,
    IMAGE_SIZE,
    OmniglotData,
    OmniglotFormatError,
    OmniglotNotFoundError,
    find_sources,
    load_omniglot,
)

SPLITS = ("train", "test")


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
