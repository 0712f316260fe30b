"""Seeded randomness passed in explicitly: every random number of a run derives from the run seed."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")


def iteration_rng(seed: int, iteration: int, stream: int = 0) -> np.random.Generator:
    """The task generator of one iteration, derived from (seed, iteration, stream).

    Deriving it rather than carrying one generator through the run makes resume exact: the RNG state to
    save is just (seed, next iteration).
    """
    return np.random.default_rng([seed, iteration, stream])


def seeded_init(seed: int, build: Callable[[], T]) -> T:
    """Build (e.g. a module) with torch's global RNG forked and seeded, leaving the caller's RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
