"""Meta-RL evaluation: adapt a trained θ to test goals with 0..N policy-gradient steps (the paper's protocol).

For each test goal a ``RolloutWorker`` (through the same local or Ray sampler as training) samples K
trajectories with θ, takes a plain policy-gradient step of size α (``maml.inner_lr``), samples K more with
φ₁, then steps with α·``eval.step_decay`` (the paper's α/2) for every later step. The mean return after
each number of steps is reported with a 95% CI over goals (:func:`rlmaml.stats.mean_ci95` over the per-goal
mean returns). The pretrained, random-initialisation and oracle baselines go through this same function.

``eval.batch=steps`` samples each batch as the paper's test scripts did (rllab's ``batch_size`` is K·H steps:
K auto-reset envs run until the episodes they complete hold K·H steps; :mod:`rlmaml.rl.sampling.rollout`). Where
episodes end early, as in 2D navigation, such a batch holds more, and shorter, episodes than K, and its mean
return is higher than the mean over K episodes (the default, ``eval.batch=trajectories``).

Test goals are ``eval.goals`` draws from the task distribution with ``numpy.random.default_rng(eval.seed)``
(so every method of a comparison sees the same goals), or the list in ``eval.goals_file``. Sampling seeds
derive from (``eval.seed``, goal index, :data:`EVAL_STREAM`), never from a training seed stream.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlmaml.config import Config, ConfigError
from rlmaml.rl.build import check_rl_config, make_sampler, make_task_distribution, worker_spec
from rlmaml.rl.sampling.worker import TaskRequest
from rlmaml.runs import RunDir
from rlmaml.stats import mean_ci95

EVAL_STREAM = 0x5EED_E7A1
"""Seed stream of evaluation sampling (training uses stream 0), so evaluation seeds never repeat training's."""

NAV_FIGURE_GOALS = 4
NAV_FIGURE_TRAJECTORIES = 3


# ---- protocol ---------------------------------------------------------------------------------------------

def eval_step_sizes(cfg: Config) -> tuple[float, ...]:
    """α for the first test-time step, α·step_decay for every later one (``eval.rl_steps`` in all)."""
    alpha = cfg.maml.inner_lr
    return tuple(alpha if s == 0 else alpha * cfg.eval.step_decay for s in range(cfg.eval.rl_steps))


def eval_trajectories(cfg: Config) -> int:
    """K per step: ``eval.trajectories``, or ``rl.trajectories`` when that is 0."""
    return cfg.eval.trajectories or cfg.rl.trajectories


def _jsonable_task(task: dict[str, Any]) -> dict[str, Any]:
    return {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray | np.generic) else v) for k, v in task.items()}


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _entry_lines(text: str) -> list[int | None]:
    """1-based line of each top-level list entry of a YAML/JSON document (None where unknown)."""
    import yaml

    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return []
    if not isinstance(node, yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in node.value]


def load_goals_file(path: str | Path, distribution: Any) -> list[dict[str, Any]]:
    """Tasks from a YAML or JSON list of task dicts, each checked with ``distribution.validate``.

    Read within the config limits (size, YAML aliases, nesting: :func:`rlmaml.config.load_yaml`). Raises
    :class:`ConfigError` with one line naming the file, the entry and its line.
    """
    from rlmaml.config import load_yaml
    from rlmaml.config_bounds import MAX_FILE_BYTES

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
        text = raw.decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"eval.goals_file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"eval.goals_file {path} is not UTF-8 text (offset {exc.start})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"eval.goals_file {path} is larger than {MAX_FILE_BYTES:,} bytes")
    try:
        data = json.loads(text) if path.suffix == ".json" else load_yaml(text, f"eval.goals_file {path}")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: line {exc.lineno}: not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a list of task dicts") from None
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{path}: expected a non-empty list of task dicts (e.g. '- goal: [0.1, -0.3]'), "
                          f"got {type(data).__name__ if data is not None else 'an empty file'}")
    lines = _entry_lines(text)
    tasks = []
    for i, task in enumerate(data):
        where = f"{path}: line {lines[i]}, entry {i + 1}" if i < len(lines) and lines[i] else f"{path}: entry {i + 1}"
        try:
            tasks.append(distribution.validate(task))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: {_one_line(str(exc))}") from None
    return tasks


def eval_tasks(cfg: Config, distribution: Any) -> list[dict[str, Any]]:
    """The test goals: ``eval.goals_file`` if given, else ``eval.goals`` seeded draws (``eval.seed``)."""
    if cfg.eval.goals_file:
        return load_goals_file(cfg.eval.goals_file, distribution)
    return distribution.sample(cfg.eval.goals, np.random.default_rng(cfg.eval.seed))


def initial_params(cfg: Config, observation_space: Any, action_space: Any) -> dict[str, torch.Tensor]:
    """The untrained θ of a run (the learner's seeded initialisation): the random-initialisation baseline."""
    from rlmaml.rl.policies import make_policy
    from rlmaml.seeding import seeded_init

    r = cfg.rl
    policy = seeded_init(cfg.run.seed, lambda: make_policy(observation_space, action_space, tuple(r.hidden),
                                                           r.init_std, r.min_std))
    return {k: v.detach().clone() for k, v in policy.named_parameters()}


def batch_return(batch: dict[str, np.ndarray]) -> float:
    """Mean undiscounted return of the K trajectories of one episode batch."""
    return float((np.asarray(batch["rewards"], dtype=np.float64) * batch["mask"]).sum(0).mean())


def nav_figure_steps(n_steps: int) -> list[int]:
    """Which adaptation steps the navigation figure shows: before, after 1 and after the last (≤ 3) step."""
    return sorted({0, min(1, n_steps), min(3, n_steps)})


def _is_navigation(cfg: Config) -> bool:
    return "Navigation2D" in cfg.rl.env


def _nav_paths(batch: dict[str, np.ndarray], n: int) -> list[np.ndarray]:
    """Positions (x, y) of the first ``n`` trajectories, from the start to their last valid step."""
    obs, mask = batch["observations"], batch["mask"]
    paths = []
    for k in range(min(n, obs.shape[1])):
        length = int(mask[:, k].sum())
        paths.append(np.asarray(obs[:length, k, :2], dtype=float))  # obs[t] is the position before step t
    return paths


def summarise_returns(method: str, per_goal: np.ndarray) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Rows ``{method, steps, mean, ci95, goals}`` and a printable summary from per-goal mean returns
    ``[goals, steps + 1]``: mean and 95% CI over goals (:func:`rlmaml.stats.mean_ci95`) after each step."""
    per_goal = np.asarray(per_goal, dtype=np.float64)
    rows, summary = [], {}
    for s in range(per_goal.shape[1]):
        mean, ci = mean_ci95(per_goal[:, s])
        rows.append({"method": method, "steps": s, "mean": mean, "ci95": ci, "goals": int(per_goal.shape[0])})
        summary[f"{method}: return after {s} step{'s' if s != 1 else ''}"] = f"{mean:.2f} ± {ci:.2f}"
    return rows, summary


# ---- the evaluation ----------------------------------------------------------------------------------------

def evaluate_rl_run(cfg: Config, run: RunDir, state: dict[str, Any], video: bool = False,
                    pictures: list[Any] | None = None) -> dict[str, Any]:
    """Evaluate a run's θ (``state["learner"]["params"]``) on test goals after 0..``eval.rl_steps`` steps.

    Returns ``{"rows": [{method, steps, mean, ci95, goals}], "summary", "method", "kind", "env", "protocol",
    "per_goal": {"tasks", "returns"}, "hardware", "figures", "videos"}``; writes ``nav_trajectories.png``
    for 2D navigation and, with ``video``, MP4s before/after adaptation under ``videos/``. Given a ``pictures``
    list, it writes none of them: it appends ``(key, name, draw)`` for the caller to run once the numbers are
    saved (``draw()`` writes the file(s) and returns their names, listed under ``result[key]``).
    """
    from rlmaml.report import hardware_info, method_kind

    start = time.perf_counter()
    check_rl_config(cfg)
    distribution = make_task_distribution(cfg)
    tasks = eval_tasks(cfg, distribution)
    if video:
        from rlmaml.rl.evaluation.video import prepare_video

        prepare_video(cfg)  # fails fast, before any sampling, when no backend can render
    k = eval_trajectories(cfg)
    lrs = eval_step_sizes(cfg)
    name = cfg.run.name or run.path.name
    kind = method_kind({"experiment": cfg.experiment, "rl": {"env": cfg.rl.env},
                        "maml": {"inner_steps": cfg.maml.inner_steps}}, name)
    init = getattr(cfg.eval, "init", "checkpoint")
    spec = dataclasses.replace(worker_spec(cfg), trajectories=k, seed=cfg.eval.seed)
    sampler = make_sampler(cfg, spec)
    returns = np.full((len(tasks), len(lrs) + 1), np.nan)
    nav_steps = nav_figure_steps(len(lrs))
    nav: dict[int, dict[str, Any]] = {}
    first_episodes: list[dict[str, np.ndarray]] = []
    env_steps = 0
    try:
        params = initial_params(cfg, *sampler.spaces()) if init == "random" else state["learner"]["params"]
        weights = {key: v.detach().cpu().numpy().copy() for key, v in params.items()}
        budget = cfg.eval.batch == "steps"
        requests = [TaskRequest(0, i, task, lrs, k, EVAL_STREAM, step_budget=budget) for i, task in enumerate(tasks)]
        what = f"{k} x {cfg.rl.horizon} steps of episodes (rllab's batches)" if budget else f"{k} trajectories"
        print(f"rlmaml: evaluating {name} on {len(tasks)} goals x {len(lrs) + 1} batches of {what}",
              file=sys.stderr, flush=True)
        for result in sampler.sample(weights, requests):
            i = int(result["task_index"])
            if not result.get("valid", True):
                raise RuntimeError(f"evaluation of goal {i} failed: {result.get('reason')}")
            episodes = result["episodes"]
            returns[i] = [batch_return(b) for b in episodes]
            env_steps += int(result.get("env_steps", 0))
            if _is_navigation(cfg) and i < NAV_FIGURE_GOALS:
                nav[i] = {"goal": np.asarray(tasks[i]["goal"], dtype=float)[:2],
                          "paths": {s: _nav_paths(episodes[s], NAV_FIGURE_TRAJECTORIES) for s in nav_steps}}
            if video and i == 0:
                first_episodes = episodes
    finally:
        sampler.close()

    per_goal = returns  # [goals, steps + 1]
    rows, summary = summarise_returns(name, per_goal)
    figures: list[str] = []
    videos: list[str] = []
    deferred = [] if pictures is None else pictures
    if nav:
        def draw_nav() -> list[str]:
            from rlmaml.plots import plot_nav_trajectories

            return [plot_nav_trajectories([nav[i] for i in sorted(nav)], run.path / "nav_trajectories.png",
                                          title=f"{name}: trajectories before and after adaptation").name]

        deferred.append(("figures", "nav_trajectories.png", draw_nav))
    if video:
        def draw_videos() -> list[str]:
            from rlmaml.rl.evaluation.video import record_adaptation_videos

            return [str(p.relative_to(run.path)) for p in
                    record_adaptation_videos(cfg, weights, first_episodes, lrs, tasks[0], run.path / "videos")]

        deferred.append(("videos", "videos/", draw_videos))
    if pictures is None:  # a direct caller: draw now, as before
        for key, _, draw in deferred:
            (figures if key == "figures" else videos).extend(draw())
    return {
        "rows": rows,
        "summary": summary,
        "method": name,
        "kind": kind,
        "env": cfg.rl.env,
        "protocol": {"goals": len(tasks), "goals_file": cfg.eval.goals_file, "seed": cfg.eval.seed,
                     "trajectories": k, "batch": cfg.eval.batch,
                     "rl_steps": len(lrs), "step_sizes": list(lrs), "horizon": cfg.rl.horizon,
                     "backend": cfg.rl.backend, "init": init},
        "per_goal": {"tasks": [_jsonable_task(t) for t in tasks],
                     "returns": [[float(x) if math.isfinite(x) else None for x in row] for row in per_goal]},
        "env_steps": env_steps,
        "eval_time_s": time.perf_counter() - start,
        "hardware": hardware_info(),
        "figures": figures,
        "videos": videos,
    }
