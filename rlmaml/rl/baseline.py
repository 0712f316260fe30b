"""The linear feature baseline of rllab / the MAML paper, fitted by ridge least squares.

Features per step: ``clip(obs, ±10)``, ``clip(obs, ±10)²``, ``t/100``, ``(t/100)²``, ``(t/100)³``, ``1``.
It is refitted per task on the very episodes it is used for (as in the paper), so it has no state worth
keeping between tasks; ``LinearFeatureBaseline`` is a thin holder of the last weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlmaml.rl.episodes import Episodes

DEFAULT_REG = 1e-5
DEFAULT_TRIES = 5


def linear_baseline_features(observations: Tensor, mask: Tensor) -> Tensor:
    """``[T, K, 2·obs_dim + 4]`` features, zeroed on padding so padded rows drop out of the fit."""
    T, K = mask.shape
    obs = observations.reshape(T, K, -1).clamp(-10.0, 10.0)
    t = (torch.arange(T, dtype=obs.dtype, device=obs.device) / 100.0).view(T, 1, 1).expand(T, K, 1)
    feats = torch.cat([obs, obs**2, t, t**2, t**3, torch.ones_like(t)], dim=-1)
    return feats * mask.unsqueeze(-1).to(feats.dtype)


def fit_linear_baseline(
    features: Tensor, returns: Tensor, mask: Tensor, reg: float = DEFAULT_REG, tries: int = DEFAULT_TRIES
) -> Tensor:
    """Ridge weights ``w = (XᵀX + reg·I)⁻¹ Xᵀy`` over the valid steps, ``[F]``.

    Solved in float64 by Cholesky. While the system is not positive definite or the solution is not
    finite, ``reg`` is multiplied by 10 (up to ``tries`` attempts, as rllab does). If every attempt fails
    (only possible with non-finite data) the weights are zero, i.e. no baseline, which keeps the
    advantages unbiased rather than poisoning them.
    """
    F = features.shape[-1]
    m = mask.reshape(-1, 1).to(torch.float64)
    x = features.reshape(-1, F).to(torch.float64) * m
    y = returns.reshape(-1, 1).to(torch.float64) * m
    xtx = x.T @ x
    xty = x.T @ y
    eye = torch.eye(F, dtype=torch.float64, device=x.device)
    for _ in range(tries):
        chol, info = torch.linalg.cholesky_ex(xtx + reg * eye)
        if int(info) == 0:
            w = torch.cholesky_solve(xty, chol).reshape(F)
            if bool(torch.isfinite(w).all()):
                return w.to(features.dtype)
        reg *= 10.0
    return torch.zeros(F, dtype=features.dtype, device=features.device)


class LinearFeatureBaseline:
    """``fit`` on one task's episodes and returns, then ``predict`` values ``[T, K]`` (0 on padding)."""

    def __init__(self, reg: float = DEFAULT_REG, tries: int = DEFAULT_TRIES) -> None:
        self.reg = reg
        self.tries = tries
        self.weights: Tensor | None = None

    def fit(self, episodes: Episodes, returns: Tensor) -> LinearFeatureBaseline:
        """Fit the weights to ``returns`` ``[T, K]`` over the episodes' valid steps (no gradient)."""
        with torch.no_grad():
            feats = linear_baseline_features(episodes.observations, episodes.mask)
            self.weights = fit_linear_baseline(feats, returns, episodes.mask, self.reg, self.tries)
        return self

    def predict(self, episodes: Episodes) -> Tensor:
        """``[T, K]`` predicted values, zero on padding."""
        if self.weights is None:
            raise RuntimeError("LinearFeatureBaseline.predict called before fit")
        with torch.no_grad():
            feats = linear_baseline_features(episodes.observations, episodes.mask)
            return feats @ self.weights.to(feats)
