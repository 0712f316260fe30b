"""Env steps per second of the batched MuJoCo stepper against two baselines.

For HalfCheetahVel and AntVel, in one run:

  (a) ``envs.make_batched(id, K)`` with uniform random actions (K = 20 by default),
      resetting when every env has ended (ended envs are passed as inactive and not counted);
  (b) a bare loop of ``gymnasium.make("HalfCheetah-v5" / "Ant-v5").step()`` calls with reset on
      termination / truncation;
  (c) raw ``mujoco.mj_step(model, data, nstep=frame_skip)`` on one model, random controls.

Prints steps/s and the ratios a/b (goal >= 1.0) and a/c (goal >= 0.7).

    python benchmarks/env_throughput.py [--num-envs 20] [--steps 20000] [--repeats 3]
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
from envs._mujoco import _quiet_model_compile  # noqa: E402

PAIRS = [("rlmaml/HalfCheetahVel-v0", "HalfCheetah-v5"), ("rlmaml/AntVel-v0", "Ant-v5")]


def bench_batched(env_id: str, k: int, steps: int, seed: int, num_threads: int) -> float:
    env = envs.make_batched(env_id, k, num_threads=num_threads)
    rng = np.random.default_rng(seed)
    env.set_task(envs.task_distribution(env_id).sample(1, rng)[0])
    n_act = env.single_action_space.shape[0]
    # pre-draw actions so that the timing is the stepper, not the RNG
    pool = rng.uniform(-1.0, 1.0, size=(64, k, n_act))
    env.reset(seed)
    active = np.ones(k, dtype=bool)
    done = 0
    i = 0
    t0 = time.perf_counter()
    while done < steps:
        _, _, term, trunc, _ = env.step(pool[i % 64], active)
        done += int(active.sum())
        i += 1
        active &= ~(term | trunc)
        if not active.any():
            seed += k
            env.reset(seed)
            active[:] = True
    dt = time.perf_counter() - t0
    env.close()
    return done / dt


def bench_gym(gym_id: str, steps: int, seed: int) -> float:
    with _quiet_model_compile():
        env = gym.make(gym_id)
    rng = np.random.default_rng(seed)
    pool = rng.uniform(-1.0, 1.0, size=(64, env.action_space.shape[0])).astype(np.float32)
    env.reset(seed=seed)
    t0 = time.perf_counter()
    for i in range(steps):
        _, _, term, trunc, _ = env.step(pool[i % 64])
        if term or trunc:
            env.reset()
    dt = time.perf_counter() - t0
    env.close()
    return steps / dt


def bench_raw(gym_id: str, steps: int, seed: int) -> float:
    with _quiet_model_compile():
        base = gym.make(gym_id).unwrapped
    model, data, fs = base.model, base.data, base.frame_skip
    base.reset(seed=seed)
    rng = np.random.default_rng(seed)
    pool = rng.uniform(-1.0, 1.0, size=(64, model.nu))
    t0 = time.perf_counter()
    for i in range(steps):
        data.ctrl[:] = pool[i % 64]
        mujoco.mj_step(model, data, nstep=fs)
    dt = time.perf_counter() - t0
    return steps / dt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-envs", type=int, default=20, help="K for the batched stepper")
    p.add_argument("--steps", type=int, default=20000, help="env steps per measurement")
    p.add_argument("--repeats", type=int, default=3, help="take the best of this many measurements")
    p.add_argument("--threads", type=int, default=1, help="num_threads of the batched MuJoCo stepper")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    rows = []
    for env_id, gym_id in PAIRS:
        best = {"a": 0.0, "b": 0.0, "c": 0.0}
        for r in range(args.repeats):
            s = args.seed + 1000 * r
            best["a"] = max(best["a"], bench_batched(env_id, args.num_envs, args.steps, s, args.threads))
            best["b"] = max(best["b"], bench_gym(gym_id, args.steps, s))
            best["c"] = max(best["c"], bench_raw(gym_id, args.steps, s))
        rows.append((env_id, best["a"], best["b"], best["c"]))

    print(
        f"K={args.num_envs} steps={args.steps} repeats={args.repeats} threads={args.threads} "
        f"(best of repeats, env steps/s)"
    )
    header = f"{'env':<28}{'(a) batched':>14}{'(b) gym loop':>14}{'(c) raw mj_step':>17}{'a/b':>8}{'a/c':>8}"
    print(header)
    print("-" * len(header))
    for env_id, a, b, c in rows:
        print(f"{env_id:<28}{a:>14,.0f}{b:>14,.0f}{c:>17,.0f}{a / b:>8.2f}{a / c:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
