"""Ray sampling throughput and overhead on HalfCheetahVel at the paper's sizes (or a fraction of them).

    python benchmarks/sampling_scaling.py                  # 40 * fraction tasks x 20 trajectories x H 200
    python benchmarks/sampling_scaling.py --fraction 1.0   # the paper's meta-batch of 40 tasks
    python benchmarks/sampling_scaling.py --preset nav2d --fraction 0.5 --tasks-per-call 1   # 20 nav2d tasks

In one run, on one local Ray instance, with the same θ and tasks:

  (a) the bare ``envs`` batched stepper: ``make_batched(id, K)`` stepped with random actions, in this process,
      for as many env steps as one meta-batch (both the pre- and post-adaptation rollouts);
  (a2) the same ``RolloutWorker`` in this process, without Ray (policy forward, adaptation: the worker's cost);
  (b) RaySampler with 1 worker, (c) with ``--workers`` workers (default 2): env steps per second;
  (d) a full meta-iteration with the (c) workers: sampling overlapped with the learner's per-task work, then the
      TRPO step (learner in this process, on the CPU unless CUDA is available).

Prints a table and the goals: scaling (c)/(b) >= 1.7 on 2 cores; Ray sampling (b) vs the bare stepper (a)
>= 0.8; driver time spent in Ray calls and transfers (put, submit, get and the result copy; not the idle
waiting) <= 5% of a meta-iteration; meta-iteration time <= 1.3 x the pure sampling time (c).
Timings are the best of ``--repeats`` (``--learn-repeats`` for the meta-iteration).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rlmaml.config import build_config  # noqa: E402
from rlmaml.rl.build import make_task_distribution, task_requests  # noqa: E402
from rlmaml.rl.learning.placement import make_learner  # noqa: E402
from rlmaml.rl.sampling.worker import WorkerSpec  # noqa: E402

PAPER_TASKS = 40


def bare_stepper(env_id: str, k: int, horizon: int, tasks: list[dict], rollouts: int, seed: int) -> tuple[float, int]:
    """Seconds and env steps for ``rollouts`` rollouts of every task with random actions (no policy)."""
    import envs

    env = envs.make_batched(env_id, k)
    rng = np.random.default_rng(seed)
    pool = rng.uniform(-1.0, 1.0, size=(64, k, env.single_action_space.shape[0])).astype(np.float32)
    steps = 0
    start = time.perf_counter()
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
    return time.perf_counter() - start, steps


def ray_overhead(stats: dict[str, float]) -> float:
    return stats["put_s"] + stats["submit_s"] + stats["get_s"]


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="halfcheetah-vel")
    parser.add_argument("--fraction", type=float, default=0.25, help="fraction of the paper's 40 tasks (default 0.25)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="repeats of each sampling measurement")
    parser.add_argument("--learn-repeats", type=int, default=1, help="repeats of the full meta-iteration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks-per-call", type=int, default=0,
                        help="tasks per Ray actor call (rl.tasks_per_call; 0: a share of the tasks left)")
    args = parser.parse_args()

    n_tasks = max(int(round(PAPER_TASKS * args.fraction)), args.workers)
    cfg = build_config(args.preset, [f"optim.meta_batch={n_tasks}", f"run.seed={args.seed}", "run.device=auto"])
    spec = WorkerSpec.from_config(cfg)
    requests = task_requests(cfg, make_task_distribution(cfg), 0)
    rollouts = len(requests[0].lrs) + 1
    print(f"{cfg.rl.env}: {n_tasks} tasks x {cfg.rl.trajectories} trajectories x H {cfg.rl.horizon} "
          f"({rollouts} rollouts per task), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
          flush=True)

    import ray

    from rlmaml.rl.ray_runtime import init_ray
    from rlmaml.rl.sampling.ray_sampler import RaySampler

    init_ray("", num_cpus=max(args.workers, os.cpu_count() or 1), include_dashboard=False)

    rows: list[tuple[str, str, str]] = []
    # (a) bare stepper
    best_bare = float("inf")
    for _ in range(args.repeats):
        secs, bare_steps = bare_stepper(cfg.rl.env, cfg.rl.trajectories, cfg.rl.horizon, [r.task for r in requests],
                                        rollouts, args.seed)
        best_bare = min(best_bare, secs)
    bare_rate = bare_steps / best_bare
    rows.append(("(a) bare envs batched stepper, 1 process", f"{bare_rate:,.0f} steps/s", f"{best_bare:.2f} s"))
    print(rows[-1], flush=True)

    # (a2) the same RolloutWorker in this process (no Ray): separates Ray's cost from the worker's own
    from rlmaml.rl.learning.learner import MetaLearner
    from rlmaml.rl.sampling.worker import RolloutWorker

    worker = RolloutWorker(spec, num_threads=1)
    weights0 = MetaLearner(cfg, *worker.spaces(), torch.device("cpu")).weights()
    worker.sample_task(weights0, requests[0])  # warm-up (lazy torch imports)
    best_local, local_steps = float("inf"), 0
    for _ in range(args.repeats):
        start = time.perf_counter()
        local_steps = sum(worker.sample_task(weights0, r)["env_steps"] for r in requests)
        best_local = min(best_local, time.perf_counter() - start)
    local_rate = local_steps / best_local
    rows.append(("(a2) RolloutWorker in this process (LocalSampler)", f"{local_rate:,.0f} steps/s", f"{best_local:.2f} s"))
    print(rows[-1], flush=True)
    del worker

    learner = None
    rates: dict[int, float] = {}
    sample_time: dict[int, float] = {}
    for n in sorted({1, args.workers}):
        sampler = RaySampler(spec, num_workers=n, task_timeout_s=600, max_task_retries=1,
                             tasks_per_call=args.tasks_per_call)
        try:
            if learner is None:
                learner = make_learner(cfg, *sampler.spaces())
            weights = learner.weights()
            list(sampler.sample(weights, task_requests(cfg, make_task_distribution(cfg), 99)[:n]))  # warm-up
            best, steps = float("inf"), 0
            for _ in range(args.repeats):
                start = time.perf_counter()
                steps = sum(r["env_steps"] for r in sampler.sample(weights, requests))
                best = min(best, time.perf_counter() - start)
            rates[n], sample_time[n] = steps / best, best
            rows.append((f"({'b' if n == 1 else 'c'}) RaySampler, {n} worker{'s' * (n > 1)}", f"{rates[n]:,.0f} steps/s",
                         f"{best:.2f} s"))
            print(rows[-1], flush=True)
            if n == args.workers:
                # (d) full meta-iterations: the learner's per-task work overlaps sampling, then the TRPO step
                best_it, best_share, parts = float("inf"), 0.0, (0.0, 0.0)
                for _ in range(args.learn_repeats):
                    before = sampler.stats()
                    start = time.perf_counter()
                    for result in sampler.sample(learner.weights(), learner.version, requests):
                        learner.add_task(result)
                    sampled = time.perf_counter()
                    metrics = learner.step()
                    end = time.perf_counter()
                    used = delta(sampler.stats(), before)
                    if end - start < best_it:
                        best_it, best_share, parts = end - start, ray_overhead(used) / (end - start), \
                            (sampled - start, end - sampled)
                    assert np.isfinite(metrics["surrogate_before"]), metrics
                rows.append((f"(d) meta-iteration, {n} workers (sample+learn | TRPO step)", f"{best_it:.2f} s",
                             f"{parts[0]:.2f} s | {parts[1]:.2f} s"))
                print(rows[-1], flush=True)
        finally:
            sampler.close()
    ray.shutdown()

    scaling = rates[args.workers] / rates[1] if args.workers > 1 else 1.0
    vs_bare = rates[1] / bare_rate
    ratio = best_it / sample_time[args.workers]
    learner_device = getattr(learner, "device", torch.device("cpu"))
    print()
    print(f"{'measurement':<58} {'value':>16} {'time':>22}")
    for name, value, t in rows:
        print(f"{name:<58} {value:>16} {t:>22}")
    print()
    print(f"{'figure':<58} {'measured':>10} {'goal':>10}")
    print(f"{f'scaling {args.workers} workers / 1 worker':<58} {scaling:>9.2f}x {'>= 1.7x':>10}")
    print(f"{'Ray sampling (1 worker) / bare stepper':<58} {vs_bare:>10.2f} {'>= 0.8':>10}")
    print(f"{'  of which: in-process RolloutWorker / bare stepper':<58} {local_rate / bare_rate:>10.2f}")
    print(f"{'  of which: Ray (1 worker) / in-process RolloutWorker':<58} {rates[1] / local_rate:>10.2f}")
    print(f"{'driver time in Ray calls + transfers / meta-iteration':<58} {100 * best_share:>9.1f}% {'<= 5%':>10}")
    print(f"{f'meta-iteration / pure sampling (learner on {learner_device.type})':<58} {ratio:>9.2f}x {'<= 1.3x':>10}")


if __name__ == "__main__":
    main()
