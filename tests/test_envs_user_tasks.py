"""User task families through ``envs.make_batched``: every documented task route takes effect, an env
with no route is refused, and spaces the MLP policies cannot take are refused at the batched-env level."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.envs.classic_control.pendulum import PendulumEnv

import envs

NS = "rlmaml_user_tests"
TASKS = ({"g": 2.0}, {"g": 15.0})


class GravityWrapper(gym.Wrapper):
    """Route 1: a wrapper that adds ``set_task`` around a stock env; the task sets gravity and the
    wrapper adds a task-dependent reward term (so the wrapper's own ``step`` must run too)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.task = {"g": 10.0}

    def set_task(self, task: dict) -> None:
        self.task = dict(task)
        self.env.unwrapped.g = float(task["g"])

    def step(self, action):
        obs, reward, term, trunc, info = self.env.step(action)
        return obs, reward - 0.01 * self.task["g"], term, trunc, info


class GravityOptionsWrapper(gym.Wrapper):
    """Route 3 in a wrapper: no ``set_task``; the task comes as ``reset(options={"task": ...})``."""

    def reset(self, *, seed=None, options=None):
        if options and "task" in options:
            self.env.unwrapped.g = float(options["task"]["g"])
        return self.env.reset(seed=seed)


class GravityPendulum(PendulumEnv):
    """Route 2: a subclass with ``set_task``."""

    def set_task(self, task: dict) -> None:
        self.g = float(task["g"])


class OptionsPendulum(PendulumEnv):
    """Route 3: an env that reads ``reset(options={"task": ...})`` (and nothing else)."""

    def reset(self, *, seed=None, options=None):
        task = (options or {}).get("task")
        if task is not None:
            self.g = float(task["g"])
        return super().reset(seed=seed)


class CopyingOptionsPendulum(PendulumEnv):
    """Reads the task from a copy of the options, which the probe cannot see: it declares the route."""

    task_from_options = True

    def reset(self, *, seed=None, options=None):
        opts = dict(options or {})
        if "task" in opts:
            self.g = float(opts["task"]["g"])
        return super().reset(seed=seed)


class IgnoresOptionsPendulum(PendulumEnv):
    """Accepts ``options`` but never reads a task: no route."""

    def reset(self, *, seed=None, options=None):
        return super().reset(seed=seed)


ROUTES = {
    "wrapper-set_task": lambda **kw: GravityWrapper(PendulumEnv(**kw)),
    "wrapper-options": lambda **kw: GravityOptionsWrapper(PendulumEnv(**kw)),
    "subclass-set_task": GravityPendulum,
    "env-options": OptionsPendulum,
    "marker-options": CopyingOptionsPendulum,
}
for _name, _entry in ROUTES.items():
    gym.register(f"{NS}/{_name}-v0", entry_point=_entry, max_episode_steps=30)
gym.register(f"{NS}/IgnoresOptions-v0", entry_point=IgnoresOptionsPendulum, max_episode_steps=30)


def returns(env_id: str, task: dict, k: int = 3, seed: int = 7) -> np.ndarray:
    """Per-env returns of a fixed action sequence from ``reset(seed)``."""
    b = envs.make_batched(env_id, k, task)
    b.reset(seed)
    total = np.zeros(k)
    for t in range(b.max_episode_steps):
        total += b.step(np.full((k, 1), np.sin(0.3 * t)))[1]
    b.close()
    return total


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_every_route_applies_the_task(route):
    """Same seed and actions, different tasks: different returns (the task reached the dynamics); the
    same task twice: identical returns."""
    env_id = f"{NS}/{route}-v0"
    a, b = (returns(env_id, task) for task in TASKS)
    assert np.all(np.abs(a - b) > 1e-3), (a, b)
    np.testing.assert_array_equal(a, returns(env_id, TASKS[0]))


def test_set_task_goes_to_the_outermost_layer_and_the_stack_is_stepped():
    b = envs.make_batched(f"{NS}/wrapper-set_task-v0", 2, {"g": 3.0})
    assert all(isinstance(e, gym.Wrapper) for e in b.envs)  # stepped through the user's wrapper
    assert all(e.unwrapped.g == 3.0 for e in b.envs)
    b.set_task({"g": 4.0})
    assert b.get_task() == {"g": 4.0} and all(e.unwrapped.g == 4.0 for e in b.envs)


def test_standard_wrappers_only_keep_the_fast_unwrapped_path():
    b = envs.make_batched(f"{NS}/subclass-set_task-v0", 2, {"g": 3.0})
    assert all(e is e.unwrapped for e in b.envs)


def test_the_wrapped_route_matches_the_env_driven_by_hand():
    """The batched env gives exactly what the wrapped env gives when driven by hand (env i: seed + i)."""
    task, k = {"g": 6.0}, 2
    b = envs.make_batched(f"{NS}/wrapper-set_task-v0", k, task)
    obs = b.reset(11)
    refs = [GravityWrapper(PendulumEnv()) for _ in range(k)]
    for i, ref in enumerate(refs):
        ref.set_task(task)
        np.testing.assert_array_equal(obs[i], ref.reset(seed=11 + i)[0])
    for t in range(5):
        a = np.full((k, 1), 0.1 * t, dtype=np.float32)
        o, r, *_ = b.step(a)
        for i, ref in enumerate(refs):
            ro, rr, *_ = ref.step(a[i])
            np.testing.assert_array_equal(o[i], ro)
            assert r[i] == pytest.approx(rr, rel=1e-12)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", f"{NS}/IgnoresOptions-v0"])
def test_an_env_without_a_task_route_is_refused_in_one_line(env_id):
    with pytest.raises(ValueError) as err:
        envs.make_batched(env_id, 2, {"g": 1.0})
    msg = str(err.value)
    assert "\n" not in msg and env_id in msg
    assert "set_task" in msg and "options" in msg and "task_from_options" in msg


def test_an_env_without_a_task_route_still_runs_without_a_task():
    b = envs.make_batched("Pendulum-v1", 2, max_episode_steps=3)
    b.reset(0)
    assert b.step(np.zeros((2, 1)))[0].shape == (2, 3)
    with pytest.raises(ValueError, match="Pendulum-v1"):
        b.set_task({"g": 1.0})


# --- spaces ---------------------------------------------------------------------------------------


class SpacesEnv(gym.Env):
    """Any observation / action spaces; echoes the action it received in ``info``."""

    def __init__(self, observation_space=None, action_space=None):
        self.observation_space = observation_space or spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = action_space or spaces.Box(-1.0, 1.0, (1,), np.float32)

    def set_task(self, task):
        self.task = task

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {"action": action}


gym.register(f"{NS}/Spaces-v0", entry_point=SpacesEnv, max_episode_steps=5)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"observation_space": spaces.Dict({"x": spaces.Box(-1, 1, (2,))})}, ["observation space Dict", "Box"]),
        ({"observation_space": spaces.Box(0, 255, (8, 8, 3), np.uint8)}, ["image observations", "MLP policy"]),
        ({"observation_space": spaces.Box(0, 255, (16, 16), np.uint8)}, ["image observations", "MLP policy"]),
        ({"observation_space": spaces.Box(0.0, 1.0, (4, 4, 2), np.float32)}, ["image observations"]),
        ({"action_space": spaces.MultiDiscrete([3, 2])}, ["action space MultiDiscrete", "Box or Discrete"]),
        ({"action_space": spaces.Dict({"a": spaces.Discrete(2)})}, ["action space Dict", "Box or Discrete"]),
    ],
)
def test_unsupported_spaces_are_refused_in_one_line(kw, words):
    with pytest.raises(ValueError) as err:
        envs.make_batched(f"{NS}/Spaces-v0", 2, **kw)
    msg = str(err.value)
    assert "\n" not in msg and f"{NS}/Spaces-v0" in msg
    for w in words:
        assert w in msg


def test_unbounded_action_box_passes_actions_through_and_clips_finite_bounds():
    space = spaces.Box(np.array([-np.inf, 0.0], np.float32), np.full(2, np.inf, np.float32), (2,), np.float32)
    b = envs.make_batched(f"{NS}/Spaces-v0", 2, action_space=space)
    assert np.isinf(b.single_action_space.high).all() and b.single_action_space.low[1] == 0.0
    b.reset(0)
    info = b.step(np.array([[-50.0, -3.0], [7.0, 9.0]]))[4]["infos"]
    np.testing.assert_array_equal(info[0]["action"], [-50.0, 0.0])  # only the finite bound clips
    np.testing.assert_array_equal(info[1]["action"], [7.0, 9.0])


def test_actions_are_given_in_the_batched_envs_flat_spaces():
    """A 2-D Box action is flat for the policy and reshaped for the env; Discrete(n, start) takes indices."""
    b = envs.make_batched(f"{NS}/Spaces-v0", 2, action_space=spaces.Box(-1.0, 1.0, (2, 3), np.float32))
    assert b.single_action_space.shape == (6,)
    b.reset(0)
    got = b.step(np.tile(np.linspace(-2, 2, 6), (2, 1)))[4]["infos"][0]["action"]
    assert got.shape == (2, 3) and got.max() == 1.0 and got.min() == -1.0
    b = envs.make_batched(f"{NS}/Spaces-v0", 2, action_space=spaces.Discrete(3, start=-1))
    assert b.single_action_space == spaces.Discrete(3)
    b.reset(0)
    infos = b.step(np.array([0, 2]))[4]["infos"]
    assert [int(i["action"]) for i in infos] == [-1, 1]
