"""``RolloutWorker``: samples a task's pre- and post-adaptation trajectories.

A plain class: :class:`rlmaml.rl.samplers.LocalSampler` runs it in-process and
:class:`rlmaml.rl.samplers.RaySampler` wraps it in ``ray.remote`` unchanged (RLlib's EnvRunner split). It owns
a batched env of K trajectories and a CPU copy of the policy. For one task it

1. samples K trajectories with θ, one batched policy forward per time step;
2. fits the baseline and adapts to φ with the learner's own inner-loss code (``rlmaml.meta.adapt``, first
   order: φ is only used to act, so no graph is built);
3. samples K trajectories with φ (repeated for more than one inner step);

and returns every episode batch as numpy. Its randomness derives from (run seed, iteration, task index),
so a retried call returns the same data: bit for bit when it holds the same tasks, as a task sampled with others
shares a batched policy forward, which can round differently in the last bits. ``sample_tasks`` does the same
for several tasks in one call, one policy forward per time step for all of them (the local sampler hands it a
whole meta-batch, each Ray actor call a share of it: ``rl.tasks_per_call``).

A non-finite number met while sampling (an observation or reward: the envs raise
``envs.base.NonFiniteStepError``; a policy output; the adapted parameters φ, i.e. the inner gradient) is a
:class:`NonFiniteSampleError`. A request with ``invalid_ok`` (the trainer's) then gets a result marked
``valid: False`` with a one-line ``reason`` naming task, iteration and seed, instead of an exception, so one
bad task costs one skipped update rather than the run.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.func import vmap

from rlmaml.config import Config
from rlmaml.meta import Params, adapt, all_finite
from rlmaml.rl.episodes import Episodes
from rlmaml.rl.objectives import inner_loss, with_advantages
from rlmaml.rl.policies import (
    action_rescaler,
    actions_from_noise,
    check_stats,
    draw_noise,
    load_params,
    make_policy,
    params_from_numpy,
    policy_stats,
)
from rlmaml.rl.step_budget import rollout_step_budget


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to build its env and policy; small and picklable."""

    env_id: str
    horizon: int
    trajectories: int
    hidden: tuple[int, ...]
    init_std: float
    min_std: float
    gamma: float
    gae_lambda: float
    inner_loss: str
    seed: int
    env_module: str = ""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    normalize_actions: bool = True

    @classmethod
    def from_config(cls, cfg: Config) -> WorkerSpec:
        r = cfg.rl
        return cls(env_id=r.env, horizon=r.horizon, trajectories=r.trajectories, hidden=tuple(r.hidden),
                   init_std=r.init_std, min_std=r.min_std, gamma=r.gamma, gae_lambda=r.gae_lambda,
                   inner_loss=r.inner_loss, seed=cfg.run.seed, env_module=r.env_module,
                   normalize_actions=r.normalize_actions)


@dataclass(frozen=True)
class TaskRequest:
    """One task to sample: ``len(lrs)`` adaptation steps, so ``len(lrs) + 1`` episode batches come back."""

    iteration: int
    task_index: int
    task: dict[str, Any]
    lrs: tuple[float, ...]
    trajectories: int = 0
    """Trajectories per batch; 0 uses the spec's."""
    stream: int = 0
    """Separates seed streams that share (iteration, task index), e.g. evaluation from training."""
    invalid_ok: bool = False
    """On a non-finite number, return a result marked ``valid: False`` (with a ``reason``) instead of raising."""
    step_budget: bool = False
    """Sample each batch as rllab did (:mod:`rlmaml.rl.step_budget`): the episodes that K auto-reset slots
    complete within K·H steps, rather than K episodes."""


class NonFiniteSampleError(FloatingPointError):
    """Sampling met a non-finite observation, reward, policy output or adapted parameter (inner gradient)."""


def _one_line(exc: BaseException, limit: int = 300) -> str:
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


def import_env_module(name: str) -> None:
    """Import the module that registers a user's env, with a clear error if it is missing."""
    if name:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ValueError(f"rl.env_module {name!r} cannot be imported: {exc}") from None


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

    ``params`` is θ shared by every task, or one φ per task (the forward then runs under ``vmap``). Each
    task draws its whole rollout's action noise from its own generator up front, stops being stepped when all
    its trajectories are done, and has zeros wherever its mask is 0, so its batch does not depend on which
    other tasks it was sampled with.
    """
    from envs import step_tasks

    m = len(envs)
    if not isinstance(params, Mapping) and len(params) == 1:
        params = params[0]  # one task: the plain module forward, no vmap
    shared = isinstance(params, Mapping)
    rescale = action_rescaler(envs[0].single_action_space) if normalize_actions else None  # once, not per step
    k = envs[0].num_envs
    obs = np.stack([env.reset(seed) for env, seed in zip(envs, env_seeds, strict=True)]).astype(np.float32)
    if not np.isfinite(obs).all():
        raise NonFiniteSampleError("reset returned a non-finite observation")
    noise = torch.stack([draw_noise(policy, (horizon, k), g) for g in generators], dim=1)  # [T, M, K, ...]
    obs_buf = np.zeros((m, horizon, k, obs.shape[-1]), dtype=np.float32)
    action_buf: np.ndarray | None = None
    rewards = np.zeros((m, horizon, k), dtype=np.float32)
    mask = np.zeros((m, horizon, k), dtype=np.float32)
    alive = np.ones((m, k), dtype=bool)
    if shared:
        load_params(policy, params)  # act with the module itself: no functional_call per step

        def forward(x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # [M, K, obs] -> stats [M, K, ...]
            return tuple(s.reshape(m, k, *s.shape[1:]) for s in policy(x.reshape(m * k, -1), stats_only=True))
    else:
        stacked = {name: torch.stack([p[name] for p in params]) for name in params[0]}
        forward = partial(vmap(partial(policy_stats, policy)), stacked)
    for t in range(horizon):
        running = alive.any(axis=1)
        if not running.any():
            break
        with torch.no_grad():
            stats = forward(torch.from_numpy(obs))
        try:
            check_stats(stats)
        except FloatingPointError as exc:
            raise NonFiniteSampleError(f"policy output at step {t} is not finite ({_one_line(exc, 120)})") from None
        action = actions_from_noise(policy, stats, noise[t])
        if action.dtype.kind == "f" and not np.isfinite(action[alive]).all():
            raise NonFiniteSampleError(f"policy output at step {t} is not finite (an action is NaN or inf)")
        if action_buf is None:
            action_buf = np.zeros((m, horizon, *action.shape[1:]), dtype=action.dtype)
        live = alive.reshape(m, k, *([1] * (action.ndim - 2)))
        action_buf[:, t] = np.where(live, action, 0)
        obs_buf[:, t] = np.where(alive[..., None], obs, 0.0)
        mask[:, t] = alive
        env_action = action if rescale is None else rescale(action)
        idx = np.flatnonzero(running)
        step_obs, reward, terminated, truncated = step_tasks(
            [envs[i] for i in idx], env_action[idx], alive[idx])
        obs[idx] = step_obs
        rewards[idx, t] = np.where(alive[idx], reward, 0.0)
        alive[idx] &= ~(np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool))
    assert action_buf is not None
    return [{"observations": obs_buf[i], "actions": action_buf[i], "rewards": rewards[i], "mask": mask[i]}
            for i in range(m)]


class RolloutWorker:
    """Samples tasks for the learner: a batched env of K trajectories and a CPU copy of the policy."""

    def __init__(self, spec: WorkerSpec, num_threads: int | None = None) -> None:
        import envs  # noqa: F401  (registers the rlmaml/ env ids)

        if num_threads is not None:
            torch.set_num_threads(num_threads)
        import_env_module(spec.env_module)
        self.spec = spec
        self._envs: dict[tuple[int, int], Any] = {}
        probe = self._env(spec.trajectories)
        self.observation_space = probe.single_observation_space
        self.action_space = probe.single_action_space
        self.policy = make_policy(self.observation_space, self.action_space, spec.hidden, spec.init_std, spec.min_std)
        self.inner_loss = inner_loss(self.policy, spec.inner_loss)  # type: ignore[arg-type]

    def _env(self, k: int, slot: int = 0) -> Any:
        """The batched env of ``k`` trajectories for the ``slot``-th task of a call (built once, then reused)."""
        from envs import make_batched

        if (k, slot) not in self._envs:
            self._envs[(k, slot)] = make_batched(self.spec.env_id, k, **self.spec.env_kwargs)
        return self._envs[(k, slot)]

    def pid(self) -> int:
        """The worker's process id (tests kill it to inject a fault)."""
        return os.getpid()

    def spaces(self) -> tuple[Any, Any]:
        """The single-env observation and action spaces (the learner builds its policy from them)."""
        return self.observation_space, self.action_space

    def sample_task(self, weights: dict[str, np.ndarray], request: TaskRequest) -> dict[str, Any]:
        """Sample, adapt (first order) and sample again for one task; everything returned is numpy.

        An exception inside the env reaches the caller with the env, task, iteration and seed in its message.
        """
        start = time.perf_counter()
        try:
            with torch_threads(1):
                (batches,) = self._sample(weights, [request])
        except Exception as exc:
            if request.invalid_ok and isinstance(exc, FloatingPointError):
                return self._invalid(request, exc, start)
            raise RuntimeError(
                f"sampling failed on env {self.spec.env_id} task {request.task_index} {request.task} "
                f"(iteration {request.iteration}, seed {self.spec.seed}): {type(exc).__name__}: {exc}") from exc
        env_steps = int(sum(b["mask"].sum() for b in batches))
        return {"iteration": request.iteration, "task_index": request.task_index, "task": request.task,
                "episodes": batches, "env_steps": env_steps, "sample_time_s": time.perf_counter() - start,
                "pid": os.getpid(), "valid": True}

    def _invalid(self, request: TaskRequest, exc: BaseException, start: float) -> dict[str, Any]:
        """The result of a task whose sampling met a non-finite number: no episodes, ``valid: False``, a reason."""
        reason = (f"non-finite number in task {request.task_index} (iteration {request.iteration}, "
                  f"seed {self.spec.seed}, env {self.spec.env_id}): {_one_line(exc)}")
        return {"iteration": request.iteration, "task_index": request.task_index, "task": request.task,
                "episodes": [], "env_steps": 0, "sample_time_s": time.perf_counter() - start,
                "pid": os.getpid(), "valid": False, "reason": reason}

    def sample_tasks(self, weights: dict[str, np.ndarray], requests: Sequence[TaskRequest]) -> list[dict[str, Any]]:
        """:meth:`sample_task` for several tasks at once: each time step runs one policy forward for all of
        them (:func:`rollout_tasks`), which is most of the sampling time for cheap envs such as nav2d.

        Each task's data is the same as from :meth:`sample_task` up to float rounding in the batched
        forward. Requests that differ in trajectories, inner steps or batch kind, and any failure in the batched call, go
        through :meth:`sample_task` one by one, which attributes an error or a non-finite number to its task.
        """
        requests = list(requests)
        if len(requests) < 2 or len({(r.trajectories or self.spec.trajectories, r.lrs, r.step_budget)
                                     for r in requests}) > 1:
            return [self.sample_task(weights, r) for r in requests]
        start = time.perf_counter()
        try:
            with torch_threads(1):
                per_task = self._sample(weights, requests)
        except Exception:
            return [self.sample_task(weights, r) for r in requests]
        seconds = (time.perf_counter() - start) / len(requests)
        return [{"iteration": r.iteration, "task_index": r.task_index, "task": r.task, "episodes": batches,
                 "env_steps": int(sum(b["mask"].sum() for b in batches)), "sample_time_s": seconds,
                 "pid": os.getpid(), "valid": True} for r, batches in zip(requests, per_task, strict=True)]

    def _sample(self, weights: dict[str, np.ndarray], requests: Sequence[TaskRequest]
                ) -> list[list[dict[str, np.ndarray]]]:
        """Every request's episode batches ``[D_0, ..., D_steps]``; the requests share trajectories and lrs."""
        k = requests[0].trajectories or self.spec.trajectories
        envs = [self._env(k, slot) for slot in range(len(requests))]
        seeds = [task_seeds(self.spec.seed, r.iteration, r.task_index, r.stream) for r in requests]
        generators = [torch.Generator().manual_seed(noise_seed) for _, noise_seed in seeds]
        for env, r in zip(envs, requests, strict=True):
            env.set_task(r.task)
        spec = self.spec
        sample = rollout_step_budget if requests[0].step_budget else rollout_tasks
        params: Params | list[Params] = params_from_numpy(weights)
        batches = [_in_batch(0, sample, envs, self.policy, params, spec.horizon, [s for s, _ in seeds],
                             generators, spec.normalize_actions)]
        for step, lr in enumerate(requests[0].lrs):
            thetas = params if isinstance(params, list) else [params] * len(requests)
            params = [self._adapt(theta, batch, lr, step) for theta, batch in zip(thetas, batches[-1], strict=True)]
            batches.append(_in_batch(step + 1, sample, envs, self.policy, params, spec.horizon,
                                     [s + (step + 1) * k for s, _ in seeds], generators, spec.normalize_actions))
        return [list(task) for task in zip(*batches, strict=True)]

    def _adapt(self, params: Params, batch: dict[str, np.ndarray], lr: float, step: int) -> Params:
        """φ after one first-order inner step on one episode batch (baseline fitted on it)."""
        episodes = with_advantages(Episodes.from_numpy(batch), self.spec.gamma, self.spec.gae_lambda)
        phi = {k: v.detach() for k, v in adapt(self.inner_loss, params, episodes, steps=1, lr=lr,
                                               first_order=True).items()}
        if not all_finite(phi):
            raise NonFiniteSampleError(f"inner gradient step {step + 1} gave non-finite adapted parameters φ")
        return phi


def _in_batch(index: int, fn: Any, *args: Any) -> Any:
    """Run one rollout; a non-finite number in it says which batch (0: θ, then φ after each inner step)."""
    try:
        return fn(*args)
    except FloatingPointError as exc:
        which = "pre-adaptation, θ" if index == 0 else f"after {index} inner step(s), φ"
        raise NonFiniteSampleError(f"batch {index} ({which}): {type(exc).__name__}: {_one_line(exc)}") from exc
