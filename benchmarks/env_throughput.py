"""Env steps per second of MujocoBatchedEnv's two physics steppers against a raw ``mj_step`` loop.

For HalfCheetahVel and AntVel, in one run, with K envs (``--envs``) and uniform random actions:

  raw      a bare Python loop of ``mujoco.mj_step(model, data, nstep=5)`` over K MjData (plus
           ``mj_rnePostConstraint`` for Ant, which the env needs for ``cfrc_ext``): the physics alone,
           one thread, no observations or rewards -- the reference;
  loop     ``make_batched(id, K, stepper="loop", num_threads=T)``: the Python-loop stepper;
  batch    ``make_batched(id, K, stepper="batch", num_threads=T)``: one ``mujoco.batch`` call per step,
           on T threads;

for each T of ``--threads``.  The batched envs are stepped through ``env.step`` (controls, physics,
observations, rewards, checks) and reset when every env has ended; ended envs are passed as inactive
and not counted.  Prints env steps per wall-clock second (best of ``--repeats``), their ratio to the raw
loop, and steps per CPU-second of the process (less sensitive to other processes sharing the cores;
with T threads it counts all of them).

    python benchmarks/env_throughput.py [--envs 16] [--steps 4000] [--threads 1 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import gymnasium as gym
import mujoco
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs  # noqa: E402

ENV_IDS = ("rlmaml/HalfCheetahVel-v0", "rlmaml/AntVel-v0")


def bench_raw(env_id: str, k: int, steps: int, seed: int) -> tuple[float, float]:
    """(steps/s, steps/CPU-s) of ``mj_step`` (+ ``mj_rnePostConstraint`` where needed) on K MjData, round robin."""
    bases = [gym.make(env_id).unwrapped for _ in range(k)]
    for i, b in enumerate(bases):
        b.reset(seed=seed + i)
    rne = bases[0].needs_cfrc
    model, fs = bases[0].model, bases[0].frame_skip
    datas = [b.data for b in bases]
    controls = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(64, k, model.nu))
    t0, c0 = time.perf_counter(), time.process_time()
    for t in range(steps // k):
        for i, d in enumerate(datas):
            d.ctrl[:] = controls[t % 64, i]
            mujoco.mj_step(model, d, nstep=fs)
            if rne:
                mujoco.mj_rnePostConstraint(model, d)
    n = (steps // k) * k
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def bench_batched(env_id: str, k: int, steps: int, seed: int, stepper: str, threads: int) -> tuple[float, float]:
    """(steps/s, steps/CPU-s) of ``env.step`` of a batched env, resetting when every env has ended."""
    env = envs.make_batched(env_id, k, stepper=stepper, num_threads=threads)
    rng = np.random.default_rng(seed)
    env.set_task(envs.task_distribution(env_id).sample(1, rng)[0])
    actions = rng.uniform(-1.0, 1.0, size=(64, k, env.single_action_space.shape[0]))  # drawn before timing
    env.reset(seed)
    active = np.ones(k, dtype=bool)
    done = i = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while done < steps:
        _, _, term, trunc, _ = env.step(actions[i % 64], active)
        done += int(active.sum())
        i += 1
        active &= ~(term | trunc)
        if not active.any():
            seed += k
            env.reset(seed)
            active[:] = True
    rates = done / (time.perf_counter() - t0), done / (time.process_time() - c0)
    env.close()
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", type=int, default=16, help="K, envs per batched env")
    p.add_argument("--steps", type=int, default=4000, help="env steps per measurement")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="num_threads values to measure")
    p.add_argument("--repeats", type=int, default=3, help="report the best of this many measurements")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    cases = [("raw mj_step loop", None, 1)]
    cases += [(f"{s} stepper, {t} thread{'s' * (t > 1)}", s, t) for s in ("loop", "batch") for t in args.threads]
    print(
        f"K={args.envs} steps={args.steps} repeats={args.repeats} mujoco={mujoco.__version__} "
        f"cpus={len(os.sched_getaffinity(0))} (best of repeats; ratio = steps/s over the raw loop's)"
    )
    header = f"{'env':<26}{'stepper':<26}{'steps/s':>10}{'ratio':>8}{'steps/cpu-s':>13}"
    print(header)
    print("-" * len(header))
    for env_id in ENV_IDS:
        raw = 0.0
        for name, stepper, threads in cases:
            best, best_cpu = 0.0, 0.0
            for r in range(args.repeats):
                s = args.seed + 1000 * r
                if stepper is None:
                    rate, cpu = bench_raw(env_id, args.envs, args.steps, s)
                else:
                    rate, cpu = bench_batched(env_id, args.envs, args.steps, s, stepper, threads)
                best, best_cpu = max(best, rate), max(best_cpu, cpu)
            raw = raw or best
            print(f"{env_id:<26}{name:<26}{best:>10,.0f}{best / raw:>8.2f}{best_cpu:>13,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
