"""Policy-gradient losses for MAML-RL: inner losses for ``rlmaml.meta.adapt`` and TRPO/PPO outer terms.

Inner losses are closures ``loss(params, episodes) -> scalar`` (a ``rlmaml.meta.LossFn``) that read the
precomputed, detached ``episodes.advantages``; attach those first with ``with_advantages``.
Every mean is over valid (unpadded) steps.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, kl_divergence

from rlmaml.meta import LossFn, Params
from rlmaml.rl.baseline import LinearFeatureBaseline
from rlmaml.rl.episodes import Episodes, discounted_returns, gae, masked_mean
from rlmaml.rl.episodes import normalize as normalize_masked
from rlmaml.rl.policies import policy_distribution

InnerLossKind = Literal["reinforce", "lvc"]


def advantages(episodes: Episodes, gamma: float = 0.99, lam: float = 1.0, normalize: bool = True) -> Tensor:
    """``[T, K]`` advantages: linear baseline fitted on the episodes' own discounted returns, then GAE,
    then (optionally) masked normalisation. Computed without gradient."""
    return _returns_and_advantages(episodes, gamma, lam, normalize)[1]


def with_advantages(
    episodes: Episodes, gamma: float = 0.99, lam: float = 1.0, normalize: bool = True
) -> Episodes:
    """A copy of ``episodes`` with ``returns`` (discounted) and ``advantages`` filled in."""
    returns, adv = _returns_and_advantages(episodes, gamma, lam, normalize)
    return replace(episodes, returns=returns, advantages=adv)


def _returns_and_advantages(
    episodes: Episodes, gamma: float, lam: float, normalize: bool
) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        returns = discounted_returns(episodes.rewards, episodes.mask, gamma)
        values = LinearFeatureBaseline().fit(episodes, returns).predict(episodes)
        adv = gae(episodes.rewards, values, episodes.mask, gamma, lam)
        return returns, (normalize_masked(adv, episodes.mask) if normalize else adv)


def log_probs(policy: nn.Module, params: Params, episodes: Episodes) -> Tensor:
    """``[T, K]`` log π_params(a_t | s_t) of the episodes' actions (0 on padding)."""
    dist = policy_distribution(policy, params, episodes.observations)
    logp = dist.log_prob(episodes.actions)
    return torch.where(episodes.mask > 0, logp, torch.zeros_like(logp))


def _advantages_of(episodes: Episodes) -> Tensor:
    if episodes.advantages is None:
        raise ValueError("episodes.advantages is not set; use rlmaml.rl.objectives.with_advantages first")
    return episodes.advantages.detach()


def reinforce_loss(policy: nn.Module) -> LossFn:
    """The paper's inner loss: ``-Σ mask · log π(a|s) · A / Σ mask`` (A detached)."""

    def loss(params: Params, episodes: Episodes) -> Tensor:
        return -masked_mean(log_probs(policy, params, episodes) * _advantages_of(episodes), episodes.mask)

    return loss


def lvc_loss(policy: nn.Module) -> LossFn:
    """ProMP's low-variance curvature inner loss, ``-Σ mask · exp(logp - ⊥logp) · A / Σ mask``.

    It has the same first gradient as ``reinforce_loss``. Its Hessian adds ``A ∇logp ∇logpᵀ``: the
    sampling-distribution term, so the second-order meta-gradient accounts for the pre-update policy
    having generated the data. The constant ``(⊥logp - 1)·A`` is added so that the value also equals
    REINFORCE's; a constant changes no derivative of any order. ``detach`` stops gradients at every
    ``torch.func`` level, as this needs.
    """

    def loss(params: Params, episodes: Episodes) -> Tensor:
        logp = log_probs(policy, params, episodes)
        stopped = logp.detach()
        surrogate = torch.exp(logp - stopped) - 1.0 + stopped
        return -masked_mean(surrogate * _advantages_of(episodes), episodes.mask)

    return loss


def inner_loss(policy: nn.Module, kind: InnerLossKind = "reinforce") -> LossFn:
    """The inner loss selected by name: ``"reinforce"`` (the paper) or ``"lvc"`` (ProMP)."""
    if kind == "reinforce":
        return reinforce_loss(policy)
    if kind == "lvc":
        return lvc_loss(policy)
    raise ValueError(f"inner loss must be 'reinforce' or 'lvc', got {kind!r}")


def surrogate_loss(
    policy: nn.Module, params_new: Params, episodes: Episodes, old_log_probs: Tensor
) -> Tensor:
    """TRPO surrogate ``-mean_valid exp(logp_new - old_logp) · A`` (lower is better)."""
    ratio = torch.exp(log_probs(policy, params_new, episodes) - old_log_probs.detach())
    return -masked_mean(ratio * _advantages_of(episodes), episodes.mask)


def ppo_clip_loss(
    policy: nn.Module, params_new: Params, episodes: Episodes, old_log_probs: Tensor, clip: float = 0.2
) -> Tensor:
    """PPO/ProMP clipped surrogate ``-mean_valid min(r·A, clip(r, 1±ε)·A)`` (lower is better)."""
    ratio = torch.exp(log_probs(policy, params_new, episodes) - old_log_probs.detach())
    adv = _advantages_of(episodes)
    objective = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    return -masked_mean(objective, episodes.mask)


def detached_distribution(policy: nn.Module, params: Params, episodes: Episodes) -> Distribution:
    """The policy's distribution on the episodes' observations with every input detached: π_old."""
    with torch.no_grad():
        return policy_distribution(policy, {n: p.detach() for n, p in params.items()}, episodes.observations)


def policy_kl(old: Distribution, new: Distribution) -> Tensor:
    """KL(old || new) per sample; a vmap-safe form for Categorical (torch's masks out zero probabilities)."""
    if isinstance(old, Categorical) and isinstance(new, Categorical):
        return (old.probs * (old.logits - new.logits)).sum(-1)
    return kl_divergence(old, new)


def mean_kl(policy: nn.Module, old: Distribution, params_new: Params, episodes: Episodes) -> Tensor:
    """``mean_valid KL(π_old || π_new)``; ``old`` from ``detached_distribution`` on the same episodes."""
    new = policy_distribution(policy, params_new, episodes.observations)
    kl = policy_kl(old, new)
    return masked_mean(torch.where(episodes.mask > 0, kl, torch.zeros_like(kl)), episodes.mask)
