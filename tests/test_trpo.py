"""Specifications of rlmaml.rl.learning.trpo: exact HVPs (also through an inner torch.func.grad), CG, the step."""

from __future__ import annotations

import math

import pytest
import torch

from rlmaml.meta import Params, adapt, params_of
from rlmaml.rl.episodes import Episodes
from rlmaml.rl.learning.trpo import TrpoConfig, conjugate_gradient, hessian_vector_product, trpo_step
from rlmaml.rl.objectives import (
    detached_distribution,
    log_probs,
    mean_kl,
    reinforce_loss,
    surrogate_loss,
    with_advantages,
)
from rlmaml.rl.policies import GaussianMLPPolicy, flat_params, set_flat_params

DOUBLE = torch.float64


def _setup(seed: int = 0, dtype: torch.dtype = torch.float64, T: int = 8, K: int = 6):
    """A small Gaussian policy and padded episodes sampled from it (fixed actions)."""
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(2, 1, hidden=(6,), init_std=0.8).to(dtype)
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(T, K, 2, generator=g, dtype=dtype)
    with torch.no_grad():
        dist = policy(obs).base_dist
        actions = torch.normal(dist.loc, dist.scale, generator=g)
    lengths = torch.tensor([T, T, T - 2, 5, 3, 2][:K])
    mask = (torch.arange(T).unsqueeze(1) < lengths).to(dtype)
    rewards = -(actions.squeeze(-1) - obs[..., 0]) ** 2
    return policy, with_advantages(Episodes(obs, actions, rewards, mask), gamma=0.95)


def _leaf_params(policy: torch.nn.Module) -> Params:
    return {n: p.detach().clone().requires_grad_(True) for n, p in params_of(policy).items()}


def _plain_fns(policy, ep, params):
    old_logp = log_probs(policy, params, ep).detach()
    old = detached_distribution(policy, params, ep)
    return (lambda p: surrogate_loss(policy, p, ep, old_logp)), (lambda p: mean_kl(policy, old, p, ep))


def _maml_fns(policy, train, val, params, lr=0.2):
    """MAML-TRPO's surrogate and KL: both evaluated at φ(θ') = adapt(θ') on the post-update episodes."""
    inner = reinforce_loss(policy)

    def phi(p: Params) -> Params:
        return adapt(inner, p, train, lr=lr)

    with torch.no_grad():
        phi0 = {n: v.detach() for n, v in phi(params).items()}
    old_logp = log_probs(policy, phi0, val)
    old = detached_distribution(policy, phi0, val)
    return (
        (lambda p: surrogate_loss(policy, phi(p), val, old_logp)),
        (lambda p: mean_kl(policy, old, phi(p), val)),
    )


def _fd_hvp(kl_fn, params: Params, v: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Central differences of the (autograd) KL gradient along v."""
    template = {n: p.detach() for n, p in params.items()}
    theta = flat_params(template)

    def flat_grad(flat: torch.Tensor) -> torch.Tensor:
        x = flat.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(kl_fn(set_flat_params(template, x)), x)
        return g

    return (flat_grad(theta + eps * v) - flat_grad(theta - eps * v)) / (2 * eps)


def test_hvp_matches_finite_differences() -> None:
    policy, ep = _setup()
    params = _leaf_params(policy)
    _, kl_fn = _plain_fns(policy, ep, params)
    # away from the old params so that the KL gradient is not zero there either
    shifted = {n: (p.detach() + 0.05).requires_grad_(True) for n, p in params.items()}
    v = torch.randn(flat_params(params).numel(), generator=torch.Generator().manual_seed(3), dtype=DOUBLE)
    hvp = hessian_vector_product(lambda: kl_fn(shifted), list(shifted.values()), damping=0.0)
    torch.testing.assert_close(hvp(v), _fd_hvp(kl_fn, shifted, v), rtol=1e-6, atol=1e-8)


def test_hvp_adds_damping_times_v() -> None:
    policy, ep = _setup()
    params = _leaf_params(policy)
    _, kl_fn = _plain_fns(policy, ep, params)
    v = torch.randn(flat_params(params).numel(), dtype=torch.float64)
    plain = hessian_vector_product(lambda: kl_fn(params), list(params.values()), damping=0.0)(v)
    damped = hessian_vector_product(lambda: kl_fn(params), list(params.values()), damping=0.1)(v)
    torch.testing.assert_close(damped - plain, 0.1 * v)


def test_hvp_through_an_inner_func_grad_step_matches_finite_differences() -> None:
    """Third order: the KL is a function of θ through φ(θ) = adapt(θ) (torch.func.grad inside)."""
    policy, train = _setup(seed=1)
    _, val = _setup(seed=2)
    params = _leaf_params(policy)
    _, kl_fn = _maml_fns(policy, train, val, params)
    shifted = {n: (p.detach() + 0.03).requires_grad_(True) for n, p in params.items()}
    v = torch.randn(flat_params(params).numel(), generator=torch.Generator().manual_seed(4), dtype=DOUBLE)
    hvp = hessian_vector_product(lambda: kl_fn(shifted), list(shifted.values()), damping=0.0)
    expected = _fd_hvp(kl_fn, shifted, v)
    assert expected.norm() > 0
    torch.testing.assert_close(hvp(v), expected, rtol=1e-5, atol=1e-8)


def test_hvp_reuses_one_kl_evaluation_across_products() -> None:
    policy, ep = _setup()
    params = _leaf_params(policy)
    _, kl_fn = _plain_fns(policy, ep, params)
    calls = []
    hvp = hessian_vector_product(lambda: calls.append(1) or kl_fn(params), list(params.values()), 0.0)
    v = torch.ones(flat_params(params).numel(), dtype=torch.float64)
    torch.testing.assert_close(hvp(v), hvp(v))
    assert len(calls) == 1


def test_conjugate_gradient_solves_a_known_spd_system() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 6 * torch.eye(6, dtype=torch.float64)
    x_true = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, a @ x_true, iters=20)
    torch.testing.assert_close(x, x_true)


def test_conjugate_gradient_residual_is_b_minus_ax_after_few_iterations() -> None:
    # TRPO scales its step with xᵀAx = xᵀ(b - r) instead of one more product with A: r must be b - A x
    # also when CG stops early (3 of 8 iterations), not only at convergence.
    g = torch.Generator().manual_seed(1)
    m = torch.randn(8, 8, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.1 * torch.eye(8, dtype=torch.float64)
    b = torch.randn(8, generator=g, dtype=torch.float64)
    x, r = conjugate_gradient(lambda v: a @ v, b, iters=3, with_residual=True)
    torch.testing.assert_close(r, b - a @ x)
    torch.testing.assert_close(x.dot(b - r), x.dot(a @ x))
    assert float((b - a @ x).norm()) > 1e-3  # it really stopped early


def test_conjugate_gradient_of_zero_rhs_is_zero() -> None:
    x = conjugate_gradient(lambda v: 2 * v, torch.zeros(3))
    assert bool((x == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_trpo_step_improves_the_surrogate_within_the_kl_bound(dtype: torch.dtype) -> None:
    policy, ep = _setup(dtype=dtype)
    params = _leaf_params(policy)
    surrogate_fn, kl_fn = _plain_fns(policy, ep, params)
    cfg = TrpoConfig(max_kl=0.01)
    result = trpo_step(params, surrogate_fn, kl_fn, cfg)
    assert result.accepted and result.reason == "ok"
    assert result.new_params is not None
    with torch.no_grad():
        after = float(surrogate_fn(result.new_params))
        kl = float(kl_fn(result.new_params))
    assert after < result.surrogate_before
    assert kl <= cfg.max_kl
    assert math.isclose(after, result.surrogate_after, rel_tol=1e-6)
    assert 1 <= result.ls_steps_taken <= cfg.ls_steps
    assert all(not p.requires_grad and p.dtype == dtype for p in result.new_params.values())


def test_trpo_step_leaves_the_input_params_unchanged() -> None:
    policy, ep = _setup()
    params = _leaf_params(policy)
    before = {n: p.detach().clone() for n, p in params.items()}
    trpo_step(params, *_plain_fns(policy, ep, params))
    for n in params:
        assert torch.equal(params[n].detach(), before[n])


def test_maml_trpo_step_through_the_inner_adaptation_improves_within_the_kl_bound() -> None:
    policy, train = _setup(seed=1)
    _, val = _setup(seed=2)
    params = _leaf_params(policy)
    surrogate_fn, kl_fn = _maml_fns(policy, train, val, params)
    cfg = TrpoConfig(max_kl=0.01)
    result = trpo_step(params, surrogate_fn, kl_fn, cfg)
    assert result.accepted, result.reason
    assert result.surrogate_after < result.surrogate_before
    assert result.kl <= cfg.max_kl


def test_trpo_step_skips_on_a_non_finite_gradient() -> None:
    params = {"w": torch.zeros(3, requires_grad=True)}
    result = trpo_step(params, lambda p: p["w"].sqrt().sum(), lambda p: (p["w"] ** 2).sum())
    assert not result.accepted and result.new_params is None
    assert result.reason == "non-finite gradient"


def test_trpo_step_skips_on_a_non_finite_kl_curvature() -> None:
    params = {"w": torch.ones(3, requires_grad=True)}
    result = trpo_step(params, lambda p: p["w"].sum(), lambda p: (float("nan") * p["w"] ** 2).sum())
    assert not result.accepted and result.new_params is None
    assert result.reason == "non-finite CG"


def test_trpo_step_reports_a_failed_line_search() -> None:
    """The KL's curvature at θ is mild but it grows so fast that no backtracked step fits the bound."""
    w0 = torch.zeros(3, dtype=torch.float64)
    params = {"w": w0.clone().requires_grad_(True)}

    def kl_fn(p: Params) -> torch.Tensor:
        d2 = ((p["w"] - w0) ** 2).sum()
        return 0.5 * d2 + 1e6 * d2**2

    cfg = TrpoConfig(max_kl=0.01, ls_steps=2)
    result = trpo_step(params, lambda p: p["w"].sum(), kl_fn, cfg)
    assert not result.accepted and result.new_params is None
    assert result.reason == "line search failed"
    assert result.ls_steps_taken == cfg.ls_steps


def test_trpo_step_skips_with_zero_gradient() -> None:
    params = {"w": torch.zeros(2, requires_grad=True)}
    result = trpo_step(params, lambda p: (p["w"] ** 2).sum(), lambda p: (p["w"] ** 2).sum())
    assert not result.accepted and result.reason == "zero gradient"


def test_conjugate_gradient_without_early_stop_gives_the_same_finite_solution() -> None:
    # the branch-free loop (for torch.compile) keeps iterating after convergence: the iterate must stay put
    g = torch.Generator().manual_seed(2)
    m = torch.randn(4, 4, generator=g, dtype=torch.float64)
    a = m @ m.T + torch.eye(4, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    x, r = conjugate_gradient(lambda v: a @ v, b, iters=12, with_residual=True)
    x_all, r_all = conjugate_gradient(lambda v: a @ v, b, iters=12, with_residual=True, early_stop=False)
    assert bool(torch.isfinite(x_all).all() and torch.isfinite(r_all).all())
    torch.testing.assert_close(x_all, x)
    torch.testing.assert_close(x_all, torch.linalg.solve(a, b))
    assert bool((conjugate_gradient(lambda v: 2 * v, torch.zeros(3), early_stop=False) == 0).all())


def test_trpo_step_with_a_given_cg_solution_takes_the_same_step() -> None:
    policy, ep = _setup()
    params = _leaf_params(policy)
    surrogate_fn, kl_fn = _plain_fns(policy, ep, params)
    cfg = TrpoConfig(max_kl=0.01)
    leaves = list(params.values())
    g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(surrogate_fn(params), leaves)])
    x, r = conjugate_gradient(hessian_vector_product(lambda: kl_fn(params), leaves, cfg.cg_damping), -g,
                              cfg.cg_iters, with_residual=True)
    given = trpo_step(params, surrogate_fn, kl_fn, cfg, gradient=g, solution=(x, r))
    plain = trpo_step(params, surrogate_fn, kl_fn, cfg)
    assert given.accepted and plain.accepted
    assert given.new_params is not None and plain.new_params is not None
    for n in params:
        torch.testing.assert_close(given.new_params[n], plain.new_params[n])
    with pytest.raises(ValueError, match="needs the gradient"):
        trpo_step(params, surrogate_fn, kl_fn, cfg, solution=(x, r))


@pytest.mark.parametrize("extrapolate", [False, True])
def test_line_search_kl_extrapolation_skips_candidates_but_not_the_step(extrapolate: bool) -> None:
    # The curvature handed to CG is 10x too small (as with rl.cg_task_fraction < 1), so the full step has
    # 10x the allowed KL. Backtracking by 0.8 needs 0.8^(2j) <= 0.1: j = 6, the 7th candidate. Extrapolating
    # from the first candidate tries one longer first (j = 5, KL 1.07x the bound), then j = 6: 3 evaluations,
    # the same step.
    w0 = torch.zeros(3, dtype=torch.float64)
    params = {"w": w0.clone().requires_grad_(True)}
    cfg = TrpoConfig(max_kl=0.01, ls_kl_extrapolate=extrapolate)
    g = torch.ones(3, dtype=torch.float64)
    result = trpo_step(params, lambda p: p["w"].sum(), lambda p: 0.5 * ((p["w"] - w0) ** 2).sum(), cfg,
                       gradient=g, hvp=lambda v: 0.1 * v)
    assert result.accepted and result.new_params is not None
    assert result.ls_steps_taken == (3 if extrapolate else 7)
    full = -math.sqrt(2 * cfg.max_kl / float(g.dot(g / 0.1))) * (g / 0.1)
    torch.testing.assert_close(result.new_params["w"], 0.8**6 * full)
    assert result.kl <= cfg.max_kl


def test_line_search_kl_extrapolation_backtracks_one_step_on_a_non_finite_kl() -> None:
    from rlmaml.rl.learning.trpo import _backtracks

    cfg = TrpoConfig(max_kl=0.01, ls_ratio=0.8, ls_kl_extrapolate=True)
    assert _backtracks(math.nan, cfg) == 1
    assert _backtracks(0.005, cfg) == 1  # rejected for the surrogate, not the KL
    assert _backtracks(0.0101, cfg) == 1
    assert _backtracks(0.1, cfg) == 5  # 0.8^12 * 0.1 <= 0.01 < 0.8^10 * 0.1: six, less one


@pytest.mark.parametrize("extrapolate", [False, True])
def test_line_search_kl_extrapolation_never_jumps_past_the_last_candidate(extrapolate: bool) -> None:
    # A quartic KL: the full step has 40,000x the allowed KL, and the quadratic guess from it says 23 more
    # backtracks, past the 15th and last candidate. The search must still try that last one, which fits.
    w0 = torch.zeros(3, dtype=torch.float64)
    params = {"w": w0.clone().requires_grad_(True)}

    def kl_fn(p: Params) -> torch.Tensor:
        d2 = ((p["w"] - w0) ** 2).sum()
        return 0.5 * d2 + 1e6 * d2**2

    cfg = TrpoConfig(max_kl=0.01, ls_kl_extrapolate=extrapolate)
    result = trpo_step(params, lambda p: p["w"].sum(), kl_fn, cfg)
    assert result.accepted and result.kl <= cfg.max_kl
    assert result.ls_steps_taken == (2 if extrapolate else 13)  # the 15th candidate, or the 13th: the first fit


@pytest.mark.parametrize(("field", "value"), [("max_kl", 0.0), ("cg_damping", -1.0), ("cg_iters", 0),
                                              ("ls_steps", 0), ("ls_ratio", 1.0), ("ls_ratio", 0.0)])
def test_trpo_config_refuses_bad_values_in_one_line_naming_them(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"TrpoConfig.{field} must be") as info:
        TrpoConfig(**{field: value})
    assert repr(value) in str(info.value) or str(value) in str(info.value)
    assert "\n" not in str(info.value)
