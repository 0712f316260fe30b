"""rllab's step-budget batches (rlmaml.rl.sampling.rollout): the selection against a literal simulation of rllab's
VectorizedSampler loop, the rollout on a real nav2d env, and ``rlmaml eval eval.batch=steps``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rlmaml.cli import main
from rlmaml.config import ConfigError, build_config
from rlmaml.rl.sampling.rollout import budget_selection, rollout, rollout_step_budget
from rlmaml.rl.sampling.worker import RolloutWorker, TaskRequest, WorkerSpec


def rllab_loop(episode_lengths: list[list[int]], budget: int) -> set[tuple[int, int]]:
    """rllab's VectorizedSampler.obtain_samples, step by step: K slots in lockstep, each starting its next
    episode when one ends; stop once the completed episodes hold ``budget`` steps. Returns the kept
    (episode number, slot) pairs."""
    k = len(episode_lengths)
    current = [0] * k  # episode number each slot is in
    elapsed = [0] * k  # steps into it
    kept: set[tuple[int, int]] = set()
    n_samples = 0
    while n_samples < budget:
        for j in range(k):
            elapsed[j] += 1
            if elapsed[j] == episode_lengths[j][current[j]]:
                kept.add((current[j], j))
                n_samples += elapsed[j]
                current[j] += 1
                elapsed[j] = 0
    return kept


@pytest.mark.parametrize("seed", range(40))
def test_budget_selection_keeps_the_episodes_rllabs_sampler_keeps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, horizon = int(rng.integers(1, 7)), int(rng.integers(1, 12))
    short = rng.random() < 0.5  # often-short episodes need several waves
    lengths = [[int(rng.integers(1, (max(horizon // 3, 1) if short else horizon) + 1)) for _ in range(60)] for _ in range(k)]
    expected = rllab_loop(lengths, k * horizon)
    for waves in range(1, 61):
        keep = budget_selection(np.array(lengths).T[:waves], k * horizon)
        if keep is not None:
            break
    assert keep is not None
    assert {(int(w), int(j)) for w, j in zip(*np.nonzero(keep), strict=True)} == expected


def test_budget_selection_waits_for_a_wave_that_could_still_end_first() -> None:
    # Slot 1's 3-step episode fills the budget of 4 at step 3; slot 0 ends an episode at steps 1, 2, 3, ...,
    # so the answer needs slot 0's episodes up to step 3: three waves.
    assert budget_selection(np.array([[1, 3]]), 4) is None
    assert budget_selection(np.array([[1, 3], [1, 3]]), 4) is None
    keep = budget_selection(np.array([[1, 3], [1, 3], [1, 3]]), 4)
    assert keep is not None and keep.tolist() == [[True, True], [True, False], [True, False]]
    assert rllab_loop([[1, 1, 1, 1], [3, 3, 3, 3]], 4) == {(0, 0), (1, 0), (2, 0), (0, 1)}
    with pytest.raises(ValueError, match="positive episode lengths"):
        budget_selection(np.array([[0, 3]]), 4)


def _nav_worker(horizon: int, k: int) -> RolloutWorker:
    return RolloutWorker(WorkerSpec(env_id="rlmaml/Navigation2D-v0", horizon=horizon, trajectories=k, hidden=(16,),
                                    init_std=1.0, min_std=1e-6, gamma=0.99, gae_lambda=1.0, inner_loss="reinforce",
                                    seed=0))


def _params(worker: RolloutWorker) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in worker.policy.named_parameters()}


def test_a_step_budget_batch_holds_at_least_k_times_h_steps_of_whole_episodes() -> None:
    worker = _nav_worker(horizon=40, k=8)
    env = worker._env(8)
    env.set_task({"goal": [0.005, 0.0]})  # the start is inside the goal box
    # a policy that stands still (mean 0, tiny std): every episode ends at its first step
    params = {name: torch.zeros_like(p) for name, p in _params(worker).items()}
    params["log_std"] = torch.full_like(params["log_std"], -7.0)
    (batch,) = rollout_step_budget([env], worker.policy, params, 40, [123], [torch.Generator().manual_seed(0)])
    mask = batch["mask"]
    assert mask.shape == (40, 8 * 40)  # 40 waves of 8 one-step episodes fill the 320-step budget
    assert mask[0].sum() == 320 and mask[1:].sum() == 0
    assert all(batch[key].shape[:2] == mask.shape for key in ("observations", "actions", "rewards"))
    np.testing.assert_allclose(batch["rewards"][0], -0.005, atol=1e-3)


def test_where_no_episode_ends_early_the_step_budget_batch_is_the_k_episode_batch() -> None:
    worker = _nav_worker(horizon=3, k=5)
    env = worker._env(5)
    env.set_task({"goal": [0.5, 0.5]})  # 0.71 away: out of reach in 3 steps of at most 0.14
    params = _params(worker)
    (budget,) = rollout_step_budget([env], worker.policy, params, 3, [7], [torch.Generator().manual_seed(1)])
    fixed = rollout(env, worker.policy, params, 3, 7, torch.Generator().manual_seed(1))
    for key in fixed:
        np.testing.assert_array_equal(budget[key], fixed[key])


def test_sample_task_with_step_budget_is_seeded_and_adapts_on_every_kept_episode() -> None:
    worker = _nav_worker(horizon=30, k=6)
    weights = {name: p.numpy().copy() for name, p in _params(worker).items()}
    request = TaskRequest(0, 2, {"goal": np.array([0.1, -0.1])}, (0.1, 0.05), step_budget=True)
    a, b = worker.sample_task(weights, request), worker.sample_task(weights, request)
    assert len(a["episodes"]) == 3
    for x, y in zip(a["episodes"], b["episodes"], strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
        assert x["mask"].sum() >= 6 * 30
    assert a["env_steps"] == sum(int(e["mask"].sum()) for e in a["episodes"])
    # sampled together with another task (their waves batched): the same data, up to float rounding
    other = TaskRequest(0, 3, {"goal": np.array([0.3, 0.2])}, (0.1, 0.05), step_budget=True)
    together = worker.sample_tasks(weights, [other, request])
    for x, y in zip(together[1]["episodes"], a["episodes"], strict=True):
        assert x["mask"].shape == y["mask"].shape
        for key in x:
            np.testing.assert_allclose(x[key], y[key], rtol=0, atol=1e-5)


def test_eval_batch_must_be_trajectories_or_steps() -> None:
    with pytest.raises(ConfigError, match="eval.batch"):
        build_config("nav2d", ["eval.batch=episodes"])


@pytest.mark.slow  # trains a tiny run (~15 s)
def test_rlmaml_eval_with_rllab_batches_records_the_protocol(tmp_path) -> None:
    run = tmp_path / "nav"
    tiny = ["optim.meta_batch=2", "rl.trajectories=6", "rl.horizon=20", "run.iterations=1"]
    assert main(["train", "nav2d", f"run.dir={run}", *tiny, "--backend", "local"]) == 0
    assert main(["eval", str(run), "eval.goals=3", "eval.rl_steps=1", "eval.batch=steps"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["protocol"]["batch"] == "steps"
    assert [r["steps"] for r in result["rows"]] == [0, 1]
    assert result["env_steps"] >= 3 * 2 * 6 * 20


def test_reports_say_which_batches_an_evaluation_used() -> None:
    from rlmaml.report import _protocol

    rows = [{"goals": 40}]
    steps = {"rows": rows, "protocol": {"goals": 40, "trajectories": 40, "horizon": 100, "batch": "steps"}}
    episodes = {"rows": rows, "protocol": {"goals": 40, "trajectories": 40, "horizon": 100, "batch": "trajectories"}}
    assert _protocol(steps) == "40 goals, K=40, H=100, rllab batches (K·H steps of episodes)"
    assert _protocol(episodes) == "40 goals, K=40, H=100"


@pytest.mark.slow  # trains a tiny run (~10 s)
def test_training_on_rllab_batches_runs_end_to_end(tmp_path) -> None:
    run = tmp_path / "nav"
    tiny = ["optim.meta_batch=3", "rl.trajectories=5", "rl.horizon=15", "run.iterations=2", "rl.batch=steps"]
    assert main(["train", "nav2d", f"run.dir={run}", *tiny, "--backend", "local"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(r["accepted"] and np.isfinite(r["surrogate_after"]) for r in rows)
    assert all(r["env_steps"] >= 3 * 2 * 5 * 15 for r in rows)  # every batch holds at least K x H steps


def test_the_learner_steps_a_meta_batch_whose_tasks_have_different_episode_counts() -> None:
    from rlmaml.rl.learning.learner import MetaLearner

    cfg = build_config("nav2d", ["rl.hidden=[16]", "rl.horizon=10", "rl.trajectories=4", "optim.meta_batch=2",
                                 "rl.batch=steps", "rl.init_std=0.001"])
    worker = RolloutWorker(WorkerSpec.from_config(cfg))
    learner = MetaLearner(cfg, *worker.spaces(), torch.device("cpu"))
    with torch.no_grad():  # a policy that stands still: its episodes end at once where the start is in the goal box
        for name, p in learner.params.items():
            if name != "log_std":
                p.zero_()
    near = TaskRequest(0, 0, {"goal": np.array([0.005, 0.0])}, (0.1,), step_budget=True)
    far = TaskRequest(0, 1, {"goal": np.array([0.5, 0.5])}, (0.1,), step_budget=True)
    results = worker.sample_tasks(learner.weights(), [near, far])
    assert [r["episodes"][0]["mask"].shape[1] for r in results] == [4 * 10, 4]  # one-step episodes vs whole ones
    for r in results:
        learner.add_task(r)
    metrics = learner.step()
    assert np.isfinite(metrics["surrogate_before"]) and np.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
