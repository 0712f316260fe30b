"""Sampling throughput on HalfCheetahVel: the worker's cost beyond the simulator, and Ray scaling.

    python benchmarks/sampling_scaling.py                  # 40 * fraction tasks x 20 trajectories x H 200
    python benchmarks/sampling_scaling.py --fraction 1.0   # the paper's meta-batch of 40 tasks
    python benchmarks/sampling_scaling.py --preset nav2d --fraction 0.5 --tasks-per-call 1   # 20 nav2d tasks
    python benchmarks/sampling_scaling.py --fraction 1 --learn-repeats 1 --set rl.compile=true rl.cg_task_fraction=0.25

In one run, with the same θ and tasks (one meta-batch: the pre- and post-adaptation rollouts of every task):

  (a)  the bare ``envs`` batched stepper: one ``make_batched(id, K)`` env stepped with uniform random actions,
       the tasks one after another (the reference of issue 17);
  (a1) the physics the worker runs: M = tasks envs stepped together by ``envs.step_tasks`` replaying the
       worker's own actions and seeds (same trajectories); (a2) minus (a1) is the worker's own cost;
  (a2) ``RolloutWorker.sample_tasks`` in this process (LocalSampler's path: policy forward, noise, buffers,
       adaptation);
  (a3) the worker as before issue 17: :func:`legacy_rollout_tasks`, each task's env stepped on its own, and the
       Python-loop physics stepper (``stepper="loop"``) for the MuJoCo tasks;
  (b)  RaySampler with 1 actor, (c) with ``--workers`` actors of 1 env thread each, (e) with 1 actor of
       ``--workers`` env threads (``WorkerSpec.env_threads``: ``mujoco.batch`` on that many threads);
  (f)  ``--workers`` actors on as many one-CPU nodes of a ``ray.cluster_utils.Cluster``, against the cost model of
       ``launch/README.md`` section 6 (ceil(tasks / actors) x one task's time on one actor, from (b));
  (d)  with ``--learn-repeats 1``: a full meta-iteration with the (c) actors, sampling overlapped with the
       learner's per-task work, then the TRPO step (learner in this process, on the CPU unless CUDA is available).

The in-process rows are timed round-robin, best of ``--repeats``, as wall and as CPU time of this process
(``time.process_time``): on a shared machine the CPU figure is the steadier one. Ray rows are wall time.
Goals: in-process worker / bare stepper (a) >= 0.85; Ray scaling (c)/(b) >= 1.7 on 2 cores; Ray (1 actor) /
bare stepper >= 0.8; driver time in Ray calls and transfers <= 5% of a meta-iteration; meta-iteration
<= 1.3 x the pure sampling time (c).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.func import vmap

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rlmaml.config import build_config  # noqa: E402
from rlmaml.rl.build import make_task_distribution, task_requests  # noqa: E402
from rlmaml.rl.learning.placement import make_learner  # noqa: E402
from rlmaml.rl.policies import (  # noqa: E402
    action_rescaler,
    actions_from_noise,
    check_stats,
    draw_noise,
    load_params,
    policy_stats,
)
from rlmaml.rl.sampling.worker import WorkerSpec  # noqa: E402

PAPER_TASKS = 40
BEFORE = "28.5k bare, 15.4k worker (0.54), measured before issue 17"


@dataclasses.dataclass
class Timing:
    """Best wall and CPU seconds over repeats, and the env steps of one run."""

    wall: float = float("inf")
    cpu: float = float("inf")
    steps: int = 0

    def rate(self, cpu: bool = False) -> float:
        """Env steps per second (wall, or CPU time of this process)."""
        return self.steps / (self.cpu if cpu else self.wall)


def timed_round_robin(runs: Mapping[str, Callable[[], int]], repeats: int) -> dict[str, Timing]:
    """Each run (returning its env steps) ``repeats`` times, interleaved, so that load changes hit them alike."""
    out = {name: Timing() for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            steps = run()
            t = out[name]
            t.wall, t.cpu, t.steps = min(t.wall, time.perf_counter() - wall), min(t.cpu, time.process_time() - cpu), steps
    return out


def bare_stepper(env: Any, k: int, horizon: int, tasks: list[dict], rollouts: int, seed: int) -> int:
    """Env steps of ``rollouts`` rollouts of every task, one after another, with uniform random actions."""
    pool = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(64, k, env.single_action_space.shape[0]))
    pool = pool.astype(np.float32)
    steps = 0
    for i, task in enumerate(tasks):
        env.set_task(task)
        for r in range(rollouts):
            env.reset(seed + 1000 * i + r * k)
            active = np.ones(k, dtype=bool)
            for t in range(horizon):
                _, _, term, trunc, _ = env.step(pool[t % 64], active)
                steps += int(active.sum())
                active &= ~(np.asarray(term) | np.asarray(trunc))
                if not active.any():
                    break
    return steps


def replay(envs: Sequence[Any], tasks: Sequence[dict], seeds: Sequence[Sequence[int]], actions: Sequence[np.ndarray],
           rescale: Callable[[np.ndarray], np.ndarray] | None) -> int:
    """Env steps of the worker's rollouts replayed: rollout ``j`` resets env ``i`` with ``seeds[j][i]`` and
    steps all envs together (``envs.step_tasks``) with ``actions[j][:, t]`` ([M, K, ...]) until all are done."""
    from envs import step_tasks

    for env, task in zip(envs, tasks, strict=True):
        env.set_task(task)
    steps = 0
    for seed_row, acts in zip(seeds, actions, strict=True):
        for env, s in zip(envs, seed_row, strict=True):
            env.reset(s)
        alive = np.ones(acts.shape[:1] + acts.shape[2:3], dtype=bool)
        for t in range(acts.shape[1]):
            a = acts[:, t] if rescale is None else rescale(acts[:, t])
            _, _, term, trunc = step_tasks(list(envs), a, alive.copy())
            steps += int(alive.sum())
            alive &= ~(np.asarray(term, dtype=bool) | np.asarray(trunc, dtype=bool))
            if not alive.any():
                break
    return steps


def legacy_rollout_tasks(envs: Sequence[Any], policy: torch.nn.Module, params: Any, horizon: int,
                         env_seeds: Sequence[int], generators: Sequence[torch.Generator],
                         normalize_actions: bool = True) -> list[dict[str, np.ndarray]]:
    """``rollout_tasks`` as it was before issue 17 (module forward or vmap per step, np.where into the buffers
    at every step, fancy-indexed env steps, each task's env stepped on its own), kept to time the new loop
    against it in the same run."""
    from envs.batched import step_each as step_tasks  # env by env: step_many came with issue 17

    m = len(envs)
    if not isinstance(params, Mapping) and len(params) == 1:
        params = params[0]
    shared = isinstance(params, Mapping)
    rescale = action_rescaler(envs[0].single_action_space) if normalize_actions else None
    k = envs[0].num_envs
    obs = np.stack([env.reset(seed) for env, seed in zip(envs, env_seeds, strict=True)]).astype(np.float32)
    noise = torch.stack([draw_noise(policy, (horizon, k), g) for g in generators], dim=1)
    obs_buf = np.zeros((m, horizon, k, obs.shape[-1]), dtype=np.float32)
    action_buf: np.ndarray | None = None
    rewards = np.zeros((m, horizon, k), dtype=np.float32)
    mask = np.zeros((m, horizon, k), dtype=np.float32)
    alive = np.ones((m, k), dtype=bool)
    if shared:
        load_params(policy, params)

        def forward(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
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
        check_stats(stats)
        action = actions_from_noise(policy, stats, noise[t])
        assert action.dtype.kind != "f" or np.isfinite(action[alive]).all()
        if action_buf is None:
            action_buf = np.zeros((m, horizon, *action.shape[1:]), dtype=action.dtype)
        live = alive.reshape(m, k, *([1] * (action.ndim - 2)))
        action_buf[:, t] = np.where(live, action, 0)
        obs_buf[:, t] = np.where(alive[..., None], obs, 0.0)
        mask[:, t] = alive
        env_action = action if rescale is None else rescale(action)
        idx = np.flatnonzero(running)
        step_obs, reward, terminated, truncated = step_tasks([envs[i] for i in idx], env_action[idx], alive[idx])
        obs[idx] = step_obs
        rewards[idx, t] = np.where(alive[idx], reward, 0.0)
        alive[idx] &= ~(np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool))
    assert action_buf is not None
    return [{"observations": obs_buf[i], "actions": action_buf[i], "rewards": rewards[i], "mask": mask[i]}
            for i in range(m)]


@contextlib.contextmanager
def legacy_worker() -> Iterator[None]:
    """While open, a new ``RolloutWorker`` samples as before issue 17: :func:`legacy_rollout_tasks`, and each
    task's env on its own physics batch."""
    import envs
    import rlmaml.rl.sampling.worker as worker_module

    saved = worker_module.rollout_tasks, envs.share_physics
    worker_module.rollout_tasks = legacy_rollout_tasks
    envs.share_physics = lambda batched: False  # one physics batch per task, as before
    try:
        yield
    finally:
        worker_module.rollout_tasks, envs.share_physics = saved


def worker_seeds(spec: WorkerSpec, requests: Sequence[Any], rollouts: int, k: int) -> list[list[int]]:
    """``[rollout][task]`` env seeds the worker resets with (batch j of a task: its env seed + j·K)."""
    from rlmaml.rl.sampling.rollout import task_seeds

    base = [task_seeds(spec.seed, r.iteration, r.task_index, r.stream)[0] for r in requests]
    return [[s + j * k for s in base] for j in range(rollouts)]


def in_process(cfg: Any, spec: WorkerSpec, requests: list[Any], repeats: int, seed: int) -> dict[str, Timing]:
    """Rows (a) to (a3), timed round-robin."""
    import envs
    from rlmaml.rl.learning.learner import MetaLearner
    from rlmaml.rl.sampling.worker import RolloutWorker

    k, horizon = cfg.rl.trajectories, cfg.rl.horizon
    rollouts = len(requests[0].lrs) + 1
    worker = RolloutWorker(spec, num_threads=1)
    weights = MetaLearner(cfg, *worker.spaces(), torch.device("cpu")).weights()
    first = worker.sample_tasks(weights, requests)  # warm-up (builds the M envs), and the actions to replay
    bare_env = envs.make_batched(cfg.rl.env, k)
    runs: dict[str, Callable[[], int]] = {
        "a": lambda: bare_stepper(bare_env, k, horizon, [r.task for r in requests], rollouts, seed),
        "a2": lambda: sum(r["env_steps"] for r in worker.sample_tasks(weights, requests)),
    }
    if not requests[0].step_budget:  # K episodes per batch: the replay is exact
        replay_envs = [envs.make_batched(cfg.rl.env, k) for _ in requests]
        actions = [np.stack([r["episodes"][j]["actions"] for r in first]) for j in range(rollouts)]
        seeds = worker_seeds(spec, requests, rollouts, k)
        rescale = action_rescaler(worker.action_space) if spec.normalize_actions else None
        runs["a1"] = lambda: replay(replay_envs, [r.task for r in requests], seeds, actions, rescale)
        assert runs["a1"]() == sum(r["env_steps"] for r in first), "the replay did not reproduce the rollouts"

    with legacy_worker():  # and the Python-loop physics stepper, the only one before issue 17
        old_spec = dataclasses.replace(spec, env_kwargs={**spec.env_kwargs, "stepper": "loop"})
        mujoco_env = hasattr(bare_env, "stepper")
        old_worker = RolloutWorker(old_spec if mujoco_env else spec, num_threads=1)

    def legacy() -> list[dict[str, Any]]:
        with legacy_worker():
            return old_worker.sample_tasks(weights, requests)

    same = all(np.array_equal(x[key], y[key]) for a, b in zip(first, legacy(), strict=True)
               for x, y in zip(a["episodes"], b["episodes"], strict=True) for key in x)
    print(f"in-process worker: episodes {'bit-identical to' if same else 'DIFFERENT from'} the pre-issue-17 loop's",
          flush=True)
    runs["a3"] = lambda: sum(r["env_steps"] for r in legacy())
    return timed_round_robin(runs, repeats)


def two_node_sampling(spec: WorkerSpec, requests: list[Any], weights: dict[str, np.ndarray], nodes: int,
                      repeats: int, tasks_per_call: int) -> tuple[float, float]:
    """(steps/s, best seconds) of sampling ``requests`` with one actor on each of ``nodes`` Ray nodes of one CPU
    (``ray.cluster_utils.Cluster`` on this machine: real raylets, object transfer between nodes' stores)."""
    import ray
    from ray.cluster_utils import Cluster

    from rlmaml.rl.ray_runtime import init_ray
    from rlmaml.rl.sampling.ray_sampler import RaySampler

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        init_ray(cluster.address)
        sampler = RaySampler(spec, num_workers=nodes, task_timeout_s=600, max_task_retries=1,
                             tasks_per_call=tasks_per_call)
        try:
            where = {w["node_id"] for w in sampler.worker_info()}
            assert len(where) == nodes, f"the actors did not spread over the {nodes} nodes: {where}"
            list(sampler.sample(weights, requests[:nodes]))  # warm-up
            best, steps = float("inf"), 0
            for _ in range(repeats):
                start = time.perf_counter()
                steps = sum(r["env_steps"] for r in sampler.sample(weights, requests))
                best = min(best, time.perf_counter() - start)
        finally:
            sampler.close()
    finally:
        ray.shutdown()
        cluster.shutdown()
    return steps / best, best


def ray_overhead(stats: dict[str, float]) -> float:
    return stats["put_s"] + stats["submit_s"] + stats["get_s"]


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="halfcheetah-vel")
    parser.add_argument("--fraction", type=float, default=0.25, help="fraction of the paper's 40 tasks (default 0.25)")
    parser.add_argument("--workers", type=int, default=2, help="N: actors in (c), env threads of the actor in (e)")
    parser.add_argument("--repeats", type=int, default=2, help="repeats of each sampling measurement")
    parser.add_argument("--learn-repeats", type=int, default=0,
                        help="repeats of the full meta-iteration (d) (default 0: skipped, it takes ~25 s more)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks-per-call", type=int, default=0,
                        help="tasks per Ray actor call (rl.tasks_per_call; 0: a share of the tasks left)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. --set rl.compile=true rl.cg_task_fraction=0.25 (the learner of (d))")
    args = parser.parse_args()
    torch.set_num_threads(1)

    n_tasks = max(int(round(PAPER_TASKS * args.fraction)), args.workers)
    cfg = build_config(args.preset, [f"optim.meta_batch={n_tasks}", f"run.seed={args.seed}", "run.device=auto",
                                     *args.set])
    spec = WorkerSpec.from_config(cfg)
    requests = task_requests(cfg, make_task_distribution(cfg), 0)
    rollouts = len(requests[0].lrs) + 1
    print(f"{cfg.rl.env}: {n_tasks} tasks x {cfg.rl.trajectories} trajectories x H {cfg.rl.horizon} "
          f"({rollouts} rollouts per task), {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} in this process's "
          f"affinity, which Ray's actors inherit), load average {os.getloadavg()[0]:.1f}", flush=True)
    print("A shared machine is not quiet: other jobs take turns on the same cores, so wall rates move between rows; "
          "the in-process rows are timed round-robin and their CPU-time rates are the steadier figures.", flush=True)

    rows: list[tuple[str, str, str]] = []
    local = in_process(cfg, spec, requests, args.repeats, args.seed)
    names = {"a": "(a) bare batched stepper, random actions, 1 env",
             "a1": f"(a1) bare: worker's actions replayed, {n_tasks} envs",
             "a2": "(a2) RolloutWorker.sample_tasks in-process",
             "a3": "(a3) the same, pre-issue-17 loop"}
    for key, name in names.items():
        if key in local:
            t = local[key]
            rows.append((name, f"{t.rate():,.0f} | {t.rate(cpu=True):,.0f}", f"{t.wall:.2f} | {t.cpu:.2f} s"))
            print(rows[-1], flush=True)

    import ray

    from rlmaml.rl.ray_runtime import init_ray
    from rlmaml.rl.sampling.ray_sampler import RaySampler

    init_ray("", num_cpus=max(args.workers, os.cpu_count() or 1), include_dashboard=False)
    learner = None
    rates: dict[str, float] = {}
    sample_time: dict[str, float] = {}
    best_it, best_share = float("nan"), float("nan")
    n = args.workers
    setups = [("b", 1, spec), ("c", n, spec), ("e", 1, dataclasses.replace(spec, env_threads=n))]
    for key, actors, actor_spec in setups if n > 1 else setups[:1]:
        sampler = RaySampler(actor_spec, num_workers=actors, task_timeout_s=600, max_task_retries=1,
                             tasks_per_call=args.tasks_per_call)
        try:
            if learner is None:
                learner = make_learner(cfg, *sampler.spaces())
            weights = learner.weights()
            list(sampler.sample(weights, task_requests(cfg, make_task_distribution(cfg), 99)[:actors]))  # warm-up
            best, steps = float("inf"), 0
            for _ in range(args.repeats):
                start = time.perf_counter()
                steps = sum(r["env_steps"] for r in sampler.sample(weights, requests))
                best = min(best, time.perf_counter() - start)
            rates[key], sample_time[key] = steps / best, best
            label = {"b": "(b) RaySampler, 1 actor x 1 env thread", "c": f"(c) RaySampler, {n} actors x 1 env thread",
                     "e": f"(e) RaySampler, 1 actor x {n} env threads"}[key]
            rows.append((label, f"{rates[key]:,.0f}", f"{best:.2f} s"))
            print(rows[-1], flush=True)
            if key == ("c" if n > 1 else "b") and args.learn_repeats > 0:
                # (d) full meta-iterations: the learner's per-task work overlaps sampling, then the TRPO step
                best_it, best_share, parts = float("inf"), 0.0, (0.0, 0.0)
                for _ in range(args.learn_repeats):
                    before = sampler.stats()
                    start = time.perf_counter()
                    for result in sampler.sample(learner.weights(), requests):
                        learner.add_task(result)
                    sampled = time.perf_counter()
                    metrics = learner.step()
                    end = time.perf_counter()
                    used = delta(sampler.stats(), before)
                    if end - start < best_it:
                        best_it, best_share = end - start, ray_overhead(used) / (end - start)
                        parts = (sampled - start, end - sampled)
                    assert np.isfinite(metrics["surrogate_before"]), metrics
                rows.append((f"(d) meta-iteration, {actors} actors (sample+learn | TRPO)", f"{best_it:.2f} s",
                             f"{parts[0]:.2f} | {parts[1]:.2f} s"))
                print(rows[-1], flush=True)
        finally:
            sampler.close()
    ray.shutdown()
    if n > 1:
        rates["f"], sample_time["f"] = two_node_sampling(spec, requests, learner.weights(), n, args.repeats,
                                                          args.tasks_per_call)
        rows.append((f"(f) RaySampler, {n} actors on {n} nodes (ray.cluster_utils)", f"{rates['f']:,.0f}",
                     f"{sample_time['f']:.2f} s"))
        print(rows[-1], flush=True)

    bare, worker, old = local["a"], local["a2"], local["a3"]
    learner_device = getattr(learner, "device", torch.device("cpu"))
    print()
    print(f"{'measurement':<52} {'steps/s wall | cpu':>20} {'time wall | cpu':>18}")
    for name, value, t in rows:
        print(f"{name:<52} {value:>20} {t:>18}")
    print()
    print(f"{'figure (in-process: wall | cpu)':<58} {'measured':>15} {'goal':>9}")

    def both(x: Timing, y: Timing) -> str:
        return f"{x.rate() / y.rate():.2f} | {x.rate(cpu=True) / y.rate(cpu=True):.2f}"

    print(f"{'worker (a2) / bare stepper (a)':<58} {both(worker, bare):>15} {'>= 0.85':>9}")
    if "a1" in local:
        print(f"{'worker (a2) / the same physics replayed (a1)':<58} {both(worker, local['a1']):>15}")
        print(f"{'physics replayed (a1) / bare stepper (a)':<58} {both(local['a1'], bare):>15}")
    print(f"{'worker (a2) / pre-issue-17 worker (a3)':<58} {both(worker, old):>15}")
    print(f"{'  before: ' + BEFORE:<58}")
    if n > 1:
        print(f"{f'Ray scaling {n} actors / 1 actor (c)/(b)':<58} {rates['c'] / rates['b']:>14.2f}x {'>= 1.7x':>9}")
        print(f"{f'Ray 1 actor x {n} env threads / {n} actors x 1 (e)/(c)':<58} {rates['e'] / rates['c']:>15.2f}")
        print(f"{f'Ray 1 actor x {n} env threads / 1 actor x 1 (e)/(b)':<58} {rates['e'] / rates['b']:>14.2f}x")
    print(f"{'Ray sampling (1 actor) / bare stepper (a), wall':<58} {rates['b'] / bare.rate():>15.2f} {'>= 0.8':>9}")
    print(f"{'Ray (1 actor) / in-process worker (a2), wall':<58} {rates['b'] / worker.rate():>15.2f}")
    if n > 1:
        # the cost model of launch/README.md section 6: ceil(tasks / actors) x one task's time on one actor
        per_task = sample_time["b"] / len(requests)
        predicted = -(-len(requests) // n) * per_task
        print(f"{f'cost model, {n} nodes: ceil(tasks/actors) x task time (b)':<58} {predicted:>14.2f}s")
        print(f"{'  measured (f) / predicted':<58} {sample_time['f'] / predicted:>15.2f}")
        print(f"{f'  {n} nodes (f) / {n} actors on one node (c)':<58} {sample_time['f'] / sample_time['c']:>15.2f}")
    if args.learn_repeats > 0:
        key = "c" if n > 1 else "b"
        print(f"{'driver time in Ray calls + transfers / meta-iteration':<58} {100 * best_share:>14.1f}% {'<= 5%':>9}")
        print(f"{f'meta-iteration / pure sampling (learner on {learner_device.type})':<58} "
              f"{best_it / sample_time[key]:>14.2f}x {'<= 1.3x':>9}")


if __name__ == "__main__":
    main()
