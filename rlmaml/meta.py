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
from torch.utils._pytree import tree_map

Params = dict[str, Tensor]
LossFn = Callable[[Params, Any], Tensor]
InnerLR = float | Mapping[str, float | Tensor]


def params_of(module: nn.Module) -> Params:
    """The module's parameters as a dict of leaf tensors that share storage with the module."""
    return dict(module.named_parameters())


def model_loss(model: nn.Module, loss: Callable[[Tensor, Tensor], Tensor], per_step: bool = False) -> LossFn:
    """A loss closure for supervised data: ``batch = (inputs, targets)``.

    ``per_step`` marks a model whose forward takes ``step=`` (MAML++ per-step batch-norm weights): the core
    then tells the loss which inner step it is at (see :func:`call_loss`).
    """

    def loss_fn(params: Params, batch: tuple[Tensor, Tensor], step: int | None = None) -> Tensor:
        inputs, targets = batch
        kwargs = {"step": step} if per_step and step is not None else {}
        return loss(functional_call(model, params, (inputs,), kwargs), targets)

    loss_fn.takes_step = per_step  # type: ignore[attr-defined]
    return loss_fn


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
    loop. Both give the same value (tested); which is faster depends on model and device.
    """

    def one(tr: Any, va: Any) -> Tensor:
        return task_objective(
            inner_loss, outer_loss, params, tr, va,
            steps=steps, lr=lr, first_order=first_order, step_weights=step_weights, adapted=adapted,
        )

    if batching == "vmap":
        if isinstance(train, list):
            raise ValueError("batching='vmap' needs tasks stacked along a leading dimension, got a list")
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
