"""The shared MAML core: functional inner adaptation and the meta-objective.

Every domain (sinusoid, Omniglot, meta-RL) uses this module and nothing else to adapt.
Parameters are a plain ``dict[str, Tensor]``; a domain supplies a loss closure
``loss_fn(params, batch) -> scalar`` that runs its model with ``torch.func.functional_call``.

Gradients come from ``torch.func.grad``. That one definition serves both batching paths:
``torch.func.vmap`` over tasks of equal shape, and a plain Python loop over tasks of unequal shape (RL
episodes). The result stays differentiable by ordinary autograd, so the outer loss can be
back-propagated (second order) or the inner gradients detached (first order).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.utils._pytree import tree_map

Params = dict[str, Tensor]
LossFn = Callable[[Params, Any], Tensor]
InnerLR = float | Mapping[str, float | Tensor]


def params_of(module: nn.Module) -> Params:
    """The module's parameters as a dict of leaf tensors that share storage with the module."""
    return dict(module.named_parameters())


def model_loss(model: nn.Module, loss: Callable[[Tensor, Tensor], Tensor], per_step: bool = False) -> LossFn:
    """A loss closure ``loss_fn(params, batch)`` for supervised data ``batch = (inputs, targets)``.

    It runs ``model`` with ``params`` by ``functional_call`` (buffers come from the model) and scores the
    output with ``loss(outputs, targets)``. A batch-norm layer that would update its running statistics
    (training mode with ``track_running_stats=True``) is refused with a ``ValueError`` at call time: torch.func
    cannot differentiate through that in-place update. ``per_step`` marks a model whose forward takes
    ``step=`` (MAML++ per-step batch-norm weights): the core then tells the loss which inner step it is at
    (see :func:`call_loss`).
    """
    norms = [(name, m) for name, m in model.named_modules() if isinstance(m, _NormBase)]

    def loss_fn(params: Params, batch: tuple[Tensor, Tensor], step: int | None = None) -> Tensor:
        refuse_running_stat_updates(norms)
        inputs, targets = batch
        kwargs = {"step": step} if per_step and step is not None else {}
        return loss(functional_call(model, params, (inputs,), kwargs), targets)

    loss_fn.takes_step = per_step  # type: ignore[attr-defined]
    loss_fn.model = model  # type: ignore[attr-defined]  # lets meta_objective check the model (vmap_hazard)
    return loss_fn


def refuse_running_stat_updates(norms: Sequence[tuple[str, nn.Module]]) -> None:
    """Raise a one-line ``ValueError`` naming the first norm layer that would update running statistics.

    In training mode with ``track_running_stats=True`` such a layer adds into its buffers in place, which
    torch.func refuses ("would mutate a captured Tensor"); MAML wants batch statistics anyway.
    """
    for name, m in norms:
        if m.training and m.track_running_stats:
            raise ValueError(
                f"module {name or '<root>'!r} ({type(m).__name__}) would update its running statistics in place, "
                "which torch.func cannot differentiate: build it with track_running_stats=False "
                "(batch statistics, as MAML uses) or put it in eval mode"
            )


def vmap_hazard(loss_fn: LossFn) -> str | None:
    """The first layer of ``loss_fn``'s model (if it has one) whose second-order gradient is wrong under vmap.

    torch's fused batch norm (with batch statistics) and layer norm have a wrong batching rule for the
    backward's ``grad_input`` (pytorch/functorch#534, open in torch 2.13): under ``vmap`` the second-order
    MAML gradient through them is silently off (measured in float64: 0.4 relative for ``BatchNorm1d``,
    2e-2 for ``LayerNorm``). First order and the loop are exact. Functional calls of those ops inside a
    custom forward cannot be seen here.
    """
    model = getattr(loss_fn, "model", None)
    if not isinstance(model, nn.Module):
        return None
    for name, m in model.named_modules():
        batch_stats = isinstance(m, _BatchNorm) and (m.training or m.running_mean is None)
        if batch_stats or isinstance(m, nn.LayerNorm):
            return f"{name or '<root>'!r} ({type(m).__name__})"
    return None


def call_loss(loss_fn: LossFn, params: Params, batch: Any, step: int) -> Tensor:
    """``loss_fn(params, batch)``, passing the inner step index when the loss asks for it (``takes_step``)."""
    if getattr(loss_fn, "takes_step", False):
        return loss_fn(params, batch, step=step)  # type: ignore[call-arg]
    return loss_fn(params, batch)


def learnable_inner_lr(params: Params, steps: int, init: float) -> dict[str, Tensor]:
    """Per-parameter-tensor, per-step learnable inner learning rates (MAML++ LSLR / Meta-SGD).

    Returns one ``(steps,)`` tensor per parameter, filled with ``init`` and requiring grad.
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    if not init > 0:
        raise ValueError(f"inner learning rate must be positive, got {init}")
    device = next(iter(params.values())).device
    return {name: torch.full((steps,), float(init), device=device, requires_grad=True) for name in params}


def inner_lr_at(lr: InnerLR, name: str, step: int) -> float | Tensor:
    """The inner learning rate for parameter ``name`` at inner step ``step``.

    ``lr`` is a float (one rate), a mapping name -> float, or a mapping name -> ``(steps,)`` tensor.
    """
    if isinstance(lr, Mapping):
        value = lr[name]
        if isinstance(value, Tensor) and value.ndim > 0:
            return value[min(step, value.shape[0] - 1)]
        return value
    return lr


def sgd_step(params: Params, grads: Params, lr: InnerLR, step: int) -> Params:
    """One plain gradient step ``θ - α ∇`` with the rate of ``inner_lr_at``."""
    return {name: p - inner_lr_at(lr, name, step) * grads[name] for name, p in params.items()}


def adapt_path(
    loss_fn: LossFn,
    params: Params,
    batch: Any,
    *,
    steps: int = 1,
    lr: InnerLR = 0.01,
    first_order: bool = False,
    adapted: Sequence[str] | None = None,
) -> list[Params]:
    """The parameters before and after each inner step: ``[θ, φ1, ..., φ_steps]``.

    Second order (default) keeps the inner gradient in the graph; first order detaches it, so that
    ``dφ/dθ = I``. ``adapted`` names the parameters that take inner steps (default all); the rest pass
    through unchanged (e.g. a frozen head or batch-norm weights).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    names = list(params) if adapted is None else list(adapted)
    path = [params]
    current = params
    for step in range(steps):
        fast = {n: current[n] for n in names}
        rest = {n: v for n, v in current.items() if n not in fast}

        def fast_loss(fast_params: Params, rest: Params = rest, step: int = step) -> Tensor:
            return call_loss(loss_fn, {**rest, **fast_params}, batch, step)

        if first_order:  # differentiate at detached inputs: no graph of the inner gradient is built at all
            grads = {n: g.detach() for n, g in grad(fast_loss)({n: p.detach() for n, p in fast.items()}).items()}
        else:
            grads = grad(fast_loss)(fast)
        current = {**rest, **sgd_step(fast, grads, lr, step)}
        path.append(current)
    return path


def adapt(
    loss_fn: LossFn,
    params: Params,
    batch: Any,
    *,
    steps: int = 1,
    lr: InnerLR = 0.01,
    first_order: bool = False,
    adapted: Sequence[str] | None = None,
) -> Params:
    """Task-specific parameters φ after ``steps`` inner gradient steps on ``batch`` from ``params``."""
    return adapt_path(loss_fn, params, batch, steps=steps, lr=lr, first_order=first_order, adapted=adapted)[-1]


def multi_step_weights(steps: int, progress: float, anneal_fraction: float = 0.1) -> Tensor:
    """MAML++ multi-step-loss weights over the ``steps`` post-step losses.

    At ``progress = 0`` (fraction of training done) all steps weigh ``1/steps``; the weight of every step
    but the last decays linearly to 0 by ``progress = anneal_fraction``, and the last takes the rest.
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    if steps == 1:
        return torch.ones(1)
    t = min(max(progress / anneal_fraction, 0.0), 1.0) if anneal_fraction > 0 else 1.0
    early = (1.0 - t) / steps
    weights = torch.full((steps,), early)
    weights[-1] = 1.0 - early * (steps - 1)
    return weights


def task_objective(
    inner_loss: LossFn,
    outer_loss: LossFn,
    params: Params,
    train: Any,
    val: Any,
    *,
    steps: int,
    lr: InnerLR,
    first_order: bool = False,
    step_weights: Tensor | None = None,
    adapted: Sequence[str] | None = None,
) -> Tensor:
    """The post-adaptation loss of one task: ``L_val(adapt(θ, D_tr))``.

    With ``step_weights`` (length ``steps``) it is the MAML++ multi-step loss
    ``Σ_i w_i L_val(φ_i)``. φ_i is evaluated at step index ``i - 1``, the step that produced it.
    """
    path = adapt_path(inner_loss, params, train, steps=steps, lr=lr, first_order=first_order, adapted=adapted)
    if step_weights is None:
        return call_loss(outer_loss, path[-1], val, max(steps - 1, 0))
    losses = torch.stack([call_loss(outer_loss, p, val, i) for i, p in enumerate(path[1:])])
    return (step_weights.to(losses) * losses).sum()


def meta_objective(
    inner_loss: LossFn,
    outer_loss: LossFn,
    params: Params,
    train: Any,
    val: Any,
    *,
    steps: int,
    lr: InnerLR,
    first_order: bool = False,
    step_weights: Tensor | None = None,
    adapted: Sequence[str] | None = None,
    batching: str = "loop",
) -> Tensor:
    """Mean post-adaptation loss over a batch of tasks; differentiable in ``params`` (and ``lr``).

    ``train`` / ``val`` hold every task: either a pytree of tensors with a leading task dimension, or
    (for ``batching="loop"`` only) a list with one entry per task, for tasks of unequal shapes.
    ``batching="vmap"`` maps over the task dimension with ``torch.func.vmap``; ``"loop"`` runs a Python
    loop. Both compute the same function (equal to ~1e-14 in float64, tested); which is faster depends on
    model and device. In float32 they round differently, and where rounding moves a ReLU input across 0 a
    many-step second-order gradient can jump by several percent on either path (tests/test_meta_batching.py).
    Second-order ``vmap`` refuses a model with torch's fused batch norm or layer norm (:func:`vmap_hazard`).
    """

    def one(tr: Any, va: Any) -> Tensor:
        return task_objective(
            inner_loss, outer_loss, params, tr, va,
            steps=steps, lr=lr, first_order=first_order, step_weights=step_weights, adapted=adapted,
        )

    if batching == "vmap":
        if isinstance(train, list):
            raise ValueError("batching='vmap' needs tasks stacked along a leading dimension, got a list")
        hazard = None if first_order else vmap_hazard(inner_loss) or vmap_hazard(outer_loss)
        if hazard:
            raise ValueError(f"batching='vmap' gives a wrong second-order gradient through torch's fused norm layer "
                             f"{hazard} (pytorch/functorch#534): use batching='loop' or first_order=True")
        return vmap(one, randomness="different")(train, val).mean()
    if batching != "loop":
        raise ValueError(f"batching must be 'vmap' or 'loop', got {batching!r}")
    if isinstance(train, list):
        pairs = list(zip(train, val, strict=True))
    else:
        n = task_count(train)
        pairs = [(index_tasks(train, i), index_tasks(val, i)) for i in range(n)]
    return torch.stack([one(tr, va) for tr, va in pairs]).mean()


def index_tasks(tree: Any, i: int) -> Any:
    """Task ``i`` of a pytree stacked along a leading task dimension."""
    return tree_map(lambda x: x[i] if isinstance(x, Tensor) else x, tree)


def task_count(tree: Any) -> int:
    """The size of the leading task dimension of a stacked pytree."""
    leaves = [x for x in torch.utils._pytree.tree_leaves(tree) if isinstance(x, Tensor)]
    if not leaves:
        raise ValueError("no tensors in the task batch")
    return int(leaves[0].shape[0])


def cosine_lr(base: float, progress: float, minimum: float = 0.0) -> float:
    """Cosine-annealed learning rate at ``progress`` in [0, 1] (MAML++ meta-lr schedule)."""
    progress = min(max(progress, 0.0), 1.0)
    return minimum + 0.5 * (base - minimum) * (1.0 + math.cos(math.pi * progress))


def all_finite(tensors: Mapping[str, Tensor] | Sequence[Tensor] | Tensor) -> bool:
    """Whether every element of every tensor is finite (the guard before any update to θ)."""
    if isinstance(tensors, Tensor):
        return bool(torch.isfinite(tensors).all())
    values = tensors.values() if isinstance(tensors, Mapping) else tensors
    return all(bool(torch.isfinite(t).all()) for t in values if t is not None)
