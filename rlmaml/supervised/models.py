"""Networks for few-shot image classification (paper section 5.2), written for the functional core.

Both networks run under ``torch.func.functional_call``, ``torch.func.grad`` and ``torch.func.vmap``:
they hold no buffers and never update state in place.

Batch norm
    :class:`BatchNorm` always normalises with the statistics of the batch it is given, in training and
    at test time alike (it has no running averages). This is what the original MAML code does
    (``tf.contrib.layers.batch_norm`` left in training mode), so at test time the statistics are those
    of the task's support set during adaptation and of its query set when the adapted network is scored
    (transductive, as in the paper). Its affine weights ``weight`` (gamma) and ``bias`` (beta) are
    ordinary parameters: the inner loop adapts them unless the caller leaves them out of ``adapted``
    (see :func:`inner_param_names`). The original TF code had beta only (``scale=False``) and did not
    adapt it; we keep gamma too and adapt everything by default, as most PyTorch reimplementations do.

    Two implementations compute the same function. Outside ``vmap`` it is the fused ``F.batch_norm``
    (fastest on CPU). Inside ``vmap`` it is written out with ``mean``/``rsqrt``: the functorch batching
    rule of the fused op's backward is wrong for ``grad_input`` (pytorch/functorch#534, still open in
    torch 2.13), so under ``vmap`` the second-order MAML gradient through the fused op is silently off
    (measured: 3e-3 relative error in float64 for the conv net). ``impl="fused"`` or ``"composite"``
    forces one. Both are exact to second order, which is all MAML needs (the fused op's third derivative
    is wrong, pytorch/pytorch#186256).

Per-step batch norm (MAML++ "BNWB")
    ``BatchNorm(channels, steps=S)`` holds ``S`` sets of gamma/beta (shape ``[S, C]``) and ``forward(x,
    step=i)`` uses set ``min(i, S - 1)``. The networks take the same optional ``step`` argument. The shared
    core (:mod:`rlmaml.meta`) does not yet tell the loss which inner step it is at, so the Omniglot domain
    cannot use this yet; the networks are ready for it.

Conv net
    4 x [3x3 conv, 64 filters, stride 2, padding 1, batch norm, ReLU]; 28 -> 14 -> 7 -> 4 -> 2. The paper
    describes flattening, but the original code (``forward_conv``, non-miniImageNet branch) takes the
    spatial mean of the last 2x2 map, giving 64 features for the linear head. We follow the original code
    (``pool="mean"``); ``pool="flatten"`` gives the 256-feature variant. The convolutions have no bias: the
    batch norm right after each one removes any per-channel constant, so a bias would get zero gradient.

MLP
    784 -> 256 -> 128 -> 64 -> 64, each linear layer followed by batch norm and ReLU, then a linear head
    (the original ``construct_fc_weights`` / ``forward_fc``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

BN_IMPLS = ("auto", "fused", "composite")


def under_vmap() -> bool:
    """Whether a ``torch.func.vmap`` transform is active (True if that cannot be determined)."""
    try:
        from torch._functorch.pyfunctorch import TransformType, retrieve_all_functorch_interpreters

        return any(i.key() == TransformType.Vmap for i in retrieve_all_functorch_interpreters())
    except Exception:  # private API moved: the composite form is correct everywhere
        return True


def composite_batch_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Training-mode batch norm over dim 1 from elementary ops (correct under vmap to any order)."""
    dims = [0, *range(2, x.ndim)]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    centred = x - x.mean(dims, keepdim=True)
    var = (centred * centred).mean(dims, keepdim=True)
    return centred * (weight.view(shape) * torch.rsqrt(var + eps)) + bias.view(shape)


class BatchNorm(nn.Module):
    """Batch norm over dim 1 that always uses batch statistics; optionally one gamma/beta per inner step."""

    def __init__(self, channels: int, steps: int = 1, eps: float = 1e-5, impl: str = "auto") -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"batch-norm steps must be >= 1, got {steps}")
        if impl not in BN_IMPLS:
            raise ValueError(f"batch-norm impl must be one of {BN_IMPLS}, got {impl!r}")
        self.channels, self.steps, self.eps, self.impl = channels, steps, eps, impl
        shape = (channels,) if steps == 1 else (steps, channels)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))

    def forward(self, x: Tensor, step: int | None = None) -> Tensor:
        weight, bias = self.weight, self.bias
        if self.steps > 1:
            if step is None:
                raise ValueError("this network has per-step batch norm: pass forward(x, step=i)")
            i = min(max(int(step), 0), self.steps - 1)
            weight, bias = weight[i], bias[i]
        if self.impl == "composite" or (self.impl == "auto" and under_vmap()):
            return composite_batch_norm(x, weight, bias, self.eps)
        return F.batch_norm(x, None, None, weight, bias, training=True, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.channels}, steps={self.steps}, eps={self.eps}, impl={self.impl}, batch statistics always"


class ConvNet(nn.Module):
    """The paper's 4-block conv net: [3x3 conv(64), stride 2, BN, ReLU] x 4, pooled, linear head."""

    def __init__(self, ways: int, in_channels: int = 1, hidden: int = 64, depth: int = 4,
                 pool: str = "mean", image_size: int = 28, bn_steps: int = 1, bn_impl: str = "auto") -> None:
        super().__init__()
        if pool not in ("mean", "flatten"):
            raise ValueError(f"pool must be 'mean' or 'flatten', got {pool!r}")
        self.pool = pool
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        size = image_size
        for i in range(depth):
            conv = nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, stride=2, padding=1, bias=False)
            nn.init.xavier_uniform_(conv.weight)  # the original uses Glorot (xavier_initializer_conv2d)
            self.convs.append(conv)
            self.norms.append(BatchNorm(hidden, bn_steps, impl=bn_impl))
            size = (size - 1) // 2 + 1
        features = hidden if pool == "mean" else hidden * size * size
        self.head = nn.Linear(features, ways)

    def features(self, x: Tensor, step: int | None = None) -> Tensor:
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.relu(norm(conv(x), step))
        return x.mean(dim=(-2, -1)) if self.pool == "mean" else x.flatten(-3)

    def forward(self, x: Tensor, step: int | None = None) -> Tensor:
        return self.head(self.features(x, step))


class MLP(nn.Module):
    """The paper's non-convolutional net: 256-128-64-64 linear layers with BN and ReLU, linear head."""

    def __init__(self, ways: int, in_features: int = 28 * 28, hidden: Sequence[int] = (256, 128, 64, 64),
                 bn_steps: int = 1, bn_impl: str = "auto") -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.norms = nn.ModuleList(BatchNorm(b, bn_steps, impl=bn_impl) for b in hidden)
        self.head = nn.Linear(sizes[-1], ways)

    def forward(self, x: Tensor, step: int | None = None) -> Tensor:
        x = x.flatten(-3) if x.ndim >= 3 else x
        for layer, norm in zip(self.layers, self.norms, strict=True):
            x = F.relu(norm(layer(x), step))
        return self.head(x)


def build_network(kind: str, ways: int, bn_steps: int = 1, bn_impl: str = "auto") -> nn.Module:
    """``kind`` 'conv' (:class:`ConvNet`) or 'mlp' (:class:`MLP`) for ``ways``-way 28x28 grey images."""
    if kind == "conv":
        return ConvNet(ways, bn_steps=bn_steps, bn_impl=bn_impl)
    if kind == "mlp":
        return MLP(ways, bn_steps=bn_steps, bn_impl=bn_impl)
    raise ValueError(f"omniglot.model must be 'conv' or 'mlp', got {kind!r}")


def inner_param_names(model: nn.Module, adapt_bn: bool = True, adapt_head: bool = True) -> list[str]:
    """Names of the parameters the inner loop should adapt (for ``rlmaml.meta``'s ``adapted=``).

    ``adapt_bn=False`` leaves every batch-norm gamma/beta to the outer loop only, as the original TF code
    and MAML++ do; ``adapt_head=False`` freezes the linear head.
    """
    bn = {f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, BatchNorm) for p in ("weight", "bias")}
    names = []
    for name, _ in model.named_parameters():
        if not adapt_bn and name in bn:
            continue
        if not adapt_head and name.startswith("head."):
            continue
        names.append(name)
    return names

