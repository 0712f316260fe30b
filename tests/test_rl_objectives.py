"""Specifications of rlmaml.rl.objectives: advantages, inner losses, and the outer TRPO/PPO terms."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, hessian

from rlmaml.meta import Params, adapt, params_of
from rlmaml.rl.episodes import Episodes
from rlmaml.rl.objectives import (
    advantages,
    detached_distribution,
    inner_loss,
    log_probs,
    lvc_loss,
    mean_kl,
    ppo_clip_loss,
    reinforce_loss,
    surrogate_loss,
    with_advantages,
)
from rlmaml.rl.policies import GaussianMLPPolicy, flat_params, set_flat_params


def _setup(seed: int = 0, T: int = 6, K: int = 4, d: int = 2) -> tuple[GaussianMLPPolicy, Params, Episodes]:
    """A tiny float64 Gaussian policy and padded episodes whose actions were sampled from it."""
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(d, 1, hidden=(5,), init_std=0.7).double()
    params = params_of(policy)
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(T, K, d, generator=g, dtype=torch.float64)
    with torch.no_grad():
        dist = policy(obs).base_dist
        actions = torch.normal(dist.loc, dist.scale, generator=g)
    mask = (torch.arange(T).unsqueeze(1) < torch.tensor([T, T - 1, 3, 2][:K])).double()
    rewards = -(actions.squeeze(-1) - obs[..., 0]) ** 2
    return policy, params, with_advantages(Episodes(obs, actions, rewards, mask), gamma=0.9)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum()


def test_advantages_are_normalised_over_valid_steps_and_zero_on_padding() -> None:
    _, _, ep = _setup()
    adv = advantages(ep, gamma=0.9)
    valid = adv[ep.mask > 0]
    torch.testing.assert_close(valid.mean(), torch.tensor(0.0, dtype=adv.dtype), atol=1e-6, rtol=0)
    one = torch.tensor(1.0, dtype=adv.dtype)
    torch.testing.assert_close(valid.std(unbiased=False), one, atol=1e-6, rtol=0)
    assert bool((adv[ep.mask == 0] == 0).all())
    assert not adv.requires_grad


def test_with_advantages_fills_returns_and_advantages() -> None:
    _, _, ep = _setup()
    assert ep.returns is not None and ep.advantages is not None
    torch.testing.assert_close(ep.advantages, advantages(ep, gamma=0.9))


def test_reinforce_loss_is_minus_masked_mean_of_logp_times_advantage() -> None:
    policy, params, ep = _setup()
    logp = policy(ep.observations).log_prob(ep.actions)
    expected = -_masked_mean(logp * ep.advantages, ep.mask)
    torch.testing.assert_close(reinforce_loss(policy)(params, ep), expected)


def test_losses_need_advantages() -> None:
    policy, params, ep = _setup()
    ep.advantages = None
    with pytest.raises(ValueError):
        reinforce_loss(policy)(params, ep)


def test_lvc_has_the_value_and_first_gradient_of_reinforce() -> None:
    policy, params, ep = _setup()
    p = {n: v.detach() for n, v in params.items()}
    torch.testing.assert_close(lvc_loss(policy)(p, ep), reinforce_loss(policy)(p, ep))
    g_lvc = grad(lvc_loss(policy))(p, ep)
    g_rf = grad(reinforce_loss(policy))(p, ep)
    for n in p:
        torch.testing.assert_close(g_lvc[n], g_rf[n])


def test_lvc_hessian_adds_the_sampling_distribution_term() -> None:
    policy, params, ep = _setup()
    template = {n: v.detach() for n, v in params.items()}
    theta = flat_params(template)

    def flat_loss(loss_fn):
        return lambda flat: loss_fn(set_flat_params(template, flat), ep)

    h_lvc = hessian(flat_loss(lvc_loss(policy)))(theta)
    h_rf = hessian(flat_loss(reinforce_loss(policy)))(theta)
    # per-step score vectors ∇ log π(a_t|s_t): [T*K, P]
    jac = torch.func.jacrev(
        lambda flat: log_probs(policy, set_flat_params(template, flat), ep).reshape(-1)
    )(theta)
    w = (ep.mask * ep.advantages).reshape(-1) / ep.mask.sum()
    extra = -(jac * w.unsqueeze(1)).T @ jac
    torch.testing.assert_close(h_lvc - h_rf, extra)


def test_inner_loss_selects_by_name() -> None:
    policy, params, ep = _setup()
    rf = reinforce_loss(policy)(params, ep)
    torch.testing.assert_close(inner_loss(policy, "reinforce")(params, ep), rf)
    torch.testing.assert_close(inner_loss(policy, "lvc")(params, ep), lvc_loss(policy)(params, ep))
    with pytest.raises(ValueError):
        inner_loss(policy, "dice-typo")  # type: ignore[arg-type]


def test_second_order_meta_gradient_matches_central_finite_differences() -> None:
    """d/dθ surrogate(adapt(θ)) through the inner REINFORCE step, against central differences."""
    policy, params, train = _setup(seed=1)
    _, _, val = _setup(seed=2)
    template = {n: v.detach() for n, v in params.items()}
    inner = reinforce_loss(policy)
    lr = 0.3
    with torch.no_grad():
        old_logp = log_probs(policy, adapt(inner, template, train, lr=lr), val)

    def objective(flat: torch.Tensor, first_order: bool = False) -> torch.Tensor:
        phi = adapt(inner, set_flat_params(template, flat), train, steps=2, lr=lr, first_order=first_order)
        return surrogate_loss(policy, phi, val, old_logp)

    theta = flat_params(template).clone().requires_grad_(True)
    (meta_grad,) = torch.autograd.grad(objective(theta), theta)
    (fo_grad,) = torch.autograd.grad(objective(theta, first_order=True), theta)
    eps = 1e-6
    fd = torch.stack([
        (objective(theta.detach() + eps * e) - objective(theta.detach() - eps * e)) / (2 * eps)
        for e in torch.eye(theta.numel(), dtype=theta.dtype)
    ])
    torch.testing.assert_close(meta_grad, fd, rtol=1e-5, atol=1e-7)
    assert (meta_grad - fo_grad).norm() > 1e-3 * meta_grad.norm()  # the second-order term matters here


def test_surrogate_at_the_sampling_params_has_the_reinforce_gradient() -> None:
    policy, params, ep = _setup()
    old_logp = log_probs(policy, params, ep).detach()
    torch.testing.assert_close(
        surrogate_loss(policy, params, ep, old_logp), -_masked_mean(ep.advantages, ep.mask)
    )
    g_sur = torch.autograd.grad(surrogate_loss(policy, params, ep, old_logp), list(params.values()))
    g_rf = torch.autograd.grad(reinforce_loss(policy)(params, ep), list(params.values()))
    for a, b in zip(g_sur, g_rf, strict=True):
        torch.testing.assert_close(a, b)


def test_ppo_clip_equals_surrogate_inside_the_clip_range_and_is_flat_outside() -> None:
    policy, params, ep = _setup()
    old_logp = log_probs(policy, params, ep).detach()
    torch.testing.assert_close(
        ppo_clip_loss(policy, params, ep, old_logp), surrogate_loss(policy, params, ep, old_logp)
    )
    # Ratios far beyond the clip range on the side where it binds (r > 1+ε with A > 0, r < 1-ε with
    # A < 0): every term is clipped, so the loss is constant in the parameters.
    far_old = old_logp - 5.0 * torch.sign(ep.advantages)
    loss = ppo_clip_loss(policy, params, ep, far_old, clip=0.2)
    clipped = ep.advantages * (1 + 0.2 * torch.sign(ep.advantages))
    torch.testing.assert_close(loss, -_masked_mean(clipped, ep.mask))
    for g in torch.autograd.grad(loss, list(params.values()), allow_unused=True):
        assert g is None or bool((g == 0).all())


def test_mean_kl_is_zero_at_the_old_params_and_positive_elsewhere() -> None:
    policy, params, ep = _setup()
    old = detached_distribution(policy, params, ep)
    kl0 = mean_kl(policy, old, params, ep)
    torch.testing.assert_close(kl0, torch.tensor(0.0, dtype=kl0.dtype))
    moved = {n: p + 0.1 for n, p in params.items()}
    assert mean_kl(policy, old, moved, ep) > 0


def test_mean_kl_averages_over_valid_steps_only() -> None:
    policy, params, ep = _setup()
    old = detached_distribution(policy, params, ep)
    moved = {n: p.detach() + 0.1 for n, p in params.items()}
    new = functional_call(policy, moved, (ep.observations,))
    per_step = torch.distributions.kl_divergence(old, new)
    torch.testing.assert_close(mean_kl(policy, old, moved, ep), _masked_mean(per_step, ep.mask))
