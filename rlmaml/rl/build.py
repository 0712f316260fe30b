"""Building a meta-RL run's parts from its config: the user's env module, the task distribution, the sampler,
and each iteration's meta-batch of task requests. Training and evaluation both start here.

Everything a user can get wrong about their env is found here, before any run directory is written: a missing
or broken ``rl.env_module``, an unknown env id, a task distribution that returns the wrong thing, spaces the
policy cannot handle. Each is a one-line :class:`rlmaml.config.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rlmaml.config import Config, ConfigError
from rlmaml.rl.env_module import import_env_module
from rlmaml.rl.sampling.samplers import LocalSampler, Sampler
from rlmaml.rl.sampling.worker import TaskRequest, WorkerSpec, config_env_kwargs
from rlmaml.seeding import iteration_rng


def make_task_distribution(cfg: Config) -> Any:
    """The task distribution named by ``rl.task_distribution`` or registered for ``rl.env``."""
    import envs

    import_env_module(cfg.rl.env_module)
    if cfg.rl.task_distribution:
        obj = envs.load_object(cfg.rl.task_distribution)
        return obj() if isinstance(obj, type) else obj
    return envs.task_distribution(cfg.rl.env)


def checked_tasks(tasks: Any, n: int, source: str) -> list[dict[str, Any]]:
    """``tasks`` if it is a list of ``n`` dicts, else a one-line ConfigError naming what came back."""
    if not isinstance(tasks, list):
        raise ConfigError(f"{source}.sample({n}, rng) must return a list of {n} task dicts, "
                          f"got {type(tasks).__name__}: {_short(tasks)}")
    if len(tasks) != n:
        raise ConfigError(f"{source}.sample({n}, rng) must return {n} tasks (optim.meta_batch), got {len(tasks)}")
    bad = next((t for t in tasks if not isinstance(t, Mapping)), None)
    if bad is not None or tasks is None:
        raise ConfigError(f"{source}.sample({n}, rng) must return task dicts, got an element of type "
                          f"{type(bad).__name__}: {_short(bad)}")
    return [dict(t) for t in tasks]


def _short(value: Any, limit: int = 80) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_rl_config(cfg: Config) -> None:
    """Fail before any work if the env id, env module, task distribution or spaces are wrong (one line)."""
    import gymnasium

    import envs  # noqa: F401  (registers rlmaml/ ids)
    from rlmaml.rl.policies import check_spaces

    try:
        import_env_module(cfg.rl.env_module)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        gymnasium.spec(cfg.rl.env)
    except (ValueError, gymnasium.error.Error) as exc:
        raise ConfigError(f"rl.env {cfg.rl.env!r} is not a registered Gymnasium id ({str(exc).splitlines()[0]})") from None
    try:
        distribution = make_task_distribution(cfg)
    except (ValueError, ImportError, AttributeError) as exc:
        raise ConfigError(f"no task distribution for rl.env {cfg.rl.env!r}: {str(exc).splitlines()[0]}") from None
    source = cfg.rl.task_distribution or f"the task distribution of {cfg.rl.env}"
    try:
        tasks = distribution.sample(cfg.optim.meta_batch, iteration_rng(cfg.run.seed, 0))
    except Exception as exc:  # noqa: BLE001 - the user's sampler failed: one line
        raise ConfigError(f"{source}.sample failed: {type(exc).__name__}: {exc}") from None
    checked_tasks(tasks, cfg.optim.meta_batch, source)
    from envs import make_batched

    try:
        probe = make_batched(cfg.rl.env, 1, tasks[0], **config_env_kwargs(cfg))
    except TypeError as exc:
        if cfg.rl.frame_skip and "frame_skip" in str(exc):
            raise ConfigError(f"rl.frame_skip={cfg.rl.frame_skip}: {cfg.rl.env} takes no frame_skip (the MuJoCo "
                              f"envs do); leave it at 0") from None
        raise ConfigError(f"rl.env {cfg.rl.env!r}: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:
        raise ConfigError(f"rl.env {cfg.rl.env!r}: {str(exc).splitlines()[0]}") from None
    try:
        check_spaces(probe.single_observation_space, probe.single_action_space, cfg.rl.env,
                     cfg.rl.normalize_actions)
    finally:
        close = getattr(probe, "close", None)
        if callable(close):
            close()


def make_sampler(cfg: Config, spec: WorkerSpec) -> Sampler:
    """``LocalSampler`` for ``rl.backend=local``; otherwise Ray actors (a local Ray if no address)."""
    if cfg.rl.backend == "local":
        return LocalSampler(spec)
    from rlmaml.rl.sampling.ray_sampler import RaySampler

    return RaySampler.from_config(cfg, spec)


def worker_spec(cfg: Config) -> WorkerSpec:
    """The workers' spec, with the directory the driver found ``rl.env_module`` in (for Ray actors)."""
    return WorkerSpec.from_config(cfg, env_path=import_env_module(cfg.rl.env_module))


def task_requests(cfg: Config, distribution: Any, iteration: int) -> list[TaskRequest]:
    """The iteration's meta-batch of tasks, drawn from (run seed, iteration)."""
    tasks = distribution.sample(cfg.optim.meta_batch, iteration_rng(cfg.run.seed, iteration))
    lrs = (cfg.maml.inner_lr,) * cfg.maml.inner_steps  # 0 steps: the "pretrained" baseline, φ = θ
    # invalid_ok: a non-finite number in one task comes back as an invalid result (update skipped), not a crash
    budget = cfg.rl.batch == "steps"
    return [TaskRequest(iteration, i, task, lrs, invalid_ok=True, step_budget=budget) for i, task in enumerate(tasks)]
