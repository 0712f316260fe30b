"""Specifications of the shared MAML core, rlmaml.meta: inner adaptation and the meta-objective."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from rlmaml.meta import (
    Params,
    adapt,
    adapt_path,
    all_finite,
    cosine_lr,
    inner_lr_at,
    learnable_inner_lr,
    meta_objective,
    model_loss,
    multi_step_weights,
)


def _tiny_model(seed: int = 0, hidden: int = 3) -> nn.Module:
    """A smooth (tanh) 1-h-1 MLP in float64, so finite differences are accurate."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1)).double()


def _params(model: nn.Module) -> Params:
    return {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}


def _task(seed: int, n: int = 6, tasks: int | None = None) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 1) if tasks is None else (tasks, n, 1)
    x = torch.rand(shape, generator=g, dtype=torch.float64) * 4 - 2
    amp = 0.5 + torch.rand(shape[:-2] + (1, 1), generator=g, dtype=torch.float64) * 2
    return x, amp * torch.sin(x)


def _flat(params: Params) -> Tensor:
    return torch.cat([p.reshape(-1) for p in params.values()])


def _unflat(vec: Tensor, like: Params) -> Params:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vec[i:i + v.numel()].view_as(v)
        i += v.numel()
    return out


# ---- second-order gradient against finite differences ----------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_meta_gradient_matches_central_finite_differences(steps: int) -> None:
    model = _tiny_model(seed=steps)
    loss_fn = model_loss(model, nn.functional.mse_loss)
    params = _params(model)
    train, val = _task(1), _task(2)
    lr = 0.3  # large enough that the second-order terms matter

    def objective(p: Params) -> Tensor:
        return loss_fn(adapt(loss_fn, p, train, steps=steps, lr=lr), val)

    analytic = _flat(dict(zip(params, torch.autograd.grad(objective(params), list(params.values())), strict=True)))

    theta = _flat(params).detach()
    eps = 1e-6
    numeric = torch.empty_like(theta)
    for i in range(theta.numel()):  # every coordinate of the 10-parameter model
        e = torch.zeros_like(theta)
        e[i] = eps
        plus = objective(_unflat(theta + e, params)).item()
        minus = objective(_unflat(theta - e, params)).item()
        numeric[i] = (plus - minus) / (2 * eps)

    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)

    # The check is meaningful: dropping the second-order terms gives a clearly different gradient.
    fo = loss_fn(adapt(loss_fn, params, train, steps=steps, lr=lr, first_order=True), val)
    fo_grad = _flat(dict(zip(params, torch.autograd.grad(fo, list(params.values())), strict=True)))
    assert (fo_grad - numeric).norm() > 1e-3 * numeric.norm()


def test_first_order_equals_manual_stop_gradient_update() -> None:
    model = _tiny_model(seed=4)
    loss_fn = model_loss(model, nn.functional.mse_loss)
    params = _params(model)
    train, val = _task(5), _task(6)
    lr = 0.2

    phi = params
    for _ in range(2):
        g = torch.autograd.grad(loss_fn(phi, train), list(phi.values()), create_graph=True)
        phi = {k: v - lr * gk.detach() for (k, v), gk in zip(phi.items(), g, strict=True)}
    manual_loss = loss_fn(phi, val)
    manual_grad = torch.autograd.grad(manual_loss, list(params.values()))

    fo_phi = adapt(loss_fn, params, train, steps=2, lr=lr, first_order=True)
    fo_loss = loss_fn(fo_phi, val)
    fo_grad = torch.autograd.grad(fo_loss, list(params.values()))

    for k in params:
        torch.testing.assert_close(fo_phi[k], phi[k], rtol=0, atol=1e-12)
    torch.testing.assert_close(fo_loss, manual_loss, rtol=0, atol=1e-12)
    for a, b in zip(fo_grad, manual_grad, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# ---- vmap and loop batching ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "weighted", "learned_lr", "adapted"),
    [
        (1, False, False, None),
        (3, False, False, None),
        (3, True, False, None),
        (3, True, True, None),
        (2, False, False, ["2.weight", "2.bias"]),
    ],
)
def test_vmap_and_loop_batching_agree_in_value_and_gradient(steps, weighted, learned_lr, adapted) -> None:
    model = _tiny_model(seed=7, hidden=4)
    loss_fn = model_loss(model, nn.functional.mse_loss)
    train, val = _task(8, tasks=5), _task(9, tasks=5)
    weights = multi_step_weights(steps, progress=0.03, anneal_fraction=0.1) if weighted else None

    results = {}
    for batching in ("vmap", "loop"):
        params = _params(model)
        lr = learnable_inner_lr(params, steps, 0.1) if learned_lr else 0.1
        lr = {k: v.double().detach().requires_grad_(True) for k, v in lr.items()} if learned_lr else lr
        loss = meta_objective(loss_fn, loss_fn, params, train, val, steps=steps, lr=lr,
                              step_weights=weights, adapted=adapted, batching=batching)
        leaves = list(params.values()) + (list(lr.values()) if learned_lr else [])
        results[batching] = (loss.detach(), torch.autograd.grad(loss, leaves))

    (v_loss, v_grads), (l_loss, l_grads) = results["vmap"], results["loop"]
    torch.testing.assert_close(v_loss, l_loss, rtol=1e-10, atol=1e-12)
    for a, b in zip(v_grads, l_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert sum(g.abs().sum() for g in v_grads) > 0


def test_loop_batching_over_a_list_of_unequal_tasks_is_the_mean_of_task_objectives() -> None:
    model = _tiny_model(seed=10)
    loss_fn = model_loss(model, nn.functional.mse_loss)
    params = _params(model)
    train = [_task(11, n=3), _task(12, n=7)]
    val = [_task(13, n=5), _task(14, n=2)]
    loss = meta_objective(loss_fn, loss_fn, params, train, val, steps=2, lr=0.1, batching="loop")
    each = [loss_fn(adapt(loss_fn, params, tr, steps=2, lr=0.1), va) for tr, va in zip(train, val, strict=True)]
    torch.testing.assert_close(loss, torch.stack(each).mean())


def test_meta_objective_rejects_a_list_under_vmap_and_unknown_batching() -> None:
    model = _tiny_model()
    loss_fn = model_loss(model, nn.functional.mse_loss)
    params = _params(model)
    with pytest.raises(ValueError, match="vmap"):
        meta_objective(loss_fn, loss_fn, params, [_task(0)], [_task(1)], steps=1, lr=0.1, batching="vmap")
    with pytest.raises(ValueError, match="batching"):
        meta_objective(loss_fn, loss_fn, params, _task(0, tasks=2), _task(1, tasks=2), steps=1, lr=0.1,
                       batching="threads")


# ---- learnable inner learning rates --------------------------------------------------------------------------------


def test_learnable_inner_lr_gets_a_nonzero_finite_gradient_for_every_tensor_and_step() -> None:
    model = _tiny_model(seed=15)
    loss_fn = model_loss(model, nn.functional.mse_loss)
    params = _params(model)
    lr = learnable_inner_lr(params, steps=2, init=0.05)
    assert set(lr) == set(params)
    assert all(v.shape == (2,) and v.requires_grad and torch.all(v == 0.05) for v in lr.values())

    lr64 = {k: v.double().detach().requires_grad_(True) for k, v in lr.items()}
    loss = meta_objective(loss_fn, loss_fn, params, _task(16, tasks=3), _task(17, tasks=3), steps=2, lr=lr64,
                          batching="vmap")
    loss.backward()
    for name, v in lr64.items():
        assert v.grad is not None, name
        assert torch.isfinite(v.grad).all(), name
        assert torch.all(v.grad != 0), (name, v.grad)


def test_learnable_inner_lr_rejects_bad_arguments() -> None:
    params = _params(_tiny_model())
    with pytest.raises(ValueError, match="steps"):
        learnable_inner_lr(params, 0, 0.1)
    with pytest.raises(ValueError, match="positive"):
        learnable_inner_lr(params, 1, 0.0)


def test_inner_lr_at_picks_per_step_and_per_parameter_values() -> None:
    assert inner_lr_at(0.3, "w", 5) == 0.3
    assert inner_lr_at({"w": 0.1, "b": 0.2}, "b", 0) == 0.2
    per_step = {"w": torch.tensor([0.1, 0.2, 0.3])}
    assert inner_lr_at(per_step, "w", 0).item() == pytest.approx(0.1)
    assert inner_lr_at(per_step, "w", 2).item() == pytest.approx(0.3)
    assert inner_lr_at(per_step, "w", 7).item() == pytest.approx(0.3)  # beyond the last step: the last rate
    scalar = torch.tensor(0.4)
    assert inner_lr_at({"w": scalar}, "w", 3) is scalar


def test_adapt_uses_the_rate_of_each_inner_step() -> None:
    model = _tiny_model(seed=18)
    loss_fn = model_loss(model, nn.functional.mse_loss)
    params = _params(model)
    train = _task(19)
    rates = {k: torch.tensor([0.1, 0.4], dtype=torch.float64) for k in params}
    got = adapt(loss_fn, params, train, steps=2, lr=rates)
    expected = adapt(loss_fn, params, train, steps=1, lr=0.1)
    expected = adapt(loss_fn, expected, train, steps=1, lr=0.4)
    for k in params:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-14)


# ---- adapted subsets and step counts -------------------------------------------------------------------------------


def test_adapted_leaves_the_other_parameters_unchanged() -> None:
    model = _tiny_model(seed=20)
    loss_fn = model_loss(model, nn.functional.mse_loss)
    params = _params(model)
    adapted = ["2.weight"]
    phi = adapt(loss_fn, params, _task(21), steps=3, lr=0.2, adapted=adapted)
    assert set(phi) == set(params)
    assert not torch.equal(phi["2.weight"], params["2.weight"])
    for k in params:
        if k not in adapted:
            assert phi[k] is params[k], k


def test_zero_steps_returns_theta_and_the_path_has_one_entry_per_step() -> None:
    model = _tiny_model(seed=22)
    loss_fn = model_loss(model, nn.functional.mse_loss)
    params = _params(model)
    phi = adapt(loss_fn, params, _task(23), steps=0, lr=0.5)
    assert phi.keys() == params.keys() and all(phi[k] is params[k] for k in params)
    path = adapt_path(loss_fn, params, _task(23), steps=3, lr=0.5)
    assert len(path) == 4 and path[0] is params
    with pytest.raises(ValueError, match="steps"):
        adapt(loss_fn, params, _task(23), steps=-1)


# ---- multi-step loss weights, cosine schedule, finiteness ----------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(steps=st.integers(1, 8), progress=st.floats(0, 1), anneal=st.floats(0, 1))
def test_multi_step_weights_are_nonnegative_and_sum_to_one(steps: int, progress: float, anneal: float) -> None:
    w = multi_step_weights(steps, progress, anneal)
    assert w.shape == (steps,)
    assert torch.all(w >= 0)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_multi_step_weights_start_uniform_and_anneal_to_the_last_step() -> None:
    torch.testing.assert_close(multi_step_weights(4, 0.0, 0.1), torch.full((4,), 0.25))
    mid = multi_step_weights(4, 0.05, 0.1)
    assert torch.all(mid[:-1] == mid[0]) and 0 < mid[0] < 0.25 and mid[-1] > 0.25
    earlier = multi_step_weights(4, 0.02, 0.1)
    assert earlier[-1] < mid[-1]  # the last step's weight grows monotonically
    for progress in (0.1, 0.5, 1.0):
        torch.testing.assert_close(multi_step_weights(4, progress, 0.1), torch.tensor([0.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(multi_step_weights(1, 0.0), torch.ones(1))
    with pytest.raises(ValueError):
        multi_step_weights(0, 0.0)


def test_cosine_lr_goes_from_base_to_minimum() -> None:
    assert cosine_lr(1e-3, 0.0, 1e-5) == pytest.approx(1e-3)
    assert cosine_lr(1e-3, 1.0, 1e-5) == pytest.approx(1e-5)
    assert cosine_lr(1e-3, 0.5, 0.0) == pytest.approx(5e-4)
    assert cosine_lr(1e-3, 2.0, 1e-5) == pytest.approx(1e-5)  # clamped
    values = [cosine_lr(1.0, p / 10) for p in range(11)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_all_finite_detects_nan_and_inf_in_any_container() -> None:
    good = torch.ones(3)
    assert all_finite(good) and all_finite({"a": good}) and all_finite([good, None])
    for bad in (float("nan"), math.inf, -math.inf):
        t = torch.tensor([1.0, bad])
        assert not all_finite(t)
        assert not all_finite({"a": good, "b": t})
        assert not all_finite([good, t])
