"""Env-stepping loops: K trajectories of one or many tasks, one batched policy forward per time step.

``rollout_tasks`` samples K episodes per task; ``rollout_step_budget`` samples rllab's batches. A task's seeds
derive from (run seed, iteration, task index, stream) (:func:`task_seeds`), so whichever worker samples a task
returns the same data.

rllab's batches: K env slots stepped with auto-reset until the completed episodes hold K·H steps.

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

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from rlmaml.meta import Params
from rlmaml.rl.policies import acting_forward, action_rescaler, actions_from_noise, check_stats, draw_noise


class NonFiniteSampleError(FloatingPointError):
    """Sampling met a non-finite observation, reward, policy output or adapted parameter (inner gradient)."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def task_seeds(seed: int, iteration: int, task_index: int, stream: int = 0) -> tuple[int, int]:
    """(env seed, action-noise seed) of one task, derived from (run seed, iteration, task index, stream)."""
    env_seed, noise_seed = np.random.SeedSequence([seed, iteration, task_index, stream]).generate_state(2)
    return int(env_seed), int(noise_seed)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads, then restore the previous count.

    Acting is one tiny forward per env step: extra threads only add synchronisation (measured: a 20x100
    linear layer took 3 ms with 2 contended threads and ~20 µs with one).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def rollout(env: Any, policy: torch.nn.Module, params: Params, horizon: int, env_seed: int,
            generator: torch.Generator, normalize_actions: bool = True) -> dict[str, np.ndarray]:
    """K trajectories of the env's current task as a time-major padded batch (numpy).

    One batched policy forward per time step; a trajectory that terminates or truncates stops being
    stepped (``active``) and is masked from then on. The batch holds the policy's own actions; with
    ``normalize_actions`` the env receives them rescaled from [-1, 1] to its bounds.
    """
    return rollout_tasks([env], policy, params, horizon, [env_seed], [generator], normalize_actions)[0]


def rollout_tasks(envs: Sequence[Any], policy: torch.nn.Module, params: Params | Sequence[Params], horizon: int,
                  env_seeds: Sequence[int], generators: Sequence[torch.Generator],
                  normalize_actions: bool = True) -> list[dict[str, np.ndarray]]:
    """:func:`rollout` for M tasks at once (one batched env each): one policy forward and one env step
    (``envs.step_tasks``) per time step for all of them.

    ``params`` is θ shared by every task, or one φ per task (:func:`acting_forward` batches the forward over tasks). Each
    task draws its whole rollout's action noise from its own generator up front, stops being stepped when all
    its trajectories are done, and has zeros wherever its mask is 0, so its batch does not depend on which
    other tasks it was sampled with.
    """
    from envs import step_tasks

    m, k = len(envs), envs[0].num_envs
    if not isinstance(params, Mapping) and len(params) == 1:
        params = params[0]  # one task: the shared-θ forward
    rescale = action_rescaler(envs[0].single_action_space) if normalize_actions else None  # once, not per step
    obs = np.stack([env.reset(seed) for env, seed in zip(envs, env_seeds, strict=True)]).astype(np.float32)
    if not np.isfinite(obs).all():
        raise NonFiniteSampleError("reset returned a non-finite observation")
    noise = torch.stack([draw_noise(policy, (horizon, k), g) for g in generators], dim=1).unbind(0)  # T x [M, K, ...]
    forward = acting_forward(policy, params, m, k)
    policy_input = torch.from_numpy(obs)  # a view: ``obs`` is updated in place, so each step converts nothing
    obs_buf = np.zeros((m, horizon, k, obs.shape[-1]), dtype=np.float32)
    action_buf: np.ndarray | None = None
    rewards = np.zeros((m, horizon, k), dtype=np.float32)
    mask = np.zeros((m, horizon, k), dtype=np.float32)
    alive = np.ones((m, k), dtype=bool)
    everyone = True  # every trajectory alive: the step's arrays go into the buffers as they are, unmasked
    with torch.no_grad():
        for t in range(horizon):
            stats = forward(policy_input)
            try:
                check_stats(stats)
            except FloatingPointError as exc:
                raise NonFiniteSampleError(f"policy output at step {t} is not finite ({one_line(exc, 120)})") from None
            action = actions_from_noise(policy, stats, noise[t])
            if action.dtype.kind == "f" and not np.isfinite(action if everyone else action[alive]).all():
                raise NonFiniteSampleError(f"policy output at step {t} is not finite (an action is NaN or inf)")
            if action_buf is None:
                action_buf = np.zeros((m, horizon, *action.shape[1:]), dtype=action.dtype)
            env_action = action if rescale is None else rescale(action)
            if everyone:
                action_buf[:, t] = action
                obs_buf[:, t] = obs
                mask[:, t] = 1.0
                step_obs, reward, terminated, truncated = step_tasks(envs, env_action, alive.copy())
                obs[:] = step_obs
                rewards[:, t] = reward
                alive &= ~(np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool))
            else:  # zeros where a trajectory has ended; only the tasks with one still running are stepped
                action_buf[:, t] = np.where(alive.reshape(m, k, *([1] * (action.ndim - 2))), action, 0)
                obs_buf[:, t] = np.where(alive[..., None], obs, 0.0)
                mask[:, t] = alive
                idx = np.flatnonzero(alive.any(axis=1))
                step_obs, reward, terminated, truncated = step_tasks(
                    [envs[i] for i in idx], env_action[idx], alive[idx])
                obs[idx] = step_obs
                rewards[idx, t] = np.where(alive[idx], reward, 0.0)
                alive[idx] &= ~(np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool))
            everyone = bool(alive.all())
            if not everyone and not alive.any():
                break
    assert action_buf is not None
    return [{"observations": obs_buf[i], "actions": action_buf[i], "rewards": rewards[i], "mask": mask[i]}
            for i in range(m)]


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
    """:func:`rollout_tasks` with rllab's batches: for each of the M tasks, the episodes that
    ``K = env.num_envs`` slots complete within ``K · horizon`` steps, each one a column of a ``[horizon, K']``
    padded batch (``K' >= K``).

    Waves of all the tasks still undecided are sampled together. A task draws one wave after another from its
    own generator and seeds (:func:`wave_seed`) and stops once its batch is decided, so its batch does not
    depend on which other tasks it was sampled with.
    """
    m, k = len(envs), envs[0].num_envs
    shared = isinstance(params, Mapping)  # θ for every task: the shared forward, not one per copy
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
