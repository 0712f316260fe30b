"""The stacked MAML-RL objective: its fast curvature and gradient equal naive double backprop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlmaml.rl.episodes import Episodes
from rlmaml.rl.learning.maml_objective import MamlRlObjective, MetaBatch
from rlmaml.rl.learning.trpo import hessian_vector_product
from rlmaml.rl.objectives import inner_loss, with_advantages
from rlmaml.rl.policies import CategoricalMLPPolicy, GaussianMLPPolicy


def random_episodes(rng: np.random.Generator, t: int, k: int, obs_dim: int, act_dim: int | None,
                    n_actions: int = 3) -> Episodes:
    """A padded batch with random data and a ragged mask (float64)."""
    lengths = rng.integers(t // 2, t + 1, size=k)
    mask = (np.arange(t)[:, None] < lengths[None, :]).astype(np.float64)
    actions = rng.normal(size=(t, k, act_dim)) if act_dim else rng.integers(0, n_actions, size=(t, k))
    ep = Episodes(torch.tensor(rng.normal(size=(t, k, obs_dim))), torch.tensor(actions),
                  torch.tensor(rng.normal(size=(t, k)) * mask), torch.tensor(mask))
    return with_advantages(ep, 0.99, 1.0)


def make_objective(policy: torch.nn.Module, steps: int, first_order: bool, discrete: bool,
                   kind: str = "reinforce") -> MamlRlObjective:
    rng = np.random.default_rng(0)
    tasks = [[random_episodes(rng, 12, 4, 3, None if discrete else 2) for _ in range(steps + 1)] for _ in range(3)]
    return MamlRlObjective(policy, inner_loss(policy, kind), 0.5, first_order, MetaBatch.from_tasks(tasks))


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("discrete", [False, True])
def test_fast_curvature_and_gradient_equal_double_backprop(steps: int, first_order: bool, discrete: bool) -> None:
    torch.manual_seed(0)
    policy = (CategoricalMLPPolicy(3, 3, (8,)) if discrete else GaussianMLPPolicy(3, 2, (8,))).double()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in policy.named_parameters()}
    obj = make_objective(policy, steps, first_order, discrete)
    phis, old_logp, gradient, hvp = obj.trpo_terms(params, damping=0.0)
    leaves = list(params.values())
    reference_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(obj.surrogate(params, old_logp), leaves)])
    reference_hvp = hessian_vector_product(lambda: obj.kl(params, phis), leaves, 0.0)
    torch.testing.assert_close(gradient, reference_grad, rtol=1e-9, atol=1e-12)
    for seed in range(2):
        v = torch.randn(gradient.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        torch.testing.assert_close(hvp(v), reference_hvp(v), rtol=1e-8, atol=1e-12)


def test_curvature_is_symmetric_positive_semidefinite() -> None:
    torch.manual_seed(1)
    policy = GaussianMLPPolicy(3, 2, (8,)).double()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in policy.named_parameters()}
    _, _, gradient, hvp = make_objective(policy, 1, False, False).trpo_terms(params, damping=0.0)
    gen = torch.Generator().manual_seed(0)
    u, v = (torch.randn(gradient.shape, generator=gen, dtype=torch.float64) for _ in range(2))
    assert float(u @ hvp(v)) == pytest.approx(float(v @ hvp(u)), rel=1e-8)
    assert float(v @ hvp(v)) >= -1e-12


def test_lvc_inner_loss_changes_the_meta_gradient_but_not_the_old_policy() -> None:
    torch.manual_seed(2)
    policy = GaussianMLPPolicy(3, 2, (8,)).double()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in policy.named_parameters()}
    phis_r, _, grad_r, _ = make_objective(policy, 1, False, False, "reinforce").trpo_terms(params, 0.0)
    phis_l, _, grad_l, _ = make_objective(policy, 1, False, False, "lvc").trpo_terms(params, 0.0)
    for k in phis_r:
        torch.testing.assert_close(phis_r[k], phis_l[k])
    assert not torch.allclose(grad_r, grad_l)


def test_curvature_on_a_task_subset_equals_the_exact_curvature_of_those_tasks() -> None:
    torch.manual_seed(3)
    policy = GaussianMLPPolicy(3, 2, (8,)).double()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in policy.named_parameters()}
    obj = make_objective(policy, 1, False, False)
    _, _, gradient_full, _ = obj.trpo_terms(params, 0.0)
    _, _, gradient, hvp = obj.trpo_terms(params, 0.0, curvature_tasks=2)
    _, _, _, hvp_head = obj.head(2).trpo_terms(params, 0.0)
    v = torch.randn(gradient.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(gradient, gradient_full)
    torch.testing.assert_close(hvp(v), hvp_head(v))


def test_tasks_with_different_episode_counts_are_padded_without_changing_any_task() -> None:
    """rl.batch=steps gives each task its own number of episodes: the stacked meta-batch pads the smaller ones
    with mask-0 episodes, and each task's φ, surrogate and gradient are what it has alone."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, hidden=(8,)).double()
    rng = np.random.default_rng(3)
    small = [random_episodes(rng, 10, 3, 3, 2) for _ in range(2)]
    large = [random_episodes(rng, 10, 7, 3, 2) for _ in range(2)]
    params = {k: v.detach().requires_grad_(True) for k, v in policy.named_parameters()}

    def objective(tasks):
        return MamlRlObjective(policy, inner_loss(policy, "reinforce"), 0.5, False, MetaBatch.from_tasks(tasks))

    both, alone_small, alone_large = objective([small, large]), objective([small]), objective([large])
    assert both.batch.val["mask"].shape == (2, 10, 7)
    assert both.batch.val["mask"][0, :, 3:].sum() == 0
    phis = both.adapted(params)
    for k, v in alone_small.adapted(params).items():
        torch.testing.assert_close(phis[k][0], v[0])
    logp_both = both.old_log_probs({k: v.detach() for k, v in phis.items()})
    logp_small = alone_small.old_log_probs({k: v[:1].detach() for k, v in phis.items()})
    logp_large = alone_large.old_log_probs({k: v[1:].detach() for k, v in phis.items()})
    surrogate = both.surrogate(params, logp_both)
    expected = (alone_small.surrogate(params, logp_small) + alone_large.surrogate(params, logp_large)) / 2
    torch.testing.assert_close(surrogate, expected)
    g_both = torch.autograd.grad(surrogate, list(params.values()))
    g_parts = torch.autograd.grad(expected, list(params.values()))
    for a, b in zip(g_both, g_parts, strict=True):
        torch.testing.assert_close(a, b)
