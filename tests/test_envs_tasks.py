"""Task distributions, the task-distribution registry and env registration (no MuJoCo needed)."""

from __future__ import annotations

import importlib
import math
import pickle

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from envs.tasks import DirectionDistribution, GoalPositionDistribution, GoalVelocityDistribution

ALL_FAMILIES = ["Navigation2D", "HalfCheetahVel", "HalfCheetahDir", "AntVel", "AntDir", "AntGoal"]


class MyDist:
    """A user task distribution (registered as an object or a class)."""

    def sample(self, n, rng):
        return [{"k": float(x)} for x in rng.uniform(size=n)]

    def validate(self, task):
        if "k" not in task:
            raise ValueError(f"MyDist: task {task!r} is missing field 'k'")
        return dict(task)


# ----- distributions ---------------------------------------------------------------------------
def test_goal_position_sample_and_validate():
    d = GoalPositionDistribution(-0.5, 0.5, 2)
    tasks = d.sample(50, np.random.default_rng(0))
    assert len(tasks) == 50
    goals = np.stack([t["goal"] for t in tasks])
    assert goals.shape == (50, 2) and goals.min() >= -0.5 and goals.max() <= 0.5
    again = d.sample(50, np.random.default_rng(0))
    assert all(np.array_equal(a["goal"], b["goal"]) for a, b in zip(tasks, again, strict=True))
    out = d.validate({"goal": [0.1, -0.2], "extra": "kept"})
    assert isinstance(out["goal"], np.ndarray) and out["goal"].dtype == np.float64
    assert out["extra"] == "kept"
    assert d.sample(0, np.random.default_rng(0)) == []


def test_goal_velocity_sample_and_validate():
    d = GoalVelocityDistribution(0.0, 2.0)
    vs = [t["velocity"] for t in d.sample(100, np.random.default_rng(1))]
    assert all(isinstance(v, float) and 0.0 <= v <= 2.0 for v in vs)
    assert d.validate({"velocity": np.float32(1.5)}) == {"velocity": 1.5}
    assert d.validate({"velocity": np.array([0.5])}) == {"velocity": 0.5}
    assert d.validate({"velocity": 2}) == {"velocity": 2.0}


def test_direction_sample_and_validate():
    d = DirectionDistribution()
    dirs = [t["direction"] for t in d.sample(200, np.random.default_rng(2))]
    assert set(dirs) == {1.0, -1.0}
    assert 60 < sum(x > 0 for x in dirs) < 140
    assert d.validate({"direction": -1}) == {"direction": -1.0}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 20), family=st.sampled_from(ALL_FAMILIES))
def test_sampled_tasks_always_validate(seed, n, family):
    dist = envs.task_distribution(f"rlmaml/{family}-v0")
    tasks = dist.sample(n, np.random.default_rng(seed))
    assert len(tasks) == n
    for task in tasks:
        out = dist.validate(task)
        assert out.keys() == task.keys()
        assert pickle.loads(pickle.dumps(task)).keys() == task.keys()


@pytest.mark.parametrize(
    "dist, task, field",
    [
        (GoalPositionDistribution(-0.5, 0.5, 2), {}, "goal"),
        (GoalPositionDistribution(-0.5, 0.5, 2), {"goal": [0.1, 0.2, 0.3]}, "goal"),
        (GoalPositionDistribution(-0.5, 0.5, 2), {"goal": [[0.1, 0.2]]}, "goal"),
        (GoalPositionDistribution(-0.5, 0.5, 2), {"goal": [np.nan, 0.0]}, "goal"),
        (GoalPositionDistribution(-0.5, 0.5, 2), {"goal": [np.inf, 0.0]}, "goal"),
        (GoalPositionDistribution(-0.5, 0.5, 2), {"goal": [0.6, 0.0]}, "goal"),
        (GoalPositionDistribution(-0.5, 0.5, 2), {"goal": "ab"}, "goal"),
        (GoalVelocityDistribution(0.0, 2.0), {"goal": 1.0}, "velocity"),
        (GoalVelocityDistribution(0.0, 2.0), {"velocity": [1.0, 2.0]}, "velocity"),
        (GoalVelocityDistribution(0.0, 2.0), {"velocity": float("nan")}, "velocity"),
        (GoalVelocityDistribution(0.0, 2.0), {"velocity": float("inf")}, "velocity"),
        (GoalVelocityDistribution(0.0, 2.0), {"velocity": 2.5}, "velocity"),
        (GoalVelocityDistribution(0.0, 2.0), {"velocity": -0.1}, "velocity"),
        (GoalVelocityDistribution(0.0, 2.0), {"velocity": True}, "velocity"),
        (GoalVelocityDistribution(0.0, 2.0), {"velocity": "1.0"}, "velocity"),
        (DirectionDistribution(), {}, "direction"),
        (DirectionDistribution(), {"direction": 0.5}, "direction"),
        (DirectionDistribution(), {"direction": np.nan}, "direction"),
        (DirectionDistribution(), {"direction": [1.0, 1.0]}, "direction"),
    ],
)
def test_validate_rejects_bad_tasks(dist, task, field):
    with pytest.raises(ValueError) as info:
        dist.validate(task)
    msg = str(info.value)
    assert repr(field) in msg, msg  # names the bad field
    assert "task" in msg


@pytest.mark.parametrize("bad", [None, [1.0], 1.0, "velocity"])
def test_validate_rejects_non_dicts(bad):
    for d in (GoalPositionDistribution(-1, 1, 2), GoalVelocityDistribution(0, 1), DirectionDistribution()):
        with pytest.raises(ValueError, match="dict"):
            d.validate(bad)


def test_validate_does_not_mutate_input():
    task = {"goal": [0.1, 0.2]}
    out = GoalPositionDistribution(-0.5, 0.5, 2).validate(task)
    assert task == {"goal": [0.1, 0.2]} and out is not task


def test_distributions_pickle_and_satisfy_protocol():
    for d in (GoalPositionDistribution(-3, 3, 2), GoalVelocityDistribution(0, 3), DirectionDistribution()):
        assert isinstance(d, envs.TaskDistribution)
        assert pickle.loads(pickle.dumps(d)) == d


def test_bad_distribution_arguments():
    with pytest.raises(ValueError):
        GoalPositionDistribution(1.0, -1.0, 2)
    with pytest.raises(ValueError):
        GoalPositionDistribution(-1.0, 1.0, 0)
    with pytest.raises(ValueError):
        GoalVelocityDistribution(0.0, math.nan)
    with pytest.raises(ValueError):
        DirectionDistribution().sample(-1, np.random.default_rng(0))


# ----- task_distribution lookup ----------------------------------------------------------------
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_task_distribution_for_suite_ids(family):
    base = envs.task_distribution(f"rlmaml/{family}-v0")
    assert envs.task_distribution(f"{family}-v0") == base
    assert envs.task_distribution(f"rlmaml/{family}Oracle-v0") == base
    assert envs.task_distribution(f"{family}Oracle-v0") == base
    task = base.sample(1, np.random.default_rng(0))[0]
    assert base.validate(task).keys() == task.keys()


def test_task_distribution_ranges():
    assert envs.task_distribution("rlmaml/Navigation2D-v0") == GoalPositionDistribution(-0.5, 0.5, 2)
    assert envs.task_distribution("rlmaml/HalfCheetahVel-v0") == GoalVelocityDistribution(0.0, 2.0)
    assert envs.task_distribution("rlmaml/AntVel-v0") == GoalVelocityDistribution(0.0, 3.0)
    assert envs.task_distribution("rlmaml/AntGoal-v0") == GoalPositionDistribution(-3.0, 3.0, 2)
    assert envs.task_distribution("rlmaml/AntDir-v0") == DirectionDistribution()
    assert envs.task_distribution("rlmaml/HalfCheetahDir-v0") == DirectionDistribution()


def test_unknown_id_lists_known_ids():
    with pytest.raises(ValueError) as info:
        envs.task_distribution("NoSuchEnv-v3")
    msg = str(info.value)
    assert "NoSuchEnv-v3" in msg and "rlmaml/AntGoal-v0" in msg and "rlmaml/Navigation2D-v0" in msg


def test_register_user_distribution_forms():
    envs.register_task_distribution("UserEnvA-v0", MyDist())
    envs.register_task_distribution("UserEnvB-v0", MyDist)
    envs.register_task_distribution("UserEnvC-v0", "envs.tasks:DirectionDistribution")
    for env_id in ("UserEnvA-v0", "UserEnvB-v0"):
        d = envs.task_distribution(env_id)
        assert isinstance(d, MyDist)
        assert d.sample(2, np.random.default_rng(0))[0].keys() == {"k"}
    assert isinstance(envs.task_distribution("UserEnvC-v0"), DirectionDistribution)
    # user ids are then listed as known
    with pytest.raises(ValueError, match="UserEnvA-v0"):
        envs.task_distribution("Nope-v0")
    # a user registration takes precedence, also for a gymnasium "module:Id" form
    assert isinstance(envs.task_distribution("somemodule:UserEnvA-v0"), MyDist)


def test_register_rejects_non_distributions():
    with pytest.raises(ValueError):
        envs.register_task_distribution("UserEnvD-v0", object())
    with pytest.raises(ValueError):
        envs.register_task_distribution("", MyDist())
    envs.register_task_distribution("UserEnvE-v0", "envs.tasks:nope")
    with pytest.raises(ValueError, match="nope"):
        envs.task_distribution("UserEnvE-v0")


def test_explicit_module_class_path():
    assert isinstance(envs.task_distribution(f"{__name__}:MyDist"), MyDist)
    assert isinstance(envs.task_distribution("envs.tasks:DirectionDistribution"), DirectionDistribution)


def test_load_object():
    assert envs.load_object("envs.tasks:GoalVelocityDistribution") is GoalVelocityDistribution
    assert envs.load_object("os.path:join") is __import__("os").path.join
    for bad in ("envs.tasks", "a:b:c", ":x", "x:", "no_such_module_xyz:A", "envs.tasks:Missing"):
        with pytest.raises(ValueError):
            envs.load_object(bad)


# ----- registration ----------------------------------------------------------------------------
def test_all_ids_registered_with_horizons():
    horizons = {"Navigation2D": 100}
    for family in ALL_FAMILIES:
        for suffix in ("", "Oracle"):
            spec = gym.spec(f"rlmaml/{family}{suffix}-v0")
            assert spec.max_episode_steps == horizons.get(family, 200)
            assert isinstance(spec.entry_point, str)
            assert spec.kwargs["oracle"] is (suffix == "Oracle")
    assert len(envs.ENV_IDS) == 12


def test_registration_idempotent_on_reimport():
    importlib.reload(envs)
    envs.registry.register_envs()
    assert "rlmaml/Navigation2D-v0" in gym.registry
