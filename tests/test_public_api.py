"""The public API of the core (``rlmaml.adapt``, ``meta_objective``, ``params_of``, ``model_loss``) on user models."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import rlmaml
from rlmaml.meta import LossFn, Params

README = Path(__file__).resolve().parents[1] / "README.md"


def regression_tasks(n: int, seed: int = 0) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``n`` linear-regression tasks ``y = a x + b`` of 16 points: 8 to adapt on and 8 to score."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, 3, generator=g)
    y = x @ torch.randn(n, 3, 1, generator=g) + torch.randn(n, 1, 1, generator=g)
    return (x[:, :8], y[:, :8]), (x[:, 8:], y[:, 8:])


def user_mlp(norm: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), norm or nn.Identity(), nn.Tanh(), nn.Linear(16, 1))


def loss_value(loss_fn: LossFn, params: Params, batch: tuple[Tensor, Tensor]) -> float:
    return float(loss_fn(params, batch).detach())


def test_all_lists_the_public_core_functions() -> None:
    assert sorted(rlmaml.__all__) == ["adapt", "meta_objective", "model_loss", "params_of"]
    assert all(callable(getattr(rlmaml, name)) for name in rlmaml.__all__)


def test_import_rlmaml_does_not_import_torch_ray_or_gymnasium() -> None:
    code = "import sys, rlmaml; print(sorted(m for m in ('torch', 'ray', 'gymnasium') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_params_of_shares_storage_with_the_model() -> None:
    net = user_mlp()
    params = rlmaml.params_of(net)
    assert list(params) == [name for name, _ in net.named_parameters()]
    assert all(p is q for p, q in zip(params.values(), net.parameters(), strict=True))


def test_adapt_lowers_the_loss_of_a_user_mlp_on_a_toy_regression() -> None:
    net = user_mlp()
    loss_fn = rlmaml.model_loss(net, F.mse_loss)
    params = rlmaml.params_of(net)
    (xs, ys), (xq, yq) = regression_tasks(1)
    fast = rlmaml.adapt(loss_fn, params, (xs[0], ys[0]), steps=10, lr=0.05)
    assert set(fast) == set(params)
    for batch in ((xs[0], ys[0]), (xq[0], yq[0])):  # on the adaptation points and on the task's held-out points
        assert loss_value(loss_fn, fast, batch) < 0.8 * loss_value(loss_fn, params, batch)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_objective_gives_a_finite_gradient_for_every_parameter(first_order: bool) -> None:
    net = user_mlp()
    loss_fn = rlmaml.model_loss(net, F.mse_loss)
    value = rlmaml.meta_objective(loss_fn, loss_fn, rlmaml.params_of(net), *regression_tasks(4), steps=2, lr=0.05,
                                  first_order=first_order)
    value.backward()
    assert torch.isfinite(value)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in net.parameters())


def test_batch_norm_updating_running_stats_is_refused_with_a_one_line_error_naming_the_layer() -> None:
    net = user_mlp(nn.BatchNorm1d(16))
    loss_fn = rlmaml.model_loss(net, F.mse_loss)
    (xs, ys), _ = regression_tasks(1)
    with pytest.raises(ValueError, match=r"^module '1' \(BatchNorm1d\) .*track_running_stats=False") as err:
        rlmaml.adapt(loss_fn, rlmaml.params_of(net), (xs[0], ys[0]), steps=1, lr=0.05)
    assert "\n" not in str(err.value)
    assert int(net[1].num_batches_tracked) == 0  # nothing was updated


@pytest.mark.parametrize("norm", ["batch statistics", "eval mode"])
def test_batch_norm_with_batch_statistics_or_in_eval_mode_adapts(norm: str) -> None:
    bn = nn.BatchNorm1d(16, track_running_stats=False) if norm == "batch statistics" else nn.BatchNorm1d(16).eval()
    net = user_mlp(bn)
    loss_fn = rlmaml.model_loss(net, F.mse_loss)
    params = rlmaml.params_of(net)
    (xs, ys), _ = regression_tasks(1)
    fast = rlmaml.adapt(loss_fn, params, (xs[0], ys[0]), steps=10, lr=0.05)
    assert loss_value(loss_fn, fast, (xs[0], ys[0])) < loss_value(loss_fn, params, (xs[0], ys[0]))
    value = rlmaml.meta_objective(loss_fn, loss_fn, params, *regression_tasks(3), steps=2, lr=0.05)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(value, list(params.values())))


@pytest.mark.parametrize("norm", [nn.BatchNorm1d(16, track_running_stats=False), nn.LayerNorm(16)])
def test_second_order_vmap_refuses_torch_fused_norm_layers_and_the_loop_matches_finite_differences(
        norm: nn.Module) -> None:
    """torch's fused batch/layer norm backward is wrong under vmap at second order (pytorch/functorch#534)."""
    net = user_mlp(norm).double()
    loss_fn = rlmaml.model_loss(net, F.mse_loss)
    params = {n: p.detach().clone().requires_grad_() for n, p in rlmaml.params_of(net).items()}
    train, val = (tuple(t.double() for t in pair) for pair in regression_tasks(3))
    with pytest.raises(ValueError, match=rf"'1' \({type(norm).__name__}\).*batching='loop'"):
        rlmaml.meta_objective(loss_fn, loss_fn, params, train, val, steps=2, lr=0.3, batching="vmap")
    rlmaml.meta_objective(loss_fn, loss_fn, params, train, val, steps=2, lr=0.3, batching="vmap", first_order=True)

    def objective(p: Params) -> Tensor:
        return rlmaml.meta_objective(loss_fn, loss_fn, p, train, val, steps=2, lr=0.3, batching="loop")

    direction = {n: torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.dtype)
                 for n, p in params.items()}
    grads = torch.autograd.grad(objective(params), list(params.values()))
    analytic = sum(float((g * direction[n]).sum()) for g, n in zip(grads, params, strict=True))
    eps = 1e-6
    shifted = lambda s: float(objective({n: p + s * eps * direction[n] for n, p in params.items()}).detach())  # noqa: E731
    numeric = (shifted(1) - shifted(-1)) / (2 * eps)
    assert abs(analytic - numeric) < 1e-6 * abs(numeric)


def test_readme_section_runs() -> None:
    """The ``python`` block of the README's "MAML on your own model" runs as written (it asserts that adaptation
    helps)."""
    text = README.read_text()
    start = text.index("### MAML on your own model")
    section = text[start:text.index("\n#", start + 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], str(README), "exec"), {"__name__": "own_model"})
