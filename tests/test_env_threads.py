"""rl.env_threads reaches the MuJoCo stepper of every rollout worker, and the data do not depend on it."""

from __future__ import annotations

import numpy as np
import pytest

from rlmaml.config import build_config
from rlmaml.rl.build import task_requests, worker_spec
from rlmaml.rl.sampling.worker import RolloutWorker

pytest.importorskip("mujoco")

SMALL = ["optim.meta_batch=2", "rl.trajectories=3", "rl.horizon=20", "rl.hidden=[16]", "run.device=cpu"]


@pytest.mark.mujoco
def test_env_threads_sets_the_steppers_threads_and_leaves_the_data_unchanged() -> None:
    results, weights = {}, None
    for threads in (1, 2):
        cfg = build_config("halfcheetah-vel", [*SMALL, f"rl.env_threads={threads}"])
        worker = RolloutWorker(worker_spec(cfg))
        requests = task_requests(cfg, __import__("envs").task_distribution(cfg.rl.env), 0)
        if weights is None:  # one θ for both workers
            weights = {k: v.detach().numpy().copy() for k, v in worker.policy.named_parameters()}
        results[threads] = worker.sample_tasks(weights, requests)
        assert worker._env(cfg.rl.trajectories).num_threads == threads
    for one, two in zip(results[1], results[2], strict=True):
        for a, b in zip(one["episodes"], two["episodes"], strict=True):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])


def test_env_threads_must_be_positive() -> None:
    from rlmaml.config import ConfigError

    with pytest.raises(ConfigError, match="rl.env_threads"):
        build_config("nav2d", ["rl.env_threads=0"])
