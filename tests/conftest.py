"""Shared fixtures. ``ray_session``: ONE local Ray instance for every ``@pytest.mark.ray`` test of the session.

It is started with 4 logical CPUs (two rollout actors, a spare for a restarting actor, one more for a
learner-sized actor) whatever the machine has, without the dashboard (not needed by the tests; the trainer's
embedded default keeps it, bound to 127.0.0.1), and with token authentication as Ray 2.60 sets it for a new
local instance. The tests directory is put on the workers' ``PYTHONPATH`` so that they can import
``ray_test_envs``. Tests needing a cluster of their own (test_ray_cluster.py) run it in a subprocess.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS_DIR = str(Path(__file__).resolve().parent)
SHARED_OMNIGLOT = Path(__file__).parents[1].parent / "shared/data/omniglot"
RAY_TEST_CPUS = 4


def with_tests_on_pythonpath(env: dict[str, str]) -> dict[str, str]:
    """A copy of ``env`` whose PYTHONPATH starts with the tests directory."""
    out = dict(env)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS_DIR, env.get("PYTHONPATH", "")) if p)
    return out


@pytest.fixture(scope="session")
def ray_session():
    """The session's Ray (started on first use, shut down at the end of the session)."""
    ray = pytest.importorskip("ray")
    from rlmaml.rl.ray_runtime import init_ray

    if ray.is_initialized():  # someone else's instance: use it, leave it up
        yield ray
        return
    saved = os.environ.get("PYTHONPATH")
    # Ray's raylet and its workers inherit this process's environment at start.
    os.environ["PYTHONPATH"] = with_tests_on_pythonpath(dict(os.environ))["PYTHONPATH"]
    try:
        init_ray("", num_cpus=RAY_TEST_CPUS, include_dashboard=False)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    yield ray
    ray.shutdown()


@pytest.fixture
def one_thread():
    """One torch intra-op thread: on a small shared CPU, OpenMP threads waiting on each other cost more than
    they save for the many tiny ops of training (measured ~10x on 2 cores under load; results are identical)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def omniglot_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(root, cache)``: the real Omniglot zips beside the project (``../shared/data/omniglot``; the test is
    skipped where they are absent), decoded once per test session into the session cache folder ``cache``."""
    from rlmaml.supervised.omniglot_data import load_omniglot

    if not (SHARED_OMNIGLOT / "images_background.zip").is_file():
        pytest.skip(f"the shared Omniglot data is not at {SHARED_OMNIGLOT}")
    cache = tmp_path_factory.mktemp("omniglot-cache")
    load_omniglot(SHARED_OMNIGLOT, cache)
    return SHARED_OMNIGLOT, cache
