"""The meta-RL training loop: the paper's Algorithm 3, with the details one call away.

    for each iteration:
        sample a meta-batch of tasks                          (seeded by run seed and iteration)
        for each task, on a worker:  D_tr ~ π_θ; φ = θ − α∇L(θ, D_tr); D_val ~ π_φ
        for each result, as it arrives, on the learner:  attach advantages
        outer step on θ: TRPO on the mean surrogate of π_φ(θ) on D_val
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rlmaml.config import Config, ConfigError, to_dict
from rlmaml.rl.learner import MetaLearner
from rlmaml.rl.learner_placement import make_learner
from rlmaml.rl.samplers import LocalSampler, Sampler
from rlmaml.rl.worker import TaskRequest, WorkerSpec, import_env_module
from rlmaml.runs import Deadline, Progress, RunDir, TrainingStopped, kill_point
from rlmaml.seeding import iteration_rng


def make_task_distribution(cfg: Config) -> Any:
    """The task distribution named by ``rl.task_distribution`` or registered for ``rl.env``."""
    import envs

    import_env_module(cfg.rl.env_module)
    if cfg.rl.task_distribution:
        obj = envs.load_object(cfg.rl.task_distribution)
        return obj() if isinstance(obj, type) else obj
    return envs.task_distribution(cfg.rl.env)


def check_rl_config(cfg: Config) -> None:
    """Fail before any work if the env id, env module or task distribution does not exist."""
    import gymnasium

    import envs  # noqa: F401  (registers rlmaml/ ids)

    try:
        import_env_module(cfg.rl.env_module)
        gymnasium.spec(cfg.rl.env)
    except (ValueError, gymnasium.error.Error) as exc:
        raise ConfigError(f"rl.env {cfg.rl.env!r} is not a registered Gymnasium id ({str(exc).splitlines()[0]})") from None
    try:
        make_task_distribution(cfg)
    except (ValueError, ImportError, AttributeError) as exc:
        raise ConfigError(f"no task distribution for rl.env {cfg.rl.env!r}: {str(exc).splitlines()[0]}") from None


def make_sampler(cfg: Config, spec: WorkerSpec) -> Sampler:
    """``LocalSampler`` for ``rl.backend=local``; otherwise Ray actors (a local Ray if no address)."""
    if cfg.rl.backend == "local":
        return LocalSampler(spec)
    from rlmaml.rl.ray_sampler import RaySampler

    return RaySampler.from_config(cfg, spec)


def task_requests(cfg: Config, distribution: Any, iteration: int) -> list[TaskRequest]:
    """The iteration's meta-batch of tasks, drawn from (run seed, iteration)."""
    tasks = distribution.sample(cfg.optim.meta_batch, iteration_rng(cfg.run.seed, iteration))
    lrs = (cfg.maml.inner_lr,) * cfg.maml.inner_steps  # 0 steps: the "pretrained" baseline, φ = θ
    # invalid_ok: a non-finite number in one task comes back as an invalid result (update skipped), not a crash
    budget = cfg.rl.batch == "steps"
    return [TaskRequest(iteration, i, task, lrs, invalid_ok=True, step_budget=budget) for i, task in enumerate(tasks)]


def checkpoint_state(cfg: Config, learner: MetaLearner, best: float, next_iteration: int,
                     failures: int = 0) -> dict[str, Any]:
    """What a resume needs: θ, optimiser, best return so far, RNG state (seed, next iteration), the count of
    consecutive skipped updates, config. All randomness derives from (seed, iteration, task index)."""
    return {"kind": "rl", "learner": learner.state_dict(), "best_return": best,
            "rng": {"seed": cfg.run.seed, "next_iteration": next_iteration}, "failures": failures,
            "config": to_dict(cfg)}


def train_rl(cfg: Config, run: RunDir, checkpoint: dict[str, Any] | None = None,
             sampler: Sampler | None = None) -> MetaLearner:
    """Meta-train a policy; metrics and checkpoints go to ``run``. Returns the learner."""
    check_rl_config(cfg)
    distribution = make_task_distribution(cfg)
    sampler = sampler or make_sampler(cfg, WorkerSpec.from_config(cfg))
    learner = make_learner(cfg, *sampler.spaces())  # GPU (driver or actor) when there is one; says where
    start, best, failures = 0, float("-inf"), 0
    if checkpoint is not None:
        learner.load_state_dict(checkpoint["learner"])
        start, best = int(checkpoint["iteration"]) + 1, float(checkpoint.get("best_return", best))
        failures = int(checkpoint.get("failures", 0))
        run.truncate_metrics(start - 1)
    if cfg.run.tensorboard:
        run.enable_tensorboard()
    progress = Progress(cfg.run.iterations, start, cfg.run.log_every, desc=cfg.run.name or "rl")
    deadline = Deadline(cfg.run.time_limit_min)
    try:
        for it in range(start, cfg.run.iterations):
            t0 = time.perf_counter()
            requests = task_requests(cfg, distribution, it)
            env_steps = 0
            for result in sampler.sample(learner.weights(), learner.version, requests):
                learner.add_task(result)
                env_steps += result["env_steps"]
                kill_point("sampling", it)  # test hook (no-op unless RLMAML_TEST_KILL_AT is set)
            t_sampled = time.perf_counter()
            theta_sampled = learner.state_dict()  # the θ whose adaptation these returns measure
            metrics = learner.step()
            kill_point("outer_step", it)  # test hook
            t_end = time.perf_counter()
            record = {"iteration": it, **metrics, "env_steps": env_steps,
                      "env_steps_per_s": env_steps / max(t_sampled - t0, 1e-9),
                      "sample_time_s": t_sampled - t0, "step_time_s": t_end - t_sampled,
                      "iteration_time_s": t_end - t0, **{f"faults_{k}": v for k, v in sampler.fault_counts().items()}}
            run.log(record)
            failures = 0 if metrics["accepted"] else failures + 1
            if not metrics["accepted"]:
                print(f"rlmaml: iteration {it}: update skipped ({metrics['reason']}); θ kept", file=sys.stderr)
            if failures >= cfg.run.max_consecutive_failures:
                raise TrainingStopped(f"{failures} consecutive updates skipped at iteration {it} "
                                      f"({metrics['reason']}); the last good checkpoint is kept in {run.checkpoint_dir}")
            progress.update(it, {"pre": metrics["return_pre"], "post": metrics["return_post"]})
            if not metrics.get("tasks_invalid") and metrics["return_post"] > best:  # a partial meta-batch is no best
                best = metrics["return_post"]
                best_state = checkpoint_state(cfg, learner, best, it + 1, failures) | {"learner": theta_sampled}
                run.save_checkpoint(best_state, it, tag="best")
            out_of_time = deadline.expired()
            if (it + 1) % cfg.run.checkpoint_every == 0 or it + 1 == cfg.run.iterations or out_of_time:
                run.save_checkpoint(checkpoint_state(cfg, learner, best, it + 1, failures), it,
                                    cfg.run.keep_checkpoints)
            if out_of_time:
                deadline.report(it + 1)
                break
    finally:
        progress.close()
        run.close()
        sampler.close()
    return learner
