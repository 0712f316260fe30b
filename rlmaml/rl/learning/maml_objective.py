"""The MAML-RL outer objective over a stacked meta-batch, and its exact KL curvature.

Every task's episodes are padded to the same horizon and trajectory count, so the meta-batch stacks along
a leading task dimension and ``torch.func.vmap`` runs every task's inner adaptation at once.

Curvature. TRPO needs Hessian-vector products of the mean KL between the old and new post-update
policies, ``KL(θ') = mean_i KL(π_φi(θ) || π_φi(θ'))``, at ``θ' = θ``. By the chain rule
``∇²KL = mean_i [J_iᵀ F_i J_i + Σ_k (∂KL_i/∂φ_k) ∇²φ_k]`` with ``J_i = ∂φ_i/∂θ`` and ``F_i`` the KL Hessian
at ``φ_i`` (the Fisher of the post-update policy on D_val). At ``θ' = θ`` the KL is at its minimum in φ, so
``∂KL/∂φ = 0`` and the product is *exactly* ``mean_i J_iᵀ F_i J_i v``: ``J_i v`` through the inner step, a
Fisher-vector product, and a VJP back. That is second-order work where naive double backprop through the
adapted KL is third order, and it measured several times faster (benchmarks/nav2d_speed.py). The surrogate's
meta-gradient reuses the same VJP. Every product is a ``torch.func`` VJP (``J_i v`` is the transpose of the VJP,
itself a VJP, or the VJP again for one inner step, where ``J_i`` is symmetric), so the whole TRPO direction
(:func:`natural_direction`) can go through ``torch.compile`` (``rl.compile``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, vjp, vmap

from rlmaml.meta import LossFn, Params
from rlmaml.rl.adaptation import policy_step
from rlmaml.rl.episodes import Episodes
from rlmaml.rl.learning.trpo import conjugate_gradient
from rlmaml.rl.objectives import log_probs, mean_kl, policy_kl, ppo_clip_loss, surrogate_loss
from rlmaml.rl.policies import flat_params, policy_distribution, set_flat_params

FIELDS = ("observations", "actions", "rewards", "mask", "advantages")
Stacked = dict[str, Tensor]


def stack_episodes(batches: Sequence[Episodes]) -> Stacked:
    """Stack episode batches (advantages attached) along a new leading task dimension.

    Batches with fewer episodes (``rl.batch=steps`` gives each task its own count) get padding episodes:
    zeros with mask 0, which every masked mean ignores.
    """
    k = max(b.mask.shape[1] for b in batches)
    return {f: torch.stack([_pad_episodes(getattr(b, f), k) for b in batches]) for f in FIELDS}


def _pad_episodes(x: Tensor, k: int) -> Tensor:
    """``x`` ``[T, K, ...]`` padded with zeros to ``[T, k, ...]``."""
    if x.shape[1] == k:
        return x
    return torch.cat([x, x.new_zeros((x.shape[0], k - x.shape[1], *x.shape[2:]))], dim=1)


def episodes_of(d: Stacked) -> Episodes:
    """One task's ``Episodes`` from a (per-task slice of a) stacked dict."""
    return Episodes(d["observations"], d["actions"], d["rewards"], d["mask"], advantages=d["advantages"])


@dataclass
class MetaBatch:
    """A meta-batch: for each inner step the stacked pre-update batches, and the stacked post-update batch."""

    train: list[Stacked]
    val: Stacked

    @classmethod
    def from_tasks(cls, tasks: Sequence[Sequence[Episodes]]) -> MetaBatch:
        """From each task's batches in adaptation order ``[D_0, ..., D_steps]``."""
        steps = len(tasks[0]) - 1
        return cls([stack_episodes([t[s] for t in tasks]) for s in range(steps)],
                   stack_episodes([t[-1] for t in tasks]))

    @property
    def num_tasks(self) -> int:
        return int(self.val["mask"].shape[0])


class MamlRlObjective:
    """φ(θ) for every task, the TRPO surrogate, the KL, and the exact curvature, on one meta-batch."""

    def __init__(self, policy: nn.Module, inner_loss: LossFn, lr: float | Sequence[float], first_order: bool,
                 batch: MetaBatch):
        """``lr`` is the inner step size, or one per inner step (the ``lrs`` the workers adapted with)."""
        self.policy = policy
        self.inner_loss = inner_loss
        self.lr = lr
        self.lrs = tuple(lr) if isinstance(lr, Sequence) else (lr,) * len(batch.train)
        if len(self.lrs) != len(batch.train):
            raise ValueError(f"{len(self.lrs)} inner step sizes for {len(batch.train)} inner steps")
        self.first_order = first_order
        self.batch = batch

    # ---- per task ------------------------------------------------------------------------------------
    def _adapt_one(self, params: Params, train: list[Stacked]) -> Params:
        for d, lr in zip(train, self.lrs, strict=True):
            params = policy_step(self.inner_loss, params, episodes_of(d), lr, first_order=self.first_order)
        return params

    def _surrogate_one(self, phi: Params, val: Stacked, old_logp: Tensor) -> Tensor:
        return surrogate_loss(self.policy, phi, episodes_of(val), old_logp)

    def _kl_one(self, phi: Params, phi_old: Params, val: Stacked) -> Tensor:
        old = policy_distribution(self.policy, phi_old, val["observations"])
        return mean_kl(self.policy, old, phi, episodes_of(val))

    # ---- over the meta-batch -------------------------------------------------------------------------
    def adapted(self, params: Params) -> Params:
        """Stacked φ_i(θ) of every task (leading task dimension); θ itself repeated when there is no inner step."""
        if not self.batch.train:
            n = self.batch.num_tasks
            return {k: v.unsqueeze(0).expand(n, *v.shape) for k, v in params.items()}
        return vmap(self._adapt_one, in_dims=(None, 0))(params, self.batch.train)

    def old_log_probs(self, phis: Params) -> Tensor:
        """log π_φi(a|s) on each task's D_val (detached): the surrogate's denominators."""
        with torch.no_grad():
            return vmap(lambda phi, val: log_probs(self.policy, phi, episodes_of(val)))(phis, self.batch.val)

    def surrogate_at(self, phis: Params, old_logp: Tensor) -> Tensor:
        """Mean over tasks of the TRPO surrogate of the stacked post-update parameters ``phis`` on D_val."""
        return vmap(self._surrogate_one)(phis, self.batch.val, old_logp).mean()

    def kl_at(self, phis: Params, phis_old: Params) -> Tensor:
        """Mean over tasks of KL(π_φold_i || π_φi) on D_val."""
        return vmap(self._kl_one)(phis, phis_old, self.batch.val).mean()

    def ppo_at(self, phis: Params, old_logp: Tensor, clip: float) -> Tensor:
        """Mean over tasks of the PPO/ProMP clipped surrogate on D_val."""

        def one(phi: Params, val: Stacked, lp_old: Tensor) -> Tensor:
            return ppo_clip_loss(self.policy, phi, episodes_of(val), lp_old, clip)

        return vmap(one)(phis, self.batch.val, old_logp).mean()

    def surrogate(self, params: Params, old_logp: Tensor) -> Tensor:
        """Mean over tasks of the TRPO surrogate on D_val of π_φi(params)."""
        return self.surrogate_at(self.adapted(params), old_logp)

    def kl(self, params: Params, phis_old: Params) -> Tensor:
        """Mean over tasks of KL(π_φi(θ) || π_φi(params)) on D_val."""
        return self.kl_at(self.adapted(params), phis_old)

    def head(self, m: int) -> MamlRlObjective:
        """The same objective on the first ``m`` tasks (tasks are i.i.d., so a prefix is a random subset)."""
        batch = MetaBatch([{k: v[:m] for k, v in d.items()} for d in self.batch.train],
                          {k: v[:m] for k, v in self.batch.val.items()})
        return MamlRlObjective(self.policy, self.inner_loss, self.lr, self.first_order, batch)

    def _linearize(self, params: Params) -> tuple[Params, Params, Callable[[Params], Params]]:
        """θ, stacked φ_i(θ) (detached), and ``w -> J_iᵀ w_i`` for every task at once.

        θ is copied once per task (``θ_b``), so one reverse pass through the vmapped adaptation gives every
        task's own ``J_iᵀ w_i`` rather than their sum. Pure ``torch.func`` (no retained autograd graph), so
        that :func:`natural_direction` can be compiled.
        """
        n = self.batch.num_tasks
        theta = {k: v.detach() for k, v in params.items()}
        theta_b = {k: v.unsqueeze(0).expand(n, *v.shape) for k, v in theta.items()}
        if not self.batch.train:
            return theta, theta_b, lambda w: w
        phis_b, vjp_fn = vjp(lambda tb: vmap(self._adapt_one, in_dims=(0, 0))(tb, self.batch.train), theta_b)
        return theta, {k: v.detach() for k, v in phis_b.items()}, lambda w: vjp_fn(w)[0]

    def _hvp(self, theta: Params, phis: Params, pullback: Callable[[Params], Params],
             damping: float) -> Callable[[Tensor], Tensor]:
        """Exact ``v -> mean_i J_iᵀ F_i J_i v + damping v`` at θ (see the module docstring)."""
        n = self.batch.num_tasks

        def kl_grad(p: Params) -> Params:
            return vmap(lambda q, q_old, val: grad(lambda z: self._kl_one(z, q_old, val))(q))(p, phis, self.batch.val)

        _, fisher_vjp = vjp(kl_grad, phis)  # per task F_i u_i (F_i is symmetric)

        def expand(v: Params) -> Params:
            return {k: x.unsqueeze(0).expand(n, *x.shape) for k, x in v.items()}

        if len(self.batch.train) <= 1:  # J_i is symmetric for one inner step (and the identity for none)
            forward = pullback
        else:  # J_i v_i as the transpose of the linear map w -> J_iᵀ w_i: reverse mode only, so it compiles
            _, transpose = vjp(pullback, {k: torch.zeros_like(x) for k, x in phis.items()})
            forward = lambda w: transpose(w)[0]  # noqa: E731

        def hvp(v_flat: Tensor) -> Tensor:
            v_flat = v_flat.detach()
            hv = pullback(fisher_vjp(forward(expand(set_flat_params(theta, v_flat))))[0])
            return flat_params({k: x.sum(0) for k, x in hv.items()}) / n + damping * v_flat

        return hvp

    def trpo_terms(self, params: Params, damping: float, curvature_tasks: int | None = None
                   ) -> tuple[Params, Tensor, Tensor, Callable[[Tensor], Tensor]]:
        """At θ = ``params``: (φ_old, old log-probs, flat surrogate meta-gradient, ``v -> H v + damping v``).

        The gradient is the exact second-order meta-gradient over every task. The curvature is exact over
        the first ``curvature_tasks`` tasks (default: all, the paper's setting); fewer trade exactness of the
        CG direction for speed, while the line search still checks the KL over every task.
        """
        n = self.batch.num_tasks
        theta, phis, pullback = self._linearize(params)
        old_logp = self.old_log_probs(phis)
        g_phi = vmap(grad(self._surrogate_one))(phis, self.batch.val, old_logp)
        gradient = flat_params({k: v.sum(0) for k, v in pullback(g_phi).items()}) / n
        m = n if curvature_tasks is None else max(1, min(n, curvature_tasks))
        if m == n:
            return phis, old_logp, gradient, self._hvp(theta, phis, pullback, damping)
        sub = self.head(m)
        _, sub_phis, sub_pullback = sub._linearize(params)
        return phis, old_logp, gradient, sub._hvp(theta, sub_phis, sub_pullback, damping)


def natural_direction(obj: MamlRlObjective, params: Params, damping: float, cg_iters: int,
                      curvature_tasks: int | None = None) -> tuple[Params, Tensor, Tensor, Tensor, Tensor]:
    """φ_old, old log-probs, the flat meta-gradient ``g``, and CG's solution ``x`` of ``H x = -g`` with its
    residual ``r``: the whole of TRPO's work before the line search, as one function.

    It has no data-dependent branch (CG runs all ``cg_iters`` iterations), so ``torch.compile`` can trace it
    whole and fuse the many elementwise passes of the Hessian-vector products (``rl.compile``).
    """
    phis, old_logp, gradient, hvp = obj.trpo_terms(params, damping, curvature_tasks)
    x, r = conjugate_gradient(hvp, -gradient, cg_iters, with_residual=True, early_stop=False)
    return phis, old_logp, gradient, x, r


def candidate_terms(obj: MamlRlObjective, params: Params, old_logp: Tensor, phis_old: Params) -> tuple[Tensor, Tensor]:
    """The line search's surrogate and KL at a candidate θ': both on the φ_i(θ') of one adaptation."""
    phis = obj.adapted(params)
    return obj.surrogate_at(phis, old_logp), obj.kl_at(phis, phis_old)


def compiled(policy: nn.Module, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (:func:`natural_direction` or :func:`candidate_terms`) through ``torch.compile``, for ``policy``.

    Compiled on first call, and again if the shapes change. ``torch.distributions.kl_divergence`` memoises its
    type dispatch in a global dict on first use, and a first use inside the traced function fails to compile;
    one eager KL of the policy's own distribution fills that entry first.
    """
    weight = next(policy.parameters())
    with torch.no_grad():
        dist = policy_distribution(policy, dict(policy.named_parameters()), weight.new_zeros(1, policy.obs_dim))
        policy_kl(dist, dist)
    return torch.compile(fn, dynamic=False)
