"""Meta-RL training end to end on the local backend: nav2d learns, a user's own env plugs in."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces

from rlmaml.config import build_config
from rlmaml.rl.trainer import train_rl
from rlmaml.runs import RunDir


class PointLineEnv(gymnasium.Env):
    """A user's own task family, defined outside rlmaml: walk along a line to a goal."""

    def __init__(self, task: dict | None = None) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._task = dict(task or {"goal": 0.5})
        self._x = 0.0

    def set_task(self, task: dict) -> None:
        self._task = dict(task)

    def get_task(self) -> dict:
        return dict(self._task)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        self._x = 0.0
        return np.array([self._x], dtype=np.float32), {}

    def step(self, action):
        self._x += 0.1 * float(np.clip(action, -1.0, 1.0)[0])
        reward = -abs(self._x - self._task["goal"])
        return np.array([self._x], dtype=np.float32), reward, False, False, {}


class LineGoals:
    """The user's task distribution: goals uniform in [-1, 1]."""

    def sample(self, n: int, rng: np.random.Generator) -> list[dict]:
        return [{"goal": float(g)} for g in rng.uniform(-1.0, 1.0, size=n)]

    def validate(self, task: dict) -> dict:
        if "goal" not in task or not np.isfinite(task["goal"]):
            raise ValueError(f"task {task!r}: field 'goal' must be a finite number")
        return task


gymnasium.register(id="userland/PointLine-v0", entry_point=PointLineEnv, max_episode_steps=20)


def mean_post_returns(run: RunDir) -> list[float]:
    return [row["return_post"] for row in run.metrics()]


@pytest.mark.slow
def test_nav2d_training_raises_post_adaptation_return(tmp_path) -> None:
    cfg = build_config("nav2d", ["rl.backend=local", "optim.meta_batch=8", "rl.trajectories=10",
                                 "run.iterations=8", f"run.dir={tmp_path / 'run'}", "run.checkpoint_every=4"])
    run = RunDir.create(cfg)
    train_rl(cfg, run)
    returns = mean_post_returns(run)
    assert len(returns) == 8
    assert np.mean(returns[-2:]) > np.mean(returns[:2]) + 5.0
    assert run.load_checkpoint("best")["best_return"] == pytest.approx(max(returns))


def test_user_env_defined_outside_rlmaml_trains(tmp_path) -> None:
    cfg = build_config("nav2d", [
        "rl.backend=local", "rl.env=userland/PointLine-v0", "rl.task_distribution=test_rl_training:LineGoals",
        "rl.horizon=20", "rl.trajectories=4", "optim.meta_batch=3", "run.iterations=2", "rl.hidden=[16]",
        f"run.dir={tmp_path / 'run'}"])
    run = RunDir.create(cfg)
    learner = train_rl(cfg, run)
    rows = run.metrics()
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(np.isfinite(r["return_post"]) for r in rows)
    assert rows[0]["env_steps"] == 3 * 2 * 4 * 20
    assert all(torch.isfinite(p).all() for p in learner.params.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_learner_meta_step_on_cuda_matches_cpu(tmp_path) -> None:
    from rlmaml.rl.build import make_task_distribution, task_requests
    from rlmaml.rl.learning.learner import MetaLearner
    from rlmaml.rl.sampling.worker import RolloutWorker, WorkerSpec

    cfg = build_config("nav2d", ["optim.meta_batch=4", "rl.trajectories=8", "rl.horizon=30"])
    worker = RolloutWorker(WorkerSpec.from_config(cfg))
    learners = {d: MetaLearner(cfg, *worker.spaces(), torch.device(d)) for d in ("cpu", "cuda")}
    requests = task_requests(cfg, make_task_distribution(cfg), 0)
    results = [worker.sample_task(learners["cpu"].weights(), r) for r in requests]
    metrics = {}
    for device, learner in learners.items():
        for result in results:
            learner.add_task(result)
        metrics[device] = learner.step()
    assert metrics["cpu"]["accepted"] and metrics["cuda"]["accepted"]
    for k, v in learners["cpu"].params.items():
        torch.testing.assert_close(learners["cuda"].params[k].cpu(), v, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("normalize", [True, False])
def test_worker_rescales_policy_actions_onto_the_env_bounds(normalize: bool) -> None:
    """nav2d's Box is [-0.1, 0.1]: with normalize_actions the env moves by 0.1 x the policy's action (clipped)."""
    from rlmaml.rl.build import make_task_distribution, task_requests
    from rlmaml.rl.sampling.worker import RolloutWorker, WorkerSpec

    cfg = build_config("nav2d", ["optim.meta_batch=1", "rl.trajectories=3", "rl.horizon=5",
                                 f"rl.normalize_actions={normalize}"])
    worker = RolloutWorker(WorkerSpec.from_config(cfg))
    params = {k: v.detach().numpy() for k, v in worker.policy.named_parameters()}
    request = task_requests(cfg, make_task_distribution(cfg), 0)[0]
    batch = worker.sample_task(params, request)["episodes"][0]
    moved = batch["observations"][1] - batch["observations"][0]
    expected = np.clip(batch["actions"][0] * (0.1 if normalize else 1.0), -0.1, 0.1)
    np.testing.assert_allclose(moved, expected, atol=1e-6)
    assert np.abs(batch["actions"][0]).max() > 0.1  # std 1 noise: some actions lie outside the env's own bounds


@pytest.mark.parametrize("user_env", [False, True], ids=["nav2d", "user-env"])
def test_sample_tasks_gives_each_task_the_data_sample_task_gives_it(user_env: bool) -> None:
    """The local sampler's batched call (one forward per step for every task, φ under vmap) returns, task by
    task, what one call per task returns: seeds and noise are per task, early-finishing tasks stop stepping."""
    from rlmaml.rl.build import make_task_distribution, task_requests
    from rlmaml.rl.sampling.worker import RolloutWorker, WorkerSpec

    overrides = ["optim.meta_batch=4", "rl.trajectories=3", "rl.horizon=30", "maml.inner_steps=2"]
    if user_env:  # the user's own env (PointLineEnv above), through the generic serial batched env
        overrides += ["rl.env=userland/PointLine-v0", "rl.task_distribution=test_rl_training:LineGoals",
                      "rl.horizon=20"]
    cfg = build_config("nav2d", overrides)
    worker = RolloutWorker(WorkerSpec.from_config(cfg))
    torch.manual_seed(0)
    weights = {k: v.detach().numpy() + 0.1 * np.random.default_rng(0).normal(size=v.shape).astype(np.float32)
               for k, v in worker.policy.named_parameters()}
    requests = task_requests(cfg, make_task_distribution(cfg), 3)
    together = worker.sample_tasks(weights, requests)
    one_by_one = [worker.sample_task(weights, r) for r in requests]
    assert [r["task_index"] for r in together] == [r.task_index for r in requests]
    for a, b in zip(together, one_by_one, strict=True):
        assert a["valid"] and a["env_steps"] == b["env_steps"] and len(a["episodes"]) == 3
        for batch_a, batch_b in zip(a["episodes"], b["episodes"], strict=True):
            for key in batch_b:
                np.testing.assert_allclose(batch_a[key], batch_b[key], atol=1e-5, err_msg=key)
    # the tasks really differ (else the test could not tell them apart)
    assert not np.allclose(together[0]["episodes"][1]["observations"], together[1]["episodes"][1]["observations"])
