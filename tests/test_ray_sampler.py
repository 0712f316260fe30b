"""RaySampler against LocalSampler, the Ray backend of train_rl, Ray start-up defaults, learner placement."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rlmaml.config import ConfigError, build_config
from rlmaml.rl.build import make_task_distribution, task_requests
from rlmaml.rl.learning.learner import MetaLearner
from rlmaml.rl.learning.placement import Placement, learner_placement
from rlmaml.rl.ray_runtime import default_num_workers
from rlmaml.rl.sampling.samplers import LocalSampler
from rlmaml.rl.sampling.worker import WorkerSpec

SMALL = ["rl.trajectories=4", "rl.horizon=20", "optim.meta_batch=4", "rl.hidden=[16,16]"]


def small_cfg(*extra: str):
    return build_config("nav2d", [*SMALL, *extra])


def assert_same_results(a: list[dict], b: list[dict], atol: float = 0.0) -> None:
    """Same task indices, each exactly once, with identical episodes (bitwise; within ``atol`` if given)."""
    ia, ib = [r["task_index"] for r in a], [r["task_index"] for r in b]
    assert sorted(ia) == sorted(ib) and len(set(ia)) == len(ia)
    by_a, by_b = {r["task_index"]: r for r in a}, {r["task_index"]: r for r in b}
    for i in by_b:
        assert by_a[i]["task"].keys() == by_b[i]["task"].keys()
        for key in by_b[i]["task"]:
            np.testing.assert_array_equal(by_a[i]["task"][key], by_b[i]["task"][key])
        assert by_a[i]["env_steps"] == by_b[i]["env_steps"]
        assert len(by_a[i]["episodes"]) == len(by_b[i]["episodes"])
        for x, y in zip(by_a[i]["episodes"], by_b[i]["episodes"], strict=True):
            assert x.keys() == y.keys()
            for key in x:
                if atol:
                    np.testing.assert_allclose(x[key], y[key], rtol=0.0, atol=atol, err_msg=f"task {i} {key}")
                else:
                    np.testing.assert_array_equal(x[key], y[key], err_msg=f"task {i} {key}")


def one_task_per_call(local: LocalSampler, weights: dict, requests: list) -> list[dict]:
    """What each Ray actor computes: one ``sample_task`` per request (the local sampler batches them, which
    gives the same data up to float rounding in the batched policy forward)."""
    return [local.worker.sample_task(weights, r) for r in requests]


# ---- no Ray needed ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("device", "driver_cuda", "resources", "autoscaler", "expected"), [
    ("auto", False, {"CPU": 8.0}, None, Placement("driver", "cpu", "")),
    ("auto", False, None, None, Placement("driver", "cpu", "")),
    ("auto", True, {"CPU": 8.0}, None, Placement("driver", "cuda", "")),
    ("auto", True, {"CPU": 8.0, "GPU": 1.0}, None, Placement("driver", "cuda", "")),
    ("auto", False, {"CPU": 8.0, "GPU": 1.0}, None, Placement("actor", "cuda", "")),
    ("auto", False, {"CPU": 8.0, "GPU": 4.0}, {}, Placement("actor", "cuda", "")),
    ("auto", False, {"CPU": 0.0}, {"CPU": 64.0, "GPU": 1.0}, Placement("actor", "cuda", "")),  # autoscaled GPU
    ("auto", False, {"CPU": 8.0, "GPU": 0.5}, None, Placement("driver", "cpu", "")),  # no whole GPU
    ("auto", False, None, {"GPU": 1.0}, Placement("driver", "cpu", "")),  # no Ray: no actor
    ("cpu", True, {"CPU": 8.0, "GPU": 1.0}, None, Placement("driver", "cpu", "")),
    ("cuda", True, None, None, Placement("driver", "cuda", "")),
    ("cuda", False, {"GPU": 1.0}, None, Placement("actor", "cuda", "")),
])
def test_learner_placement_decision(device, driver_cuda, resources, autoscaler, expected):
    got = learner_placement(device, driver_cuda, resources, autoscaler)
    assert (got.where, got.device) == (expected.where, expected.device)
    assert got.reason


def test_learner_placement_cuda_without_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="run.device=cuda"):
        learner_placement("cuda", False, {"CPU": 8.0}, {})
    with pytest.raises(ConfigError, match="run.device=cuda"):
        learner_placement("cuda", False, None)


def test_make_learner_without_ray_is_a_driver_metalearner(capsys):
    from rlmaml.rl.learning.placement import make_learner

    cfg = small_cfg("rl.backend=local")
    local = LocalSampler(WorkerSpec.from_config(cfg))
    learner = make_learner(cfg, *local.spaces())
    assert isinstance(learner, MetaLearner)
    if not torch.cuda.is_available():
        assert learner.device.type == "cpu"
        assert "learner on the CPU" in capsys.readouterr().err


@pytest.mark.parametrize(("cpus", "driver_cpus", "expected"), [(4, 4, 3), (2, 2, 1), (1, 1, 1), (0, 0, 1),
                                                               (48, 0, 48), (49, 1, 48)])
def test_default_num_workers(cpus, driver_cpus, expected):
    assert default_num_workers(cpus, driver_cpus) == expected


# ---- on the shared Ray instance --------------------------------------------------------------------------
@pytest.mark.ray
def test_init_ray_is_idempotent_and_keeps_token_auth(ray_session):
    import os

    from rlmaml.rl.ray_runtime import init_ray, started_here

    init_ray("")  # already up: a no-op, not an error
    init_ray("auto")
    assert ray_session.is_initialized()
    assert started_here()
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "disabled":
        raylet = pytest.importorskip("ray._raylet")
        if hasattr(raylet, "get_authentication_mode"):
            assert raylet.get_authentication_mode() == raylet.AuthenticationMode.TOKEN


@pytest.mark.ray
def test_ray_sampler_matches_local_sampler(ray_session):
    from rlmaml.rl.sampling.ray_sampler import RaySampler

    cfg = small_cfg()
    spec = WorkerSpec.from_config(cfg)
    local = LocalSampler(spec)
    sampler = RaySampler(spec, num_workers=2, task_timeout_s=60, max_task_retries=2, tasks_per_call=1)
    try:
        assert len(sampler.worker_info()) == 2
        obs_space, act_space = sampler.spaces()
        assert (obs_space, act_space) == local.spaces()
        weights = MetaLearner(cfg, obs_space, act_space, torch.device("cpu")).weights()
        requests = task_requests(cfg, make_task_distribution(cfg), 3)
        got = list(sampler.sample(weights, requests))
        assert_same_results(got, one_task_per_call(local, weights, requests))
        assert_same_results(got, list(local.sample(weights, requests)), atol=1e-5)
        assert sampler.fault_counts() == {"actor_deaths": 0, "timeouts": 0, "retries": 0}
        # a second iteration on the same actors (new θ, new tasks) still matches
        weights2 = {k: v + 0.01 for k, v in weights.items()}
        requests2 = task_requests(cfg, make_task_distribution(cfg), 4)
        assert_same_results(list(sampler.sample(weights2, requests2)), one_task_per_call(local, weights2, requests2))
        assert sampler.stats()["results"] == 8
        # a caller that stops early leaves calls in flight: the next iteration ignores them
        expected = one_task_per_call(local, weights, requests)
        abandoned = sampler.sample(weights, requests)
        next(abandoned)
        abandoned.close()
        assert_same_results(list(sampler.sample(weights, requests)), expected)
        # two calls queued per actor (pipelining) gives the same data
        sampler.pipeline_depth = 2
        assert_same_results(list(sampler.sample(weights, requests)), expected)
        # several tasks per call, sampled together on the actor: the same data up to float rounding
        sampler.pipeline_depth = 1
        for per_call, calls in [(3, 2), (4, 1), (0, 4)]:  # 0: ceil(left / (2 * actors)) tasks, here 1 each
            sampler.tasks_per_call = per_call
            before = sampler.stats()["calls"]
            assert_same_results(list(sampler.sample(weights, requests)), expected, atol=1e-5)
            assert sampler.stats()["calls"] - before == calls
        assert sampler.fault_counts() == {"actor_deaths": 0, "timeouts": 0, "retries": 0}
    finally:
        sampler.close()
    assert ray_session.is_initialized()  # close() leaves a Ray it did not start


@pytest.mark.ray
def test_a_worker_that_cannot_start_names_the_cause(ray_session):
    import dataclasses

    from rlmaml.rl.sampling.ray_sampler import RaySampler

    spec = dataclasses.replace(WorkerSpec.from_config(small_cfg()), env_module="no_such_module_for_rlmaml")
    with pytest.raises(RuntimeError, match="failed to start: ValueError: rl.env_module 'no_such_module_for_rlmaml'"):
        RaySampler(spec, num_workers=1, task_timeout_s=30, max_task_retries=1)


@pytest.mark.ray
def test_remote_learner_proxy_matches_driver_learner(ray_session):
    """The GPU-actor proxy, run on the CPU (num_gpus=0): same metrics and θ as a MetaLearner in the driver."""
    from rlmaml.rl.learning.placement import RemoteLearner

    cfg = small_cfg()
    local = LocalSampler(WorkerSpec.from_config(cfg))
    driver = MetaLearner(cfg, *local.spaces(), torch.device("cpu"))
    remote = RemoteLearner(cfg, *local.spaces(), device="cpu", num_gpus=0)
    try:
        assert remote.version == 0
        for name, w in driver.weights().items():
            np.testing.assert_array_equal(w, remote.weights()[name])
        results = list(local.sample(driver.weights(), task_requests(cfg, make_task_distribution(cfg), 0)))
        for r in results:
            driver.add_task(r)
            remote.add_task(r)
        m_driver, m_remote = driver.step(), remote.step()
        assert m_driver["accepted"] == m_remote["accepted"]
        assert remote.version == driver.version
        for key in ("surrogate_before", "surrogate_after", "kl", "return_pre", "return_post"):
            assert m_remote[key] == pytest.approx(m_driver[key], rel=1e-4, abs=1e-6), key
        for name, w in driver.weights().items():
            np.testing.assert_allclose(remote.weights()[name], w, rtol=1e-4, atol=1e-6)
        state = remote.state_dict()
        assert state["version"] == driver.version
        remote.load_state_dict({**state, "version": 7})
        assert remote.version == 7
    finally:
        remote.close()


@pytest.mark.ray
def test_train_rl_on_ray_backend_logs_fault_counts(ray_session, tmp_path):
    from rlmaml.rl.trainer import train_rl
    from rlmaml.runs import RunDir

    cfg = small_cfg("run.iterations=2", "run.checkpoint_every=1", "rl.backend=ray", "rl.num_workers=2",
                    f"run.dir={tmp_path / 'run'}")
    run = RunDir.create(cfg)
    learner = train_rl(cfg, run)
    assert isinstance(learner, MetaLearner)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [r["iteration"] for r in lines] == [0, 1]
    for r in lines:
        assert {"faults_actor_deaths", "faults_timeouts", "faults_retries"} <= r.keys()
        assert r["faults_actor_deaths"] == r["faults_timeouts"] == r["faults_retries"] == 0
        assert r["env_steps"] > 0
    assert ray_session.is_initialized()
