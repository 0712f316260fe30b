"""The ``mujoco.batch`` stepper of MujocoBatchedEnv against the Python-loop one: same trajectories, bit for bit."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

pytest.importorskip("mujoco")

import envs  # noqa: E402
from envs.mujoco_batch import batch_module  # noqa: E402

pytestmark = [
    pytest.mark.mujoco,
    pytest.mark.skipif(batch_module() is None, reason="needs mujoco.batch (MuJoCo >= 3.17)"),
]

TASKS = {
    "HalfCheetahVel": {"velocity": 1.3},
    "HalfCheetahDir": {"direction": -1.0},
    "AntVel": {"velocity": 2.0},
    "AntDir": {"direction": -1.0},
}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """MuJoCo appends runtime warnings to MUJOCO_LOG.TXT in the working directory."""
    monkeypatch.chdir(tmp_path)


def make(f: str, stepper: str, k: int = 4, threads: int = 1, horizon: int = 15):
    return envs.make_batched(
        f"rlmaml/{f}-v0", k, task=TASKS[f], stepper=stepper, num_threads=threads, max_episode_steps=horizon
    )


def rollout(env, seed: int, steps: int, perturb=None, period: int = 25) -> list:
    """Everything ``env`` returns over ``steps`` steps with random, partly out-of-range actions and a random
    ``active`` mask (NaN actions where inactive), resetting every ``period`` steps; ``perturb(env.envs)`` after
    each reset."""
    rng = np.random.default_rng(seed)
    k, n = env.num_envs, env.single_action_space.shape[0]
    out = []
    for t in range(steps):
        if t % period == 0:
            out.append(env.reset(seed + t))
            if perturb is not None:
                perturb(env.envs)
        actions = rng.uniform(-1.5, 1.5, size=(k, n))
        active = rng.random(k) < 0.75
        actions[~active] = np.nan
        out.append(env.step(actions, active))
    return out


def assert_same(a: list, b: list) -> None:
    """Exact equality of two rollouts: observations, rewards, terminated, truncated and every info entry."""
    assert len(a) == len(b)
    for t, (x, y) in enumerate(zip(a, b, strict=True)):
        if isinstance(x, np.ndarray):  # a reset
            np.testing.assert_array_equal(x, y, err_msg=f"reset before step {t}")
            continue
        for name, u, v in zip(("obs", "reward", "terminated", "truncated"), x[:4], y[:4], strict=True):
            np.testing.assert_array_equal(u, v, err_msg=f"{name} at {t}")
        assert x[4].keys() == y[4].keys()
        for key in x[4]:
            np.testing.assert_array_equal(x[4][key], y[4][key], err_msg=f"info[{key!r}] at {t}")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("f", list(TASKS))
def test_batch_stepper_matches_loop(f, threads):
    loop, batch = make(f, "loop"), make(f, "batch", threads=threads)
    assert (loop.stepper, batch.stepper) == ("loop", "batch")
    assert batch._sim._batch.nthread == threads  # num_threads is the Batch's thread count
    a, b = rollout(loop, 5, 50), rollout(batch, 5, 50)
    assert_same(a, b)
    assert any(s[3].any() for s in a if isinstance(s, tuple))  # the horizon was reached (and reset)
    if f.startswith("Ant"):
        assert any(np.any(s[4]["reward_contact"] != 0) for s in a if isinstance(s, tuple))
    loop.close()
    batch.close()


@pytest.mark.parametrize("f", ["HalfCheetahDir", "AntVel"])
def test_batch_stepper_instability_matches_loop(f, in_tmp):
    """As test_envs_mujoco's instability tests: qvel = 1e12 after a reset makes MuJoCo flag (and reset) the
    simulation; the env ends that trajectory as unstable, identically with both steppers.  Env 1 blows up in
    the first episode, env 2 in the second (so a warning counted in one episode must not leak into the next)."""

    def blow_up_each_episode(targets):
        def perturb(batched_envs):
            batched_envs[targets.pop(0)].data.qvel[:] = 1e12

        return perturb

    loop, batch = make(f, "loop", k=3), make(f, "batch", k=3)
    a = rollout(loop, 3, 20, blow_up_each_episode([1, 2]), period=10)
    b = rollout(batch, 3, 20, blow_up_each_episode([1, 2]), period=10)
    assert_same(a, b)
    steps = [s for s in b if isinstance(s, tuple)]
    unstable = np.stack([s[4]["unstable"] for s in steps])
    assert unstable[:10, 1].any() and not unstable[:10, [0, 2]].any()
    assert unstable[10:, 2].any() and not unstable[10:, [0, 1]].any()
    assert np.stack([s[2] for s in steps])[unstable].all()  # terminated


def test_auto_is_batch_and_falls_back_to_loop_without_mujoco_batch(monkeypatch):
    assert make("HalfCheetahVel", "auto", k=1).stepper == "batch"
    assert envs.make_batched("rlmaml/AntDir-v0", 1).stepper == "batch"  # the default is "auto"
    with pytest.raises(ValueError, match="stepper must be one of"):
        make("HalfCheetahVel", "threads", k=1)
    monkeypatch.setitem(sys.modules, "mujoco.batch", None)  # `import mujoco.batch` now fails, as before 3.17
    assert batch_module() is None
    assert make("HalfCheetahVel", "auto", k=1).stepper == "loop"
    with pytest.raises(ValueError, match="mujoco.batch"):
        make("HalfCheetahVel", "batch", k=1)


@pytest.mark.parametrize("stepper", ["loop", "batch"])
def test_pickle_keeps_the_stepper(stepper):
    env = make("AntVel", stepper, k=2, threads=2)
    clone = pickle.loads(pickle.dumps(env))
    assert (clone.stepper, clone.num_threads, clone.max_episode_steps) == (stepper, 2, 15)
    assert clone.get_task() == TASKS["AntVel"]
    assert_same(rollout(env, 1, 5), rollout(clone, 1, 5))
    env.close()
    clone.close()
