"""Non-finite numbers injected at each stage of a meta-RL iteration never reach θ.

Each test trains two iterations (``--backend local``, tiny sizes, a checkpoint after each) and injects a NaN or
inf into iteration 1 only: an observation, a reward, the first observation, a policy output or the inner
gradient on the worker; the adapted φ, the surrogate, the outer gradient, the Hessian-vector product, the CG
result or the line search on the learner. Each must be caught where it happens: the metrics line of
iteration 1 says ``accepted: false`` with the reason (task index and iteration where one task is at fault),
stderr has one line for it, and θ after iteration 1 equals θ after iteration 0.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces

import rlmaml.rl.learning.trpo as trpo
import rlmaml.rl.sampling.worker as worker_module
from rlmaml.cli import main
from rlmaml.config import build_config
from rlmaml.rl.learning.learner import MetaLearner
from rlmaml.rl.learning.maml_objective import MamlRlObjective
from rlmaml.rl.policies import GaussianMLPPolicy
from rlmaml.rl.trainer import train_rl
from rlmaml.runs import RunDir

BAD_ITERATION, BAD_TASK = 1, 1


# ---- a user env that returns a NaN/inf where a test asks -------------------------------------------------------------


class PoisonLineEnv(gymnasium.Env):
    """Walk along a line to a goal; a task with a ``poison`` entry returns NaN/inf at the step it names."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._task: dict = {"goal": 0.5}
        self._x, self._t = 0.0, 0

    def set_task(self, task: dict) -> None:
        self._task = dict(task)

    def get_task(self) -> dict:
        return dict(self._task)

    def _poison(self, what: str) -> bool:
        p = self._task.get("poison")
        return bool(p) and p["what"] == what and p["step"] == self._t

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._x, self._t = 0.0, 0
        return np.array([math.nan if self._poison("reset") else self._x], dtype=np.float32), {}

    def step(self, action):
        self._t += 1
        self._x += 0.1 * float(np.clip(action, -1.0, 1.0)[0])
        obs = np.array([math.nan if self._poison("observation") else self._x], dtype=np.float32)
        reward = math.inf if self._poison("reward") else -abs(self._x - self._task["goal"])
        return obs, reward, False, False, {}


class PoisonGoals:
    """Goals in [-1, 1]; ``plan`` maps (iteration, task index) to the poison that task carries."""

    plan: dict[tuple[int, int], dict[str, Any]] = {}

    def __init__(self) -> None:
        self.calls = 0  # the trainer samples once per iteration, from iteration 0

    def sample(self, n: int, rng: np.random.Generator) -> list[dict]:
        iteration, self.calls = self.calls, self.calls + 1
        tasks = [{"goal": float(g)} for g in rng.uniform(-1.0, 1.0, size=n)]
        for (it, index), poison in self.plan.items():
            if it == iteration:
                tasks[index]["poison"] = dict(poison)
        return tasks


gymnasium.register(id="reliability/PoisonLine-v0", entry_point=PoisonLineEnv, max_episode_steps=10)

TINY = ["rl.backend=local", "optim.meta_batch=3", "rl.trajectories=4", "rl.horizon=10", "rl.hidden=[16]",
        "run.iterations=2", "run.checkpoint_every=1", "run.log_every=1000", "run.device=cpu"]
POISON_ENV = ["rl.env=reliability/PoisonLine-v0", "rl.task_distribution=test_reliability_nonfinite:PoisonGoals"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (see conftest.one_thread)."""


@pytest.fixture
def state(monkeypatch) -> dict[str, Any]:
    """Tracks which iteration the learner steps and which request the worker samples (for targeted injection)."""
    current: dict[str, Any] = {"iteration": None, "request": None}
    step, sample_task = MetaLearner.step, worker_module.RolloutWorker.sample_task

    def tracked_step(self):
        current["iteration"] = self.iteration
        return step(self)

    def tracked_sample_task(self, weights, request):
        current["request"] = request
        return sample_task(self, weights, request)

    monkeypatch.setattr(MetaLearner, "step", tracked_step)
    monkeypatch.setattr(worker_module.RolloutWorker, "sample_task", tracked_sample_task)
    # One task per worker call (as the Ray actors sample), so an injection can target one task's forward;
    # the env-output tests poison by goal and so also cover the local sampler's batched call and fallback.
    monkeypatch.setattr(worker_module.RolloutWorker, "sample_tasks",
                        lambda self, weights, requests: [self.sample_task(weights, r) for r in requests])
    return current


def _learner_bad(state: dict) -> bool:
    return state["iteration"] == BAD_ITERATION


def _worker_bad(state: dict) -> bool:
    r = state["request"]
    return r is not None and (r.iteration, r.task_index) == (BAD_ITERATION, BAD_TASK)


def _train(tmp_path: Path, extra: list[str] = ()) -> tuple[RunDir, MetaLearner]:
    cfg = build_config("nav2d", [*TINY, *extra, f"run.dir={tmp_path / 'run'}"])
    run = RunDir.create(cfg)
    return run, train_rl(cfg, run)


def _theta(run: RunDir, iteration: int) -> dict[str, torch.Tensor]:
    from rlmaml.checkpoints import load_verified

    return load_verified(run.checkpoint_dir / f"ckpt-{iteration:08d}.json")["learner"]["params"]


def _assert_skipped_and_theta_kept(run: RunDir, learner: MetaLearner, capsys, *expected: str) -> dict:
    rows = run.metrics()
    assert [r["iteration"] for r in rows] == [0, 1]
    assert rows[0]["accepted"] is True
    bad = rows[BAD_ITERATION]
    assert bad["accepted"] is False
    for text in expected:
        assert text in bad["reason"], bad["reason"]
    before, after = _theta(run, 0), _theta(run, 1)
    for k in before:
        assert torch.equal(before[k], after[k]), k
        assert torch.equal(learner.params[k].detach().cpu(), before[k]), k
    lines = [line for line in capsys.readouterr().err.splitlines() if "update skipped" in line]
    assert len(lines) == 1
    assert lines[0].startswith(f"rlmaml: iteration {BAD_ITERATION}: update skipped (")
    for text in expected:
        assert text in lines[0]
    return bad


# ---- on the worker: caught there, the result comes back marked invalid ------------------------------------------------


@pytest.mark.parametrize(("what", "step", "named"), [
    ("observation", 4, "non-finite observation or reward"),
    ("reward", 6, "non-finite observation or reward"),
    ("reset", 0, "reset returned a non-finite observation"),
], ids=["observation-nan", "reward-inf", "first-observation-nan"])
def test_a_non_finite_env_output_skips_the_update_naming_task_and_iteration(what, step, named, tmp_path, capsys,
                                                                             monkeypatch) -> None:
    monkeypatch.setattr(PoisonGoals, "plan", {(BAD_ITERATION, BAD_TASK): {"what": what, "step": step}})
    run, learner = _train(tmp_path, POISON_ENV)
    bad = _assert_skipped_and_theta_kept(run, learner, capsys, f"task {BAD_TASK} (iteration {BAD_ITERATION}",
                                         named)
    assert bad["tasks_invalid"] == 1 and "seed 0" in bad["reason"]


@pytest.mark.parametrize("poisoned", ["mean", "std"])
def test_a_non_finite_policy_output_skips_the_update_naming_task_and_iteration(poisoned, tmp_path, capsys,
                                                                               monkeypatch, state) -> None:
    forward = GaussianMLPPolicy.forward
    shots = {"left": 1}

    def poisoned_forward(self, obs, stats_only=False):
        # One acting call (a [K, obs] batch) of the chosen task's worker; the learner's calls are untouched.
        if stats_only and _worker_bad(state) and shots["left"]:
            shots["left"] -= 1
            mean, std = forward(self, obs, stats_only=True)
            return (mean * math.nan, std) if poisoned == "mean" else (mean, std * math.inf)
        return forward(self, obs, stats_only=stats_only)

    monkeypatch.setattr(GaussianMLPPolicy, "forward", poisoned_forward)
    run, learner = _train(tmp_path)
    assert shots["left"] == 0
    _assert_skipped_and_theta_kept(run, learner, capsys, f"task {BAD_TASK} (iteration {BAD_ITERATION}",
                                   "policy output at step 0 is not finite")


def test_a_non_finite_inner_gradient_on_the_worker_skips_the_update_naming_task(tmp_path, capsys, monkeypatch,
                                                                                state) -> None:
    adapt = worker_module.acting_params  # the worker's inner step (rlmaml.rl.adaptation)

    def poisoned_adapt(*args, **kwargs):
        phi = adapt(*args, **kwargs)
        return {k: v * math.nan for k, v in phi.items()} if _worker_bad(state) else phi

    monkeypatch.setattr(worker_module, "acting_params", poisoned_adapt)
    run, learner = _train(tmp_path)
    _assert_skipped_and_theta_kept(run, learner, capsys, f"task {BAD_TASK} (iteration {BAD_ITERATION}",
                                   "inner gradient step 1 gave non-finite adapted parameters")


# ---- on the learner: the outer step is refused, θ kept ---------------------------------------------------------------


def _poison_trpo_terms(monkeypatch, state, change) -> None:
    terms = MamlRlObjective.trpo_terms

    def poisoned(self, *args, **kwargs):
        out = terms(self, *args, **kwargs)
        return change(*out) if _learner_bad(state) else out

    monkeypatch.setattr(MamlRlObjective, "trpo_terms", poisoned)


def test_a_non_finite_adapted_phi_on_the_learner_skips_the_update_naming_task(tmp_path, capsys, monkeypatch,
                                                                              state) -> None:
    def nan_phi_of_one_task(phis, old_logp, gradient, hvp):
        phis = {k: v.clone() for k, v in phis.items()}
        next(iter(phis.values()))[BAD_TASK].fill_(math.nan)
        return phis, old_logp, gradient, hvp

    _poison_trpo_terms(monkeypatch, state, nan_phi_of_one_task)
    run, learner = _train(tmp_path)
    _assert_skipped_and_theta_kept(run, learner, capsys,
                                   f"non-finite inner gradient (adapted φ) in task {BAD_TASK} (iteration {BAD_ITERATION})")


def test_a_non_finite_outer_gradient_skips_the_update(tmp_path, capsys, monkeypatch, state) -> None:
    _poison_trpo_terms(monkeypatch, state, lambda phis, lp, g, hvp: (phis, lp, g * math.nan, hvp))
    run, learner = _train(tmp_path)
    bad = _assert_skipped_and_theta_kept(run, learner, capsys, "non-finite gradient")
    assert bad["grad_norm"] == "nan"


def test_a_non_finite_hessian_vector_product_skips_the_update(tmp_path, capsys, monkeypatch, state) -> None:
    _poison_trpo_terms(monkeypatch, state, lambda phis, lp, g, hvp: (phis, lp, g, lambda v: hvp(v) * math.inf))
    run, learner = _train(tmp_path)
    _assert_skipped_and_theta_kept(run, learner, capsys, "non-finite CG")


def test_a_non_finite_conjugate_gradient_result_skips_the_update(tmp_path, capsys, monkeypatch, state) -> None:
    cg = trpo.conjugate_gradient

    def poisoned(*a, **k):
        x, r = cg(*a, **k)
        return x * (math.nan if _learner_bad(state) else 1.0), r

    monkeypatch.setattr(trpo, "conjugate_gradient", poisoned)
    run, learner = _train(tmp_path)
    _assert_skipped_and_theta_kept(run, learner, capsys, "non-finite CG")


def test_a_non_finite_surrogate_skips_the_update(tmp_path, capsys, monkeypatch, state) -> None:
    surrogate = MamlRlObjective.surrogate_at
    monkeypatch.setattr(MamlRlObjective, "surrogate_at",
                        lambda self, *a: surrogate(self, *a) * (math.nan if _learner_bad(state) else 1.0))
    run, learner = _train(tmp_path)
    _assert_skipped_and_theta_kept(run, learner, capsys, "non-finite surrogate")


def test_a_line_search_that_never_meets_the_trust_region_skips_the_update(tmp_path, capsys, monkeypatch,
                                                                          state) -> None:
    kl = MamlRlObjective.kl_at
    monkeypatch.setattr(MamlRlObjective, "kl_at",
                        lambda self, *a: kl(self, *a) + (math.inf if _learner_bad(state) else 0.0))
    run, learner = _train(tmp_path)
    bad = _assert_skipped_and_theta_kept(run, learner, capsys, "line search failed")
    assert bad["ls_steps"] == learner.cfg.rl.ls_steps


def test_a_non_finite_ppo_loss_mid_epochs_restores_theta_and_adam_state(tmp_path, capsys, monkeypatch,
                                                                        state) -> None:
    ppo_at = MamlRlObjective.ppo_at
    calls = {"bad": 0}

    def poisoned(self, *args):
        loss = ppo_at(self, *args)
        if _learner_bad(state):
            calls["bad"] += 1
            if calls["bad"] == 2:  # the first epoch of iteration 1 steps Adam; the second is NaN
                return loss * math.nan
        return loss

    monkeypatch.setattr(MamlRlObjective, "ppo_at", poisoned)
    run, learner = _train(tmp_path, ["rl.outer=ppo", "rl.ppo_epochs=3"])
    _assert_skipped_and_theta_kept(run, learner, capsys, "non-finite loss or gradient")
    from rlmaml.checkpoints import load_verified

    adam = [load_verified(run.checkpoint_dir / f"ckpt-{i:08d}.json")["learner"]["optimizer"]["state"] for i in (0, 1)]
    assert adam[0].keys() == adam[1].keys() and adam[0]
    for i in adam[0]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(adam[0][i][name], adam[1][i][name])


# ---- too many skipped updates in a row stop the run -------------------------------------------------------------------


def test_consecutive_skipped_updates_stop_the_run_exit_1_keeping_the_last_good_checkpoint(tmp_path, capsys,
                                                                                          monkeypatch) -> None:
    poison = {"what": "reward", "step": 3}
    monkeypatch.setattr(PoisonGoals, "plan", {(it, 0): poison for it in range(1, 6)})
    run_dir = tmp_path / "run"
    code = main(["train", "nav2d", *TINY, *POISON_ENV, "run.iterations=6", "run.max_consecutive_failures=2",
                 f"run.dir={run_dir}"])
    assert code == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("rlmaml: stopped:")] == [
        line for line in err.splitlines() if "2 consecutive updates skipped at iteration 2" in line]
    assert len([line for line in err.splitlines() if "update skipped" in line]) == 2
    run = RunDir.open(run_dir)
    assert [r["accepted"] for r in run.metrics()] == [True, False, False]
    assert run.load_checkpoint()["iteration"] == 1  # nothing written for the iteration that stopped the run
    theta0, theta1 = _theta(run, 0), _theta(run, 1)
    assert all(torch.equal(theta0[k], theta1[k]) for k in theta0)
    assert run.load_checkpoint()["failures"] == 1


def test_the_count_of_consecutive_skipped_updates_survives_a_resume(tmp_path, capsys, monkeypatch) -> None:
    poison = {"what": "reward", "step": 3}
    monkeypatch.setattr(PoisonGoals, "plan", {(it, 0): poison for it in range(1, 6)})
    run_dir = tmp_path / "run"
    assert main(["train", "nav2d", *TINY, *POISON_ENV, "run.max_consecutive_failures=2", f"run.dir={run_dir}"]) == 0
    assert RunDir.open(run_dir).load_checkpoint()["failures"] == 1  # iteration 1 was skipped
    # A new process's distribution counts from 0: poison every call, so the first resumed iteration is skipped.
    monkeypatch.setattr(PoisonGoals, "plan", {(it, 0): poison for it in range(6)})
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "run.iterations=5"]) == 1
    assert "2 consecutive updates skipped at iteration 2" in capsys.readouterr().err


def test_the_learner_refuses_a_non_finite_episode_batch_that_got_past_a_worker(tmp_path) -> None:
    from rlmaml.rl.build import make_task_distribution, task_requests
    from rlmaml.rl.sampling.worker import RolloutWorker, WorkerSpec

    cfg = build_config("nav2d", TINY)
    worker = RolloutWorker(WorkerSpec.from_config(cfg))
    learner = MetaLearner(cfg, *worker.spaces(), torch.device("cpu"))
    theta = {k: v.detach().clone() for k, v in learner.params.items()}
    for request in task_requests(cfg, make_task_distribution(cfg), 0):
        result = worker.sample_task(learner.weights(), request)
        if request.task_index == BAD_TASK:  # e.g. a user's sampler that does not check: inf in a reward
            result["episodes"][1]["rewards"][3, 0] = np.inf
        learner.add_task(result)
    metrics = learner.step()
    assert metrics["accepted"] is False and metrics["tasks_invalid"] == 1
    assert f"non-finite observation, reward or advantage in task {BAD_TASK} (iteration 0)" in metrics["reason"]
    assert all(torch.equal(theta[k], learner.params[k].detach()) for k in theta)
    assert learner.version == 0 and not learner.tasks and not learner.invalid  # ready for the next iteration
