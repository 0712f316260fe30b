"""Summary statistics shared by every evaluation: mean and 95% confidence interval."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal confidence interval, 1.96 * std / sqrt(n).

    ``std`` is the population standard deviation (ddof=0), as in the MAML paper's evaluation code.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    return float(x.mean()), float(1.96 * x.std() / math.sqrt(x.size))
