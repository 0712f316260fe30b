"""Navigation2D: single env, its batched form, and the generic SerialBatchedEnv fallback."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.base import NonFiniteStepError
from envs.batched import SerialBatchedEnv
from envs.navigation import BatchedNavigation2D, Navigation2DEnv

NAV = "rlmaml/Navigation2D-v0"
NAV_ORACLE = "rlmaml/Navigation2DOracle-v0"


@pytest.mark.filterwarnings("ignore:.*infinity")
@pytest.mark.parametrize("env_id", [NAV, NAV_ORACLE])
def test_check_env(env_id):
    env = gym.make(env_id, task={"goal": [0.2, -0.3]})
    check_env(env.unwrapped)


def test_reward_and_clipping_by_hand():
    env = Navigation2DEnv(task={"goal": [0.3, -0.2]})
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    assert obs.dtype == np.float32
    obs, r, term, trunc, info = env.step(np.array([0.05, 0.2]))  # y clipped to 0.1
    np.testing.assert_allclose(obs, [0.05, 0.1], rtol=0, atol=1e-7)
    assert r == pytest.approx(-np.sqrt(0.25**2 + 0.3**2), abs=1e-12)
    assert not term and not trunc
    assert info["reward_goal"] == r and info["distance"] == pytest.approx(-r)
    obs, r, *_ = env.step([-1.0, -1.0])  # clipped to (-0.1, -0.1)
    np.testing.assert_allclose(obs, [-0.05, 0.0], atol=1e-7)
    assert r == pytest.approx(-np.sqrt(0.35**2 + 0.2**2), abs=1e-12)


def test_termination_near_goal_and_horizon():
    env = Navigation2DEnv(task={"goal": [0.005, -0.009]})
    env.reset(seed=0)
    _, r, term, _, _ = env.step([0.0, 0.0])
    assert term and r == pytest.approx(-np.hypot(0.005, 0.009))
    env.set_task({"goal": [0.011, 0.0]})
    env.reset(seed=0)
    assert not env.step([0.0, 0.0])[2]
    wrapped = gym.make(NAV, task={"goal": [0.5, 0.5]})
    wrapped.reset(seed=0)
    for t in range(100):
        _, _, term, trunc, _ = wrapped.step(np.zeros(2, dtype=np.float32))
        assert not term
        assert trunc == (t == 99)


def test_oracle_observation_appends_goal():
    env = gym.make(NAV_ORACLE, task={"goal": [0.1, 0.4]})
    obs, _ = env.reset(seed=1)
    np.testing.assert_allclose(obs, [0.0, 0.0, 0.1, 0.4], atol=1e-7)
    obs, *_ = env.step(np.array([0.1, 0.1], dtype=np.float32))
    np.testing.assert_allclose(obs, [0.1, 0.1, 0.1, 0.4], atol=1e-7)


def test_task_interface_and_pickle():
    env = gym.make(NAV).unwrapped
    assert env.get_task()["goal"].shape == (2,)
    env.set_task({"goal": [0.25, -0.5]})
    np.testing.assert_array_equal(env.get_task()["goal"], [0.25, -0.5])
    env.get_task()["goal"][0] = 9.0  # get_task returns a copy
    assert env.get_task()["goal"][0] == 0.25
    clone = pickle.loads(pickle.dumps(env))
    np.testing.assert_array_equal(clone.get_task()["goal"], [0.25, -0.5])
    env.reset(seed=0, options={"task": {"goal": [-0.1, 0.1]}})
    np.testing.assert_array_equal(env.get_task()["goal"], [-0.1, 0.1])
    assert pickle.loads(pickle.dumps(env)).get_task()["goal"].tolist() == [-0.1, 0.1]


def test_reset_deterministic():
    env = gym.make(NAV, task={"goal": [0.2, 0.2]})
    o1, _ = env.reset(seed=3)
    a = [env.step(np.array([0.03, -0.02], dtype=np.float32))[0] for _ in range(3)]
    o2, _ = env.reset(seed=3)
    b = [env.step(np.array([0.03, -0.02], dtype=np.float32))[0] for _ in range(3)]
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(np.stack(a), np.stack(b))


@pytest.mark.parametrize(
    "bad",
    [{"goal": [0.1]}, {"goal": [np.nan, 0.0]}, {"goal": [0.6, 0.0]}, {"velocity": 1.0}],
)
def test_bad_tasks_rejected_everywhere(bad):
    with pytest.raises(ValueError, match="goal"):
        Navigation2DEnv(task=bad)
    env = Navigation2DEnv()
    with pytest.raises(ValueError, match="goal"):
        env.set_task(bad)
    with pytest.raises(ValueError, match="goal"):
        env.reset(seed=0, options={"task": bad})
    with pytest.raises(ValueError, match="goal"):
        envs.make_batched(NAV, 2).set_task(bad)


@pytest.mark.parametrize("bad", [[np.nan, 0.0], [0.0, np.inf], [0.1, 0.1, 0.1], "x"])
def test_bad_actions_raise(bad):
    env = Navigation2DEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(bad)


# ----- batched ---------------------------------------------------------------------------------
def _compare_batched_to_singles(env_id, batched, task, steps, seed, rng, active_fn):
    k = batched.num_envs
    singles = [gym.make(env_id, task=task, max_episode_steps=batched.max_episode_steps) for _ in range(k)]
    obs_b = batched.reset(seed)
    obs_s = [s.reset(seed=seed + i)[0] for i, s in enumerate(singles)]
    np.testing.assert_array_equal(obs_b, np.stack(obs_s))
    low, high = batched.single_action_space.low, batched.single_action_space.high
    for t in range(steps):
        actions = rng.uniform(2 * low, 2 * high, size=(k, *low.shape)).astype(np.float32)  # half clipped
        active = active_fn(t, k)
        if active is not None:
            actions[~active] = np.nan  # skipped rows may hold anything
        out_b = batched.step(actions, active)
        for i, s in enumerate(singles):
            if active is not None and not active[i]:
                np.testing.assert_array_equal(out_b[0][i], obs_b[i])
                assert out_b[1][i] == 0.0 and not out_b[2][i] and not out_b[3][i]
                continue
            o, r, term, trunc, _ = s.step(actions[i])
            np.testing.assert_array_equal(out_b[0][i], o)
            assert out_b[1][i] == r
            assert out_b[2][i] == term and out_b[3][i] == trunc
        obs_b = out_b[0]


@pytest.mark.parametrize("env_id", [NAV, NAV_ORACLE])
def test_batched_matches_single_envs(env_id):
    task = {"goal": [0.12, -0.3]}
    b = envs.make_batched(env_id, 4, task=task, max_episode_steps=12)
    assert isinstance(b, BatchedNavigation2D) and isinstance(b, envs.BatchedTaskEnv)
    assert b.max_episode_steps == 12
    rng = np.random.default_rng(0)
    _compare_batched_to_singles(env_id, b, task, 12, 5, rng, lambda t, k: None)
    mask = lambda t, k: np.arange(k) % 2 == t % 2  # noqa: E731
    _compare_batched_to_singles(env_id, b, task, 12, 7, rng, mask)


def test_batched_basics():
    b = envs.make_batched("Navigation2D-v0", 3)  # prefix optional
    assert b.max_episode_steps == 100 and b.num_envs == 3
    b.set_task({"goal": [0.4, 0.4]})
    assert b.get_task()["goal"].tolist() == [0.4, 0.4]
    obs = b.reset(0)
    assert obs.shape == (3, 2)
    with pytest.raises(ValueError, match="env 1"):
        b.step(np.array([[0.0, 0.0], [np.nan, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        b.step(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="active"):
        b.step(np.zeros((3, 2)), active=np.ones(2, dtype=bool))
    obs, r, term, trunc, info = b.step(np.full((3, 2), 5.0))  # clipped to 0.1
    np.testing.assert_allclose(obs, 0.1, atol=1e-7)
    assert r.shape == term.shape == trunc.shape == (3,)
    assert term.dtype == np.bool_ and trunc.dtype == np.bool_
    b2 = pickle.loads(pickle.dumps(b))
    assert b2.get_task()["goal"].tolist() == [0.4, 0.4]


# ----- generic fallback ------------------------------------------------------------------------
class ToyTaskEnv(gym.Env):
    """A user env with set_task: obs = [t, offset]; reward = offset * action."""

    def __init__(self, nan_at: int | None = None):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.offset = 0.0
        self.t = 0
        self.nan_at = nan_at

    def set_task(self, task):
        self.offset = float(task["offset"])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([self.np_random.uniform(), self.offset]), {}

    def step(self, action):
        self.t += 1
        obs = np.array([float(self.t), self.offset])
        if self.nan_at is not None and self.t >= self.nan_at:
            obs[0] = np.nan
        return obs, self.offset * float(action[0]), False, False, {"t": self.t}


class ToyOptionsEnv(ToyTaskEnv):
    """A user env without set_task: the task arrives through reset options."""

    set_task = None  # type: ignore[assignment]

    def reset(self, *, seed=None, options=None):
        if options and "task" in options:
            self.offset = float(options["task"]["offset"])
        return super().reset(seed=seed)


gym.register("rlmaml_tests/Toy-v0", entry_point=ToyTaskEnv, max_episode_steps=5)
gym.register("rlmaml_tests/ToyOptions-v0", entry_point=ToyOptionsEnv, max_episode_steps=5)
gym.register("rlmaml_tests/ToyNoHorizon-v0", entry_point=ToyTaskEnv)


@pytest.mark.parametrize("env_id", ["rlmaml_tests/Toy-v0", "rlmaml_tests/ToyOptions-v0"])
def test_serial_fallback_matches_single_envs(env_id):
    b = envs.make_batched(env_id, 3, task={"offset": 2.0})
    assert isinstance(b, SerialBatchedEnv) and b.max_episode_steps == 5
    obs = b.reset(10)
    singles = [gym.make(env_id) for _ in range(3)]
    for i, s in enumerate(singles):
        if getattr(s.unwrapped, "set_task", None):
            s.unwrapped.set_task({"offset": 2.0})
            ref = s.reset(seed=10 + i)[0]
        else:
            ref = s.reset(seed=10 + i, options={"task": {"offset": 2.0}})[0]
        np.testing.assert_array_equal(obs[i], ref)
    active = np.array([True, False, True])
    for t in range(5):
        a = np.full((3, 1), 0.5)
        o, r, term, trunc, info = b.step(a, active)
        np.testing.assert_array_equal(r, [1.0, 0.0, 1.0])
        assert o[0, 0] == t + 1 and o[1, 0] == obs[1, 0]
        np.testing.assert_array_equal(trunc, [t == 4, False, t == 4])
        assert len(info["infos"]) == 3
    assert b.get_task() == {"offset": 2.0}


def test_serial_fallback_checks():
    envs.register_task_distribution("rlmaml_tests/Toy-v0", _OffsetDist())
    try:
        with pytest.raises(ValueError, match="offset"):
            envs.make_batched("rlmaml_tests/Toy-v0", 2, task={"offset": 5.0})
    finally:
        envs.registry._USER_DISTRIBUTIONS.pop("rlmaml_tests/Toy-v0")
    with pytest.raises(ValueError, match="max_episode_steps"):
        envs.make_batched("rlmaml_tests/ToyNoHorizon-v0", 2)
    b = envs.make_batched("rlmaml_tests/ToyNoHorizon-v0", 2, max_episode_steps=3)
    assert b.max_episode_steps == 3
    b = envs.make_batched("rlmaml_tests/Toy-v0", 3, task={"offset": 1.0}, nan_at=2)
    b.reset(0)
    b.step(np.zeros((3, 1)))
    with pytest.raises(NonFiniteStepError) as err:
        b.step(np.zeros((3, 1)), np.array([False, True, True]))
    msg = str(err.value)
    assert "rlmaml_tests/Toy-v0" in msg and "index 1" in msg and "offset" in msg
    with pytest.raises(ValueError, match="env 2"):
        b.step(np.array([[0.0], [0.0], [np.nan]]))


class _OffsetDist:
    def sample(self, n, rng):
        return [{"offset": float(x)} for x in rng.uniform(-1, 1, n)]

    def validate(self, task):
        if not -1.0 <= task.get("offset", np.nan) <= 1.0:
            raise ValueError(f"task {task!r}: field 'offset' out of range")
        return dict(task)


@pytest.mark.parametrize("env_id", [NAV, NAV_ORACLE])
def test_step_tasks_steps_many_tasks_as_each_env_would_alone(env_id):
    """``envs.step_tasks`` (BatchedNavigation2D.step_many: one set of array ops for M tasks) returns, and
    leaves each env in, exactly what its own ``step`` gives, with rows going inactive along the way."""
    goals = [[0.12, -0.3], [-0.4, 0.25], [0.0, 0.05]]
    grouped = [envs.make_batched(env_id, 4, task={"goal": g}, max_episode_steps=9) for g in goals]
    alone = [envs.make_batched(env_id, 4, task={"goal": g}, max_episode_steps=9) for g in goals]
    for e in grouped + alone:
        e.reset(0)
    rng = np.random.default_rng(1)
    for _ in range(10):
        actions = rng.uniform(-0.15, 0.15, size=(3, 4, 2))
        active = rng.random((3, 4)) < 0.8
        actions[~active] = np.nan  # inactive rows may hold anything
        out = envs.step_tasks(grouped, actions, active)
        for i, e in enumerate(alone):
            ref = e.step(actions[i], active=active[i])[:4]
            for got, want in zip(out, ref, strict=True):
                np.testing.assert_array_equal(got[i], want)
    for g, a in zip(grouped, alone, strict=True):
        np.testing.assert_array_equal(g._state, a._state)
        np.testing.assert_array_equal(g._t, a._t)


def test_step_tasks_names_the_env_of_a_bad_action_like_step_does():
    grouped = [envs.make_batched(NAV, 2, task={"goal": [0.1, 0.1]}) for _ in range(2)]
    for e in grouped:
        e.reset(0)
    actions = np.zeros((2, 2, 2))
    actions[1, 1, 0] = np.inf
    with pytest.raises(ValueError, match="action of env 1 contains NaN or inf"):
        envs.step_tasks(grouped, actions, np.ones((2, 2), dtype=bool))


def test_step_tasks_falls_back_to_each_env_for_forms_without_step_many():
    task = {"goal": [0.2, -0.1]}
    grouped = [SerialBatchedEnv(NAV, 2, task=task, max_episode_steps=5) for _ in range(2)]
    alone = SerialBatchedEnv(NAV, 2, task=task, max_episode_steps=5)
    for e in [*grouped, alone]:
        e.reset(3)
    actions = np.full((2, 2, 2), 0.05)
    obs, reward, terminated, truncated = envs.step_tasks(grouped, actions, np.ones((2, 2), dtype=bool))
    ref = alone.step(actions[0])
    assert obs.shape == (2, 2, 2) and reward.shape == (2, 2)
    np.testing.assert_array_equal(obs[1], ref[0])
    np.testing.assert_array_equal(reward[1], ref[1])


def test_step_tasks_uses_a_subclass_own_step_when_it_overrides_only_step():
    class Counting(BatchedNavigation2D):
        calls = 0

        def step(self, actions, active=None):
            Counting.calls += 1
            return super().step(actions, active)

    grouped = [Counting(NAV, 2, task={"goal": [0.1, 0.1]}) for _ in range(3)]
    for e in grouped:
        e.reset(0)
    envs.step_tasks(grouped, np.zeros((3, 2, 2)), np.ones((3, 2), dtype=bool))
    assert Counting.calls == 3
