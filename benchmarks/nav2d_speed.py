"""Time one meta-RL iteration at the paper's sizes: sampling, learner, and the curvature method.

    python benchmarks/nav2d_speed.py                     # nav2d: 20 tasks x 20 trajectories x H 100
    python benchmarks/nav2d_speed.py --env halfcheetah-vel --fraction 0.25
    python benchmarks/nav2d_speed.py --skip-naive rl.compile=true rl.cg_task_fraction=0.25 rl.ls_kl_extrapolate=true

Prints the sampling time (in-process RolloutWorker, one core, every task in one batched call as the local
sampler does), the learner's TRPO step with the exact J^T F J curvature (rlmaml's default), the same step
with naive double backprop through the adapted KL (third order), and the total. With ``rl.compile=true``
the first learner step, which compiles, is timed apart and the best of the later ones is reported.
Goal for nav2d: at most 1 s per meta-iteration on a 2-core CPU; the most used PyTorch MAML-TRPO
implementation takes about 10 s at the same sizes (REFERENCE.md).
"""

from __future__ import annotations

import argparse
import time

import torch

from rlmaml.config import build_config
from rlmaml.devices import resolve_device
from rlmaml.rl.build import make_task_distribution, task_requests
from rlmaml.rl.learning.learner import MetaLearner
from rlmaml.rl.learning.trpo import trpo_step
from rlmaml.rl.sampling.worker import RolloutWorker, WorkerSpec


def timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="nav2d", help="preset: nav2d, halfcheetah-vel, ...")
    parser.add_argument("--fraction", type=float, default=1.0, help="fraction of the paper's meta-batch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="learner torch threads (0: torch default)")
    parser.add_argument("--skip-naive", action="store_true", help="do not time the third-order reference")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. rl.cg_task_fraction=0.2")
    args = parser.parse_args()
    base = build_config(args.env, [])
    tasks = max(1, round(base.optim.meta_batch * args.fraction))
    cfg = build_config(args.env, [f"optim.meta_batch={tasks}", *args.overrides])
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(cfg.run.device)
    worker = RolloutWorker(WorkerSpec.from_config(cfg))
    learner = MetaLearner(cfg, *worker.spaces(), device)
    requests = task_requests(cfg, make_task_distribution(cfg), 0)
    weights = learner.weights()

    t_sample, results = timed(lambda: worker.sample_tasks(weights, requests), args.repeats)
    t_one_by_one, _ = timed(lambda: [worker.sample_task(weights, r) for r in requests], 1)
    steps = sum(r["env_steps"] for r in results)

    def learner_step(fast: bool) -> dict:
        theta = {k: v.detach().clone() for k, v in learner.params.items()}
        for r in results:
            learner.add_task(r)
        if fast:
            metrics = learner.step()
        else:  # the same TRPO step, curvature by double backprop through the adapted KL
            tasks_ = [learner.tasks[i] for i in sorted(learner.tasks)]
            obj = learner._objective(tasks_)
            with torch.no_grad():
                phis_old = obj.adapted(learner.params)
            old_logp = obj.old_log_probs(phis_old)
            res = trpo_step(learner.params, lambda p: obj.surrogate(p, old_logp), lambda p: obj.kl(p, phis_old),
                            learner.trpo)
            learner.tasks = {}
            metrics = {"accepted": res.accepted}
        with torch.no_grad():  # restore θ so every repeat does the same work
            for k, v in theta.items():
                learner.params[k].copy_(v)
        return metrics

    t_compile = timed(lambda: learner_step(True), 1)[0] if cfg.rl.compile else float("nan")  # compiles once
    t_fast, _ = timed(lambda: learner_step(True), args.repeats)
    t_naive = float("nan") if args.skip_naive else timed(lambda: learner_step(False), 1)[0]
    print(f"\n{args.env} {' '.join(args.overrides)}: {tasks} tasks x {cfg.rl.trajectories} trajectories "
          f"x H {cfg.rl.horizon}, device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'part':<44} {'seconds':>9}")
    print(f"{'sampling (1 core, ' + str(steps) + ' env steps)':<44} {t_sample:>9.2f}")
    print(f"{'  the same, one task per call':<44} {t_one_by_one:>9.2f}")
    if cfg.rl.compile:
        print(f"{'  first learner step (torch.compile)':<44} {t_compile:>9.2f}")
    print(f"{'learner TRPO step, J^T F J curvature':<44} {t_fast:>9.2f}")
    print(f"{'learner TRPO step, naive 3rd-order HVP':<44} {t_naive:>9.2f}")
    print(f"{'meta-iteration (sampling + learner)':<44} {t_sample + t_fast:>9.2f}")
    print(f"env steps/s while sampling: {steps / t_sample:,.0f};  goal (nav2d): <= 1 s per meta-iteration")


if __name__ == "__main__":
    main()
