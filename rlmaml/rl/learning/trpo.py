"""The TRPO outer step (Schulman et al. 2015) on a parameter dict, as used by MAML-RL.

The surrogate and KL are given as functions of a parameter dict, so they may adapt internally
(``φ(θ) = rlmaml.meta.adapt(θ)``, itself a ``torch.func.grad``); the Hessian-vector products then
differentiate through that inner gradient (third order), which ordinary double backprop handles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from rlmaml.meta import Params, all_finite
from rlmaml.rl.policies import flat_params, set_flat_params


@dataclass(frozen=True)
class TrpoConfig:
    """Trust region size, conjugate-gradient and backtracking line-search settings."""

    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_steps: int = 15
    ls_ratio: float = 0.8
    ls_kl_extrapolate: bool = False
    """Skip the candidates whose KL, extrapolated quadratically from a candidate rejected for its KL, is over
    ``max_kl`` (less one, and never past the last candidate): the same step when the KL is quadratic in the step
    length, in fewer evaluations; possibly a shorter one when the KL grows faster than that."""

    @classmethod
    def from_rl(cls, rl: Any) -> TrpoConfig:
        """The TRPO settings of an ``RLConfig`` (its keys of the same names: ``rl.max_kl``, ``rl.cg_iters``, ...)."""
        return cls(**{f.name: getattr(rl, f.name) for f in fields(cls)})

    def __post_init__(self) -> None:
        for name in ("max_kl", "cg_damping"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrpoConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("cg_iters", "ls_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrpoConfig.{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.ls_ratio < 1:
            raise ValueError(f"TrpoConfig.ls_ratio must be in (0, 1), got {self.ls_ratio}")


@dataclass(frozen=True)
class TrpoResult:
    """Outcome of one TRPO step. ``new_params`` is None unless ``accepted``; the caller then keeps θ.

    ``surrogate_after`` and ``kl`` are those of the accepted candidate (or of the last one tried;
    NaN if none was). ``ls_steps_taken`` counts the candidates evaluated (logged as ``ls_steps``); without
    ``ls_kl_extrapolate`` the accepted one is the ``ls_steps_taken``-th of the backtracking sequence.
    """

    new_params: Params | None
    accepted: bool
    reason: str
    surrogate_before: float
    surrogate_after: float
    kl: float
    grad_norm: float
    ls_steps_taken: int


def _flat_grad(output: Tensor, params: list[Tensor], create_graph: bool = False) -> Tensor:
    grads = torch.autograd.grad(
        output, params, create_graph=create_graph, retain_graph=True, allow_unused=True
    )
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)]
    )


def hessian_vector_product(
    kl_fn: Callable[[], Tensor], params: list[Tensor], damping: float
) -> Callable[[Tensor], Tensor]:
    """``v -> (∇²kl) v + damping · v`` by exact double backprop.

    ``kl_fn`` is evaluated and differentiated (with ``create_graph``) once; every call of the returned
    function reuses that first gradient, as conjugate gradient needs several products at one point.
    """
    kl = kl_fn()
    if kl.requires_grad:
        grad_kl = _flat_grad(kl, params, create_graph=True)
    else:  # KL independent of params: zero curvature
        grad_kl = torch.zeros(sum(p.numel() for p in params), dtype=kl.dtype, device=kl.device)

    def hvp(v: Tensor) -> Tensor:
        v = v.detach().to(grad_kl)
        if not grad_kl.requires_grad:
            return damping * v
        return _flat_grad((grad_kl * v).sum(), params).detach() + damping * v

    return hvp


def conjugate_gradient(
    Avp: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, residual_tol: float = 1e-10,
    with_residual: bool = False, early_stop: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given only ``v -> A v``.

    ``with_residual`` also returns the residual ``r = b - A x`` that CG keeps up to date, so that ``xᵀ A x =
    xᵀ (b - r)`` needs no further product with ``A`` (TRPO's step scaling saves one Hessian-vector product).
    Once the squared residual is at most ``residual_tol`` the iterate stops changing; ``early_stop`` also
    leaves the loop then. Without it the loop has no data-dependent branch, which ``torch.compile`` needs.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r.dot(r)
    for _ in range(iters):
        if early_stop and rr <= residual_tol:
            break
        live = rr > residual_tol
        Ap = Avp(p)
        alpha = torch.where(live, rr / p.dot(Ap), torch.zeros_like(rr))
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = r.dot(r)
        p = r + torch.where(live, rr_new / rr, torch.zeros_like(rr)) * p
        rr = torch.where(live, rr_new, rr)
    return (x, r) if with_residual else x


def trpo_step(
    params: Params,
    surrogate_fn: Callable[[Params], Tensor],
    kl_fn: Callable[[Params], Tensor],
    cfg: TrpoConfig | None = None,
    *,
    gradient: Tensor | None = None,
    hvp: Callable[[Tensor], Tensor] | None = None,
    solution: tuple[Tensor, Tensor] | None = None,
) -> TrpoResult:
    """One TRPO update minimising ``surrogate_fn`` subject to ``kl_fn ≤ cfg.max_kl``.

    ``params`` are leaf tensors requiring grad and are not modified. The natural-gradient direction
    solves ``H x = -g`` (H the KL Hessian at ``params``) by conjugate gradient, is scaled to the trust
    region boundary, and is backtracked by ``ls_ratio`` until the surrogate decreases with the KL within
    bounds. Non-finite quantities at any stage skip the update; returned params are always finite.

    A caller that can compute them faster may pass the flat surrogate ``gradient`` at ``params`` and an
    ``hvp`` (``v -> H v + damping v``); otherwise both come from double backprop through the two functions.
    With ``gradient``, a caller that solved ``H x = -g`` itself (for instance in a compiled function) passes
    ``solution=(x, r)``, ``r`` the residual ``-g - H x``; no product with ``H`` is then taken here.
    """
    cfg = TrpoConfig() if cfg is None else cfg
    names = list(params)
    leaves = [params[n] for n in names]
    if not all(p.requires_grad for p in leaves):
        raise ValueError("trpo_step needs parameters that require grad")
    nan = math.nan

    def skipped(reason: str, before: float, gnorm: float, after: float = nan, kl: float = nan, ls: int = 0):
        return TrpoResult(None, False, reason, before, after, kl, gnorm, ls)

    if gradient is None:
        loss = surrogate_fn(params)
        before = float(loss.detach())
        if not math.isfinite(before):
            return skipped("non-finite surrogate", before, nan)
        g = _flat_grad(loss, leaves).detach()
    else:
        with torch.no_grad():
            before = float(surrogate_fn(params))
        if not math.isfinite(before):
            return skipped("non-finite surrogate", before, nan)
        g = gradient.detach()
    gnorm = float(g.norm())
    if not math.isfinite(gnorm):
        return skipped("non-finite gradient", before, gnorm)
    if gnorm == 0.0:
        return skipped("zero gradient", before, gnorm)

    if solution is not None:
        if gradient is None:
            raise ValueError("trpo_step: a CG solution needs the gradient it solved for")
        x, r = (t.detach() for t in solution)
    else:
        if hvp is None:
            hvp = hessian_vector_product(lambda: kl_fn(params), leaves, cfg.cg_damping)
        x, r = conjugate_gradient(hvp, -g, cfg.cg_iters, with_residual=True)
    xhx = float(x.dot(-g - r)) if all_finite([x, r]) else nan  # xᵀHx = xᵀ(b - r): no extra product
    del hvp  # frees the KL graph before the line search
    if not math.isfinite(xhx):
        return skipped("non-finite CG", before, gnorm)
    if xhx <= 0.0:
        return skipped("non-positive curvature", before, gnorm)
    full_step = math.sqrt(2.0 * cfg.max_kl / xhx) * x
    if not all_finite(full_step):
        return skipped("non-finite CG", before, gnorm)

    theta = flat_params({n: p.detach() for n, p in params.items()})
    after, kl = nan, nan
    i, tried = 0, 0
    while i < cfg.ls_steps:
        candidate = set_flat_params(params, theta + (cfg.ls_ratio**i) * full_step)
        with torch.no_grad():
            after = float(surrogate_fn(candidate))
            kl = float(kl_fn(candidate))
        tried += 1
        if math.isfinite(after) and math.isfinite(kl) and after < before and kl <= cfg.max_kl:
            new_params = {n: p.detach().clone() for n, p in candidate.items()}
            return TrpoResult(new_params, True, "ok", before, after, kl, gnorm, tried)
        jump = _backtracks(kl, cfg) if cfg.ls_kl_extrapolate else 1
        i = i + 1 if i + 1 >= cfg.ls_steps else min(i + jump, cfg.ls_steps - 1)  # a jump never skips the last
    return skipped("line search failed", before, gnorm, after, kl, tried)


def _backtracks(kl: float, cfg: TrpoConfig) -> int:
    """How many ``ls_ratio`` backtracks to take after a candidate with this KL (at least one).

    The fewest after which the KL, quadratic in the step length, would be within ``max_kl``, less one: the KL
    grows faster than quadratically far from θ, so from a long rejected step the quadratic guess overshoots,
    and the candidate one longer often fits. If it does not, the next call backtracks by one.
    """
    if not (math.isfinite(kl) and kl > cfg.max_kl):
        return 1
    return max(1, math.ceil(math.log(cfg.max_kl / kl) / (2.0 * math.log(cfg.ls_ratio)) - 1e-9) - 1)
