"""Specifications of rlmaml.rl.baseline: rllab's linear feature baseline."""

from __future__ import annotations

import numpy as np
import torch

from rlmaml.rl.baseline import LinearFeatureBaseline, fit_linear_baseline, linear_baseline_features
from rlmaml.rl.episodes import Episodes


def _episodes(T: int = 12, K: int = 4, d: int = 3, seed: int = 0) -> Episodes:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(T).unsqueeze(1) < torch.tensor([T, T - 3, 5, 2][:K])).float()
    return Episodes(
        observations=torch.randn(T, K, d, generator=g) * 6.0,
        actions=torch.zeros(T, K, 1),
        rewards=torch.randn(T, K, generator=g),
        mask=mask,
    )


def test_features_are_rllabs() -> None:
    obs = torch.tensor([[[20.0, -1.0]], [[0.5, -30.0]]])  # T=2, K=1, d=2
    feats = linear_baseline_features(obs, torch.ones(2, 1))
    expected = torch.tensor([
        [10.0, -1.0, 100.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        [0.5, -10.0, 0.25, 100.0, 0.01, 1e-4, 1e-6, 1.0],
    ]).unsqueeze(1)
    torch.testing.assert_close(feats, expected)


def test_features_are_zero_on_padding() -> None:
    ep = _episodes()
    feats = linear_baseline_features(ep.observations, ep.mask)
    assert bool((feats[ep.mask == 0] == 0).all())


def test_fit_matches_closed_form_ridge_solution() -> None:
    ep = _episodes()
    returns = torch.randn(ep.mask.shape, generator=torch.Generator().manual_seed(1))
    feats = linear_baseline_features(ep.observations, ep.mask)
    w = fit_linear_baseline(feats, returns, ep.mask, reg=1e-5)

    valid = ep.mask.numpy().astype(bool)
    x = feats.numpy().astype(np.float64)[valid]
    y = returns.numpy().astype(np.float64)[valid]
    f = x.shape[1]
    # ridge as an augmented least-squares problem: min |Xw - y|² + reg |w|²
    x_aug = np.vstack([x, np.sqrt(1e-5) * np.eye(f)])
    y_aug = np.concatenate([y, np.zeros(f)])
    expected = np.linalg.lstsq(x_aug, y_aug, rcond=None)[0]
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-3, atol=1e-4)


def test_fit_ignores_returns_on_padding() -> None:
    ep = _episodes()
    returns = torch.randn(ep.mask.shape)
    noisy = returns + 1e3 * (1 - ep.mask)
    a = LinearFeatureBaseline().fit(ep, returns).weights
    b = LinearFeatureBaseline().fit(ep, noisy).weights
    torch.testing.assert_close(a, b)


def test_predict_recovers_a_target_in_the_feature_span() -> None:
    ep = _episodes(T=30, K=4)
    feats = linear_baseline_features(ep.observations, ep.mask)
    true_w = torch.randn(feats.shape[-1], generator=torch.Generator().manual_seed(2))
    returns = feats @ true_w
    values = LinearFeatureBaseline(reg=1e-10).fit(ep, returns).predict(ep)
    torch.testing.assert_close(values, returns, rtol=1e-3, atol=1e-3)
    assert bool((values[ep.mask == 0] == 0).all())


def test_fit_on_non_finite_data_falls_back_to_zero_weights() -> None:
    ep = _episodes()
    returns = torch.full(ep.mask.shape, float("nan"))
    w = LinearFeatureBaseline().fit(ep, returns).weights
    assert w is not None and bool((w == 0).all())
