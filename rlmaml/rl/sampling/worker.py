"""``RolloutWorker``: samples a task's pre- and post-adaptation trajectories.

A plain class: :class:`rlmaml.rl.sampling.samplers.LocalSampler` runs it in-process and
:class:`rlmaml.rl.sampling.samplers.RaySampler` wraps it in ``ray.remote`` unchanged (RLlib's EnvRunner split). It owns
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

import inspect
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rlmaml.config import Config
from rlmaml.meta import Params, all_finite
from rlmaml.rl.adaptation import acting_params
from rlmaml.rl.env_module import import_env_module
from rlmaml.rl.objectives import inner_loss
from rlmaml.rl.policies import make_policy, params_from_numpy
from rlmaml.rl.sampling.rollout import (
    NonFiniteSampleError,
    one_line,
    rollout_step_budget,
    rollout_tasks,
    task_seeds,
    torch_threads,
)


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
    env_path: str = ""
    """Directory to find ``env_module`` in (where the driver found it; a Ray actor's working directory is Ray's)."""
    env_threads: int = 1
    """Threads of the env's physics stepper (``make_batched(..., num_threads=)``), for batched envs that take
    them (the MuJoCo tasks' ``MujocoBatchedEnv``; not Navigation2D's or the generic ``SerialBatchedEnv``, which
    ignore it); a ``num_threads`` in ``env_kwargs`` wins. One actor can then step on every core of its node."""

    @classmethod
    def from_config(cls, cfg: Config, env_path: str = "") -> WorkerSpec:
        r = cfg.rl
        return cls(env_id=r.env, horizon=r.horizon, trajectories=r.trajectories, hidden=tuple(r.hidden),
                   init_std=r.init_std, min_std=r.min_std, gamma=r.gamma, gae_lambda=r.gae_lambda,
                   inner_loss=r.inner_loss, seed=cfg.run.seed, env_module=r.env_module, env_threads=r.env_threads,
                   env_kwargs=config_env_kwargs(cfg), normalize_actions=r.normalize_actions, env_path=env_path)


def config_env_kwargs(cfg: Config) -> dict[str, Any]:
    """The keyword arguments the config passes to every env it makes (``rl.frame_skip``, when set)."""
    return {"frame_skip": cfg.rl.frame_skip} if cfg.rl.frame_skip else {}


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
    """Sample each batch as rllab did (:mod:`rlmaml.rl.sampling.rollout`): the episodes that K auto-reset slots
    complete within K·H steps, rather than K episodes."""


class RolloutWorker:
    """Samples tasks for the learner: a batched env of K trajectories and a CPU copy of the policy."""

    def __init__(self, spec: WorkerSpec, num_threads: int | None = None) -> None:
        import envs  # noqa: F401  (registers the rlmaml/ env ids)

        if num_threads is not None:
            torch.set_num_threads(num_threads)
        import_env_module(spec.env_module, spec.env_path)
        self.spec = spec
        self._envs: dict[tuple[int, int], Any] = {}
        self._shared: dict[int, int] = {}  # trajectories K -> how many slot envs share one physics batch
        self._env_kwargs = dict(spec.env_kwargs)
        probe = self._env(spec.trajectories)
        if spec.env_threads != 1 and "num_threads" not in self._env_kwargs and _takes_threads(probe):
            self._env_kwargs["num_threads"] = int(spec.env_threads)
            _close(self._envs.pop((spec.trajectories, 0)))
            probe = self._env(spec.trajectories)
        self.observation_space = probe.single_observation_space
        self.action_space = probe.single_action_space
        self.policy = make_policy(self.observation_space, self.action_space, spec.hidden, spec.init_std, spec.min_std)
        self.inner_loss = inner_loss(self.policy, spec.inner_loss)  # type: ignore[arg-type]

    def _env(self, k: int, slot: int = 0) -> Any:
        """The batched env of ``k`` trajectories for the ``slot``-th task of a call (built once, then reused)."""
        from envs import make_batched

        if (k, slot) not in self._envs:
            self._envs[(k, slot)] = make_batched(self.spec.env_id, k, **self._env_kwargs)
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
        return _result(request, batches, time.perf_counter() - start)

    def _invalid(self, request: TaskRequest, exc: BaseException, start: float) -> dict[str, Any]:
        """The result of a task whose sampling met a non-finite number: no episodes, ``valid: False``, a reason."""
        reason = (f"non-finite number in task {request.task_index} (iteration {request.iteration}, "
                  f"seed {self.spec.seed}, env {self.spec.env_id}): {one_line(exc)}")
        return _result(request, [], time.perf_counter() - start) | {"valid": False, "reason": reason}

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
        return [_result(r, batches, seconds) for r, batches in zip(requests, per_task, strict=True)]

    def _sample(self, weights: dict[str, np.ndarray], requests: Sequence[TaskRequest]
                ) -> list[list[dict[str, np.ndarray]]]:
        """Every request's episode batches ``[D_0, ..., D_steps]``; the requests share trajectories and lrs."""
        k = requests[0].trajectories or self.spec.trajectories
        envs = [self._env(k, slot) for slot in range(len(requests))]
        if len(envs) > self._shared.get(k, 1):  # new slots: one physics batch for all of them (same data)
            from envs import share_physics

            share_physics([self._env(k, slot) for slot in range(len(envs))])
            self._shared[k] = len(envs)
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
            params = self._adapt(params if isinstance(params, list) else [params] * len(requests), batches[-1], lr, step)
            batches.append(_in_batch(step + 1, sample, envs, self.policy, params, spec.horizon,
                                     [s + (step + 1) * k for s, _ in seeds], generators, spec.normalize_actions))
        return [list(task) for task in zip(*batches, strict=True)]

    def _adapt(self, thetas: Sequence[Params], batches: Sequence[dict[str, np.ndarray]], lr: float, step: int
               ) -> list[Params]:
        """Each task's φ after one first-order inner step from its θ on its episode batch (baseline fitted on it)."""
        gamma, lam = self.spec.gamma, self.spec.gae_lambda
        phis = [acting_params(self.inner_loss, theta, batch, lr, gamma, lam)
                for theta, batch in zip(thetas, batches, strict=True)]
        if not all(all_finite(phi) for phi in phis):
            raise NonFiniteSampleError(f"inner gradient step {step + 1} gave non-finite adapted parameters φ")
        return phis


def _takes_threads(env: Any) -> bool:
    """Whether a batched env's class takes ``num_threads`` (a named constructor argument)."""
    return "num_threads" in inspect.signature(type(env)).parameters


def _close(env: Any) -> None:
    """Close a batched env that has a ``close``."""
    close = getattr(env, "close", None)
    if callable(close):
        close()


def _result(request: TaskRequest, batches: list[dict[str, np.ndarray]], seconds: float) -> dict[str, Any]:
    """A worker's answer for one task: its episode batches ``[D_0, ..., D_steps]`` and the inner step sizes that
    made them (``lrs``: the learner recomputes φ with exactly these)."""
    return {"iteration": request.iteration, "task_index": request.task_index, "task": request.task,
            "episodes": batches, "lrs": list(request.lrs), "env_steps": int(sum(b["mask"].sum() for b in batches)),
            "sample_time_s": seconds, "pid": os.getpid(), "valid": True}


def _in_batch(index: int, fn: Any, *args: Any) -> Any:
    """Run one rollout; a non-finite number in it says which batch (0: θ, then φ after each inner step)."""
    try:
        return fn(*args)
    except FloatingPointError as exc:
        which = "pre-adaptation, θ" if index == 0 else f"after {index} inner step(s), φ"
        raise NonFiniteSampleError(f"batch {index} ({which}): {type(exc).__name__}: {one_line(exc)}") from exc
