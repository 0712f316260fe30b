"""Specifications of rlmaml.rl.policies: distributions, acting with a generator, parameter plumbing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from rlmaml.meta import params_of
from rlmaml.rl.policies import (
    CategoricalMLPPolicy,
    GaussianMLPPolicy,
    act,
    actions_from_noise,
    draw_noise,
    flat_params,
    make_policy,
    params_from_numpy,
    params_to_numpy,
    policy_distribution,
    set_flat_params,
    to_env_actions,
)


def test_gaussian_policy_gives_one_log_prob_per_sample() -> None:
    policy = GaussianMLPPolicy(3, 2, hidden=(8, 8))
    obs = torch.randn(5, 4, 3)
    dist = policy(obs)
    assert dist.batch_shape == (5, 4)
    assert dist.event_shape == (2,)
    assert dist.log_prob(torch.zeros(5, 4, 2)).shape == (5, 4)


def test_gaussian_log_std_starts_at_log_init_std() -> None:
    policy = GaussianMLPPolicy(3, 2, init_std=0.5)
    assert policy.log_std.shape == (2,)
    torch.testing.assert_close(policy.log_std.data, torch.full((2,), math.log(0.5)))
    torch.testing.assert_close(policy(torch.zeros(1, 3)).base_dist.scale, torch.full((1, 2), 0.5))


def test_gaussian_std_never_falls_below_min_std() -> None:
    policy = GaussianMLPPolicy(3, 2, min_std=1e-2)
    with torch.no_grad():
        policy.log_std.fill_(-50.0)
    torch.testing.assert_close(policy(torch.zeros(1, 3)).base_dist.scale, torch.full((1, 2), 1e-2))


def test_gaussian_log_std_gets_gradient_above_the_floor() -> None:
    policy = GaussianMLPPolicy(3, 2)
    policy(torch.randn(4, 3)).log_prob(torch.randn(4, 2)).sum().backward()
    assert policy.log_std.grad is not None and bool((policy.log_std.grad != 0).all())


def test_categorical_policy_shapes() -> None:
    policy = CategoricalMLPPolicy(3, 4, hidden=(8,))
    dist = policy(torch.randn(5, 2, 3))
    assert dist.batch_shape == (5, 2)
    assert dist.log_prob(torch.zeros(5, 2, dtype=torch.long)).shape == (5, 2)


def test_make_policy_picks_by_action_space() -> None:
    obs = spaces.Box(-1.0, 1.0, shape=(3,))
    gauss = make_policy(obs, spaces.Box(-1.0, 1.0, shape=(2,)), hidden=(8,), init_std=1.0, min_std=1e-6)
    cat = make_policy(obs, spaces.Discrete(5), hidden=(8,), init_std=1.0, min_std=1e-6)
    assert isinstance(gauss, GaussianMLPPolicy) and gauss.act_dim == 2
    assert isinstance(cat, CategoricalMLPPolicy) and cat.n_actions == 5
    with pytest.raises(TypeError):
        make_policy(obs, spaces.MultiBinary(3), hidden=(8,), init_std=1.0, min_std=1e-6)


def test_policy_distribution_uses_the_given_params_not_the_modules() -> None:
    policy = GaussianMLPPolicy(3, 2, hidden=(8,))
    params = {n: p.detach() + 1.0 for n, p in params_of(policy).items()}
    obs = torch.randn(4, 3)
    loc = policy_distribution(policy, params, obs).base_dist.loc
    torch.testing.assert_close(loc, torch.func.functional_call(policy, params, (obs,)).base_dist.loc)
    assert not torch.allclose(loc, policy(obs).base_dist.loc)


@pytest.mark.parametrize("discrete", [False, True])
def test_act_is_deterministic_given_the_generator_seed(discrete: bool) -> None:
    torch.manual_seed(0)
    policy = CategoricalMLPPolicy(3, 4, hidden=(8,)) if discrete else GaussianMLPPolicy(3, 2, hidden=(8,))
    params = params_of(policy)
    obs = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    a1 = act(policy, params, obs, torch.Generator().manual_seed(7))
    a2 = act(policy, params, obs, torch.Generator().manual_seed(7))
    a3 = act(policy, params, obs, torch.Generator().manual_seed(8))
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, a3)
    assert a1.shape == ((6,) if discrete else (6, 2))
    assert a1.dtype == (np.int64 if discrete else np.float32)


def test_gaussian_actions_from_noise_are_mean_plus_std_times_the_standard_normals() -> None:
    policy = GaussianMLPPolicy(3, 2, hidden=(8,), init_std=0.5)
    mean, std = policy(torch.ones(4, 3), stats_only=True)
    noise = draw_noise(policy, (4,), torch.Generator().manual_seed(0))
    assert noise.shape == (4, 2)
    expected = (mean + std * noise).detach().numpy()
    np.testing.assert_allclose(actions_from_noise(policy, (mean, std), noise), expected, rtol=1e-6)
    np.testing.assert_array_equal(actions_from_noise(policy, (mean, std), None), mean.detach().numpy())


def test_categorical_actions_from_uniform_noise_follow_the_policy_probabilities() -> None:
    """Inverse-CDF sampling: uniforms in [0, p0) give action 0, [p0, p0+p1) action 1, and so on."""
    policy = CategoricalMLPPolicy(3, 3, hidden=(8,))
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]])).expand(4, 3)
    noise = torch.tensor([0.1, 0.3, 0.69, 0.999])
    assert actions_from_noise(policy, (logits,), noise).tolist() == [0, 1, 1, 2]
    many = draw_noise(policy, (20000,), torch.Generator().manual_seed(0))
    counts = np.bincount(actions_from_noise(policy, (logits[:1].expand(20000, 3),), many), minlength=3)
    np.testing.assert_allclose(counts / 20000, [0.2, 0.5, 0.3], atol=0.015)


def test_act_deterministic_returns_the_mean() -> None:
    policy = GaussianMLPPolicy(3, 2, hidden=(8,))
    obs = np.ones((4, 3), dtype=np.float32)
    a = act(policy, params_of(policy), obs, torch.Generator(), deterministic=True)
    np.testing.assert_allclose(a, policy(torch.from_numpy(obs)).base_dist.loc.detach().numpy())


def test_flat_params_round_trip_is_exact_and_differentiable() -> None:
    policy = GaussianMLPPolicy(3, 2, hidden=(8,))
    params = params_of(policy)
    flat = flat_params(params)
    assert flat.shape == (sum(p.numel() for p in params.values()),)
    back = set_flat_params(params, flat)
    assert list(back) == list(params)
    for name in params:
        torch.testing.assert_close(back[name], params[name])
    back["log_std"].sum().backward()
    assert policy.log_std.grad is not None
    with pytest.raises(ValueError):
        set_flat_params(params, flat[:-1])


def test_numpy_params_round_trip() -> None:
    policy = CategoricalMLPPolicy(3, 4, hidden=(8,))
    params = params_of(policy)
    back = params_from_numpy(params_to_numpy(params), "cpu", requires_grad=True)
    for name in params:
        torch.testing.assert_close(back[name], params[name].detach())
        assert back[name].is_leaf and back[name].requires_grad


def test_to_env_actions_maps_minus_one_one_onto_the_box_and_leaves_unbounded_dims() -> None:
    box = spaces.Box(low=np.array([-0.1, 0.0, -np.inf]), high=np.array([0.1, 2.0, np.inf]), dtype=np.float32)
    a = np.array([[-1.0, -1.0, 7.0], [0.0, 0.5, -3.0], [1.0, 1.0, 0.0]], dtype=np.float32)
    out = to_env_actions(a, box)
    np.testing.assert_allclose(out, [[-0.1, 0.0, 7.0], [0.0, 1.5, -3.0], [0.1, 2.0, 0.0]], rtol=1e-6)
    assert out.dtype == np.float32
    discrete = np.array([1, 0])
    assert to_env_actions(discrete, spaces.Discrete(2)) is discrete
