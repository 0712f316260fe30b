"""The policy's inner step, one definition for every site that adapts θ to a task.

"Episode batch → advantages → one policy-gradient step" runs on the rollout worker (first order, detached: φ
only acts), at test time and in the video recorder (the same), and on the learner (second order, under
``vmap``, through :class:`rlmaml.rl.learning.maml_objective.MamlRlObjective`). All of them go through
:func:`advantaged` and :func:`policy_step`,
so the data a worker acted on and the φ the learner differentiates agree by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from rlmaml.meta import LossFn, Params, adapt
from rlmaml.rl.episodes import Episodes
from rlmaml.rl.objectives import with_advantages


def advantaged(batch: Mapping[str, np.ndarray], gamma: float, gae_lambda: float,
               device: torch.device | str = "cpu") -> Episodes:
    """A worker's numpy episode batch as :class:`Episodes` on ``device``, returns and advantages attached."""
    return with_advantages(Episodes.from_numpy(batch, device), gamma, gae_lambda)


def policy_step(loss: LossFn, params: Params, episodes: Episodes, lr: float, *, first_order: bool) -> Params:
    """φ after one policy-gradient step of size ``lr`` on ``episodes`` (advantages attached)."""
    return adapt(loss, params, episodes, steps=1, lr=lr, first_order=first_order)


def acting_params(loss: LossFn, params: Params, batch: Mapping[str, np.ndarray] | Episodes, lr: float, gamma: float,
                  gae_lambda: float) -> Params:
    """φ to act with: one first-order step on a numpy batch (or on episodes with advantages attached), detached
    (no graph is kept: φ only samples)."""
    episodes = batch if isinstance(batch, Episodes) else advantaged(batch, gamma, gae_lambda)
    step = policy_step(loss, params, episodes, lr, first_order=True)
    return {k: v.detach() for k, v in step.items()}


def adaptation_path(loss: LossFn, theta: Params, batches: Sequence[Mapping[str, np.ndarray]],
                    lrs: Sequence[float], gamma: float, gae_lambda: float) -> list[Params]:
    """[θ, φ₁, ..., φ_N]: the acting parameters after each inner step, batch ``i`` adapting φ_i."""
    path = [theta]
    for batch, lr in zip(batches, lrs, strict=False):
        path.append(acting_params(loss, path[-1], batch, lr, gamma, gae_lambda))
    return path
