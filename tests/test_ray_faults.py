"""RaySampler under faults: a killed worker, a hung worker, an env that raises, a task that keeps failing.

The env is tests/ray_test_envs.py's FaultyNav (Navigation2D, same data, with injected delays, hangs and
errors), which Ray workers import as the spec's ``env_module``. One sampler (two actors) serves the whole
module, to pay the actors' start-up once: each test writes its fault plan to a JSON file the env re-reads at
every reset, sets the sampler's timeout and retry bound, and checks the change in the fault counters.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import torch
from test_ray_sampler import assert_same_results

from rlmaml.config import build_config
from rlmaml.rl.learning.learner import MetaLearner
from rlmaml.rl.sampling.rollout import task_seeds
from rlmaml.rl.sampling.samplers import LocalSampler
from rlmaml.rl.sampling.worker import TaskRequest, WorkerSpec

pytestmark = pytest.mark.ray

SEED = 3
ITERATION = 0


def spec(**env_kwargs) -> WorkerSpec:
    import ray_test_envs

    return WorkerSpec(env_id=ray_test_envs.FAULTY_ID, horizon=20, trajectories=4, hidden=(16, 16), init_std=1.0,
                      min_std=1e-6, gamma=0.99, gae_lambda=1.0, inner_loss="reinforce", seed=SEED,
                      env_module="ray_test_envs", env_kwargs=env_kwargs)


def requests(n: int) -> list[TaskRequest]:
    rng = np.random.default_rng(0)
    return [TaskRequest(ITERATION, i, {"goal": rng.uniform(-0.5, 0.5, 2)}, (0.1,)) for i in range(n)]


def env_seed(task_index: int) -> int:
    return task_seeds(SEED, ITERATION, task_index)[0]


@pytest.fixture(scope="module")
def reference():
    """θ and the unfaulted results (in-process, no faults, one task per call as on the actors) of 6 tasks."""
    local = LocalSampler(spec())
    cfg = build_config("nav2d", ["rl.hidden=[16,16]", f"run.seed={SEED}"])
    weights = MetaLearner(cfg, *local.spaces(), torch.device("cpu")).weights()
    return weights, [local.worker.sample_task(weights, r) for r in requests(6)]


class Faulty:
    """The module's sampler and its fault plan."""

    def __init__(self, sampler, plan_path):
        self.sampler, self.plan_path = sampler, plan_path

    def plan(self, *, timeout_s: float, retries: int, **knobs) -> dict[str, int]:
        """Set the fault plan, timeout and retry bound; wait until both actors are up; return the counters."""
        self.plan_path.write_text(json.dumps(knobs))
        self.sampler.task_timeout_s, self.sampler.max_task_retries = timeout_s, retries
        self.wait_ready()
        return self.sampler.fault_counts()

    def wait_ready(self) -> None:
        assert self.sampler.wait_ready(90.0), self.sampler.worker_info()

    def delta(self, before: dict[str, int]) -> dict[str, int]:
        return {k: v - before[k] for k, v in self.sampler.fault_counts().items()}


@pytest.fixture(scope="module")
def faulty(ray_session, tmp_path_factory):
    from rlmaml.rl.sampling.ray_sampler import RaySampler

    plan = tmp_path_factory.mktemp("plan") / "plan.json"
    plan.write_text("{}")
    sampler = RaySampler(spec(plan=str(plan)), num_workers=2, task_timeout_s=60, max_task_retries=2,
                         tasks_per_call=1)
    yield Faulty(sampler, plan)
    sampler.close()


@pytest.fixture(params=[1, 2], ids=["one-task-per-call", "two-tasks-per-call"])
def per_call(request, faulty):
    """Run the test with one task per actor call, then with calls of two tasks sampled together."""
    faulty.sampler.tasks_per_call = request.param
    yield request.param
    faulty.sampler.tasks_per_call = 1


def rounding(per_call: int) -> float:
    """Tasks sampled together share a batched policy forward, which may round differently in the last bit."""
    return 0.0 if per_call == 1 else 1e-5


def test_worker_killed_mid_iteration(faulty, reference, per_call):
    weights, expected = reference
    # 0.02 s per batched step, 40 steps a task: ~0.8 s per task; 6 tasks in calls of 1 or 2 on 2 workers.
    before = faulty.plan(timeout_s=60, retries=2, delay=0.02)
    sampler = faulty.sampler
    pids = [w["pid"] for w in sampler.worker_info()]
    assert len(set(pids)) == 2
    got, killed = [], None
    for result in sampler.sample(weights, requests(6)):
        got.append(result)
        if killed is None:
            # The worker that just finished was handed its next call before this result was yielded: it is at
            # the start of it now. (Killing the other worker could race with its first result.)
            killed = result["pid"]
            os.kill(killed, signal.SIGKILL)
    assert_same_results(got, expected, atol=rounding(per_call))
    faults = faulty.delta(before)
    assert faults["actor_deaths"] == 1 and faults["timeouts"] == 0
    assert faults["retries"] >= 1
    assert killed not in {r["pid"] for r in got[per_call:]}  # after its first call, nothing from the dead process
    faulty.wait_ready()  # Ray restarted the actor and the sampler uses it again
    assert killed not in {w["pid"] for w in sampler.worker_info()}


def test_hung_worker_times_out_and_the_task_is_resubmitted(faulty, reference, tmp_path, per_call):
    weights, expected = reference
    marker = tmp_path / "hung-once"
    before = faulty.plan(timeout_s=2.0, retries=2, hang_seed=env_seed(1), hang_s=120.0, marker=str(marker))
    start = time.monotonic()
    got = list(faulty.sampler.sample(weights, requests(6)))
    elapsed = time.monotonic() - start
    assert marker.exists()  # the first attempt of task 1 did hang
    assert_same_results(got, expected, atol=rounding(per_call))
    # the call holding task 1 timed out (after 2 s per task in it): each of its tasks was resubmitted
    assert faulty.delta(before) == {"actor_deaths": 0, "timeouts": 1, "retries": per_call}
    assert elapsed < 60  # not the 120 s hang


def test_env_exception_fails_fast_naming_task_and_seed(faulty, reference, per_call):
    from rlmaml.rl.sampling.ray_sampler import TaskFailedError

    weights, _ = reference
    before = faulty.plan(timeout_s=60, retries=3, raise_seed=env_seed(2))
    with pytest.raises(TaskFailedError) as info:
        list(faulty.sampler.sample(weights, requests(4)))
    message = str(info.value)
    assert "task 2" in message and f"run seed {SEED}" in message and f"env seed {env_seed(2)}" in message
    assert "injected env failure" in message and "ValueError" in message
    assert faulty.delta(before)["retries"] == 0  # deterministic: not retried
    # the sampler is still usable afterwards (calls left over from the failed iteration are ignored)
    ok = list(faulty.sampler.sample(weights, [r for r in requests(4) if r.task_index != 2]))
    assert sorted(r["task_index"] for r in ok) == [0, 1, 3]


def test_task_that_always_times_out_gives_up_after_max_task_retries(faulty, reference, per_call):
    from rlmaml.rl.sampling.ray_sampler import TaskFailedError

    weights, _ = reference
    before = faulty.plan(timeout_s=1.5, retries=1, hang_seed=env_seed(0), hang_s=120.0, marker="always")
    # task 0 hangs, task 1 does not: task 0 is the one charged and named, also when the two share a call
    with pytest.raises(TaskFailedError, match=r"task 0 .*after 1 resubmissions.*task_timeout_s"):
        list(faulty.sampler.sample(weights, requests(2)))
    # one call of task 0 and its one resubmission; with two per call, first the call of both
    assert faulty.delta(before)["timeouts"] == (2 if per_call == 1 else 3)
