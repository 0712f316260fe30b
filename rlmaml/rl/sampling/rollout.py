"""rllab's batch semantics: K env slots stepped with auto-reset until the completed episodes hold K·H steps.

The MAML paper's RL figures come from rllab's ``VectorizedSampler``: a batch of ``batch_size`` steps runs
K = batch_size / H envs in lockstep, an env that ends an episode starts the next one at once, and sampling stops
at the first time step at which the *completed* episodes hold at least ``batch_size`` steps; episodes still
running are dropped. Where episodes can end early (2D navigation ends at its goal), such a batch holds more than
K episodes, weighted towards the short ones, so its mean return is higher than the mean of K episodes.

That set of episodes needs no env reset mid-rollout: slot j's w-th episode is column j of the w-th *wave* of K
ordinary episodes (all i.i.d. given the policy), it ends at global step ``L_j1 + ... + L_jw``, and which ones the
sampler keeps follows from the lengths alone (:func:`budget_selection`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from rlmaml.meta import Params


def budget_selection(lengths: np.ndarray, budget: int) -> np.ndarray | None:
    """The episodes a step-budget sampler keeps, ``[W, K]`` bool, from the lengths ``[W, K]`` of W waves of
    episodes of K slots; None when another wave is needed to tell.

    Slot j's w-th episode ends at global step ``ends[w, j] = lengths[:w+1, j].sum()``. The sampler stops at the
    first end time ``stop`` at which the episodes ended so far hold ``budget`` steps and keeps every episode
    ending at or before it. The answer is final once every slot's last known episode ends at or after ``stop``
    (an unseen episode ends later still).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 2 or (lengths < 1).any():
        raise ValueError(f"lengths must be a [waves, slots] array of positive episode lengths, got {lengths!r}")
    ends = lengths.cumsum(axis=0)
    order = np.argsort(ends, axis=None, kind="stable")
    filled = np.cumsum(lengths.ravel()[order])
    first = int(np.searchsorted(filled, budget))
    if first == len(filled):
        return None
    stop = ends.ravel()[order][first]
    if (ends[-1] < stop).any():
        return None
    return ends <= stop


def wave_seed(env_seed: int, wave: int) -> int:
    """The env seed of wave ``wave``: ``env_seed`` itself for the first (so its K episodes are the ones a
    K-trajectory batch has), then seeds derived from (env_seed, wave)."""
    if wave == 0:
        return int(env_seed)
    return int(np.random.SeedSequence([int(env_seed), wave]).generate_state(1)[0])


def rollout_step_budget(envs: Sequence[Any], policy: torch.nn.Module, params: Params | Sequence[Params],
                        horizon: int, env_seeds: Sequence[int], generators: Sequence[torch.Generator],
                        normalize_actions: bool = True) -> list[dict[str, np.ndarray]]:
    """:func:`rlmaml.rl.worker.rollout_tasks` with rllab's batches: for each of the M tasks, the episodes that
    ``K = env.num_envs`` slots complete within ``K · horizon`` steps, each one a column of a ``[horizon, K']``
    padded batch (``K' >= K``).

    Waves of all the tasks still undecided are sampled together. A task draws one wave after another from its
    own generator and seeds (:func:`wave_seed`) and stops once its batch is decided, so its batch does not
    depend on which other tasks it was sampled with.
    """
    from rlmaml.rl.worker import rollout_tasks

    m, k = len(envs), envs[0].num_envs
    shared = isinstance(params, Mapping)  # θ for every task: the plain forward, no vmap over copies
    waves: list[list[dict[str, np.ndarray]]] = [[] for _ in range(m)]
    batches: list[dict[str, np.ndarray] | None] = [None] * m
    while any(b is None for b in batches):
        todo = [i for i in range(m) if batches[i] is None]
        out = rollout_tasks([envs[i] for i in todo], policy, params if shared else [params[i] for i in todo], horizon,
                            [wave_seed(env_seeds[i], len(waves[i])) for i in todo],
                            [generators[i] for i in todo], normalize_actions)
        for i, batch in zip(todo, out, strict=True):
            waves[i].append(batch)
            keep = budget_selection(np.stack([w["mask"].sum(0) for w in waves[i]]), k * horizon)
            if keep is not None:
                batches[i] = {key: np.concatenate([w[key][:, keep[j]] for j, w in enumerate(waves[i])], axis=1)
                              for key in batch}
    return batches  # type: ignore[return-value]
