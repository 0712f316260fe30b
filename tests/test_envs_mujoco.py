"""MuJoCo task families: API checks, reward formulas by hand, instability, batched == single."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco")

import envs  # noqa: E402
from envs._mujoco import MujocoBatchedEnv, _quiet_model_compile  # noqa: E402
from envs.ant import AntDirEnv, AntGoalEnv, AntVelEnv  # noqa: E402
from envs.half_cheetah import HalfCheetahDirEnv, HalfCheetahVelEnv  # noqa: E402

pytestmark = pytest.mark.mujoco

FAMILIES = ["HalfCheetahVel", "HalfCheetahDir", "AntVel", "AntDir", "AntGoal"]
IDS = [f"rlmaml/{f}{o}-v0" for f in FAMILIES for o in ("", "Oracle")]
TASKS = {
    "HalfCheetahVel": {"velocity": 1.3},
    "HalfCheetahDir": {"direction": -1.0},
    "AntVel": {"velocity": 2.0},
    "AntDir": {"direction": -1.0},
    "AntGoal": {"goal": np.array([1.0, -2.5])},
}
BAD_TASKS = {
    "HalfCheetahVel": [{}, {"velocity": np.nan}, {"velocity": 2.5}, {"velocity": [1.0, 1.0]}],
    "HalfCheetahDir": [{}, {"direction": 0.0}, {"direction": np.inf}],
    "AntVel": [{"direction": 1.0}, {"velocity": 3.5}, {"velocity": -np.inf}],
    "AntDir": [{"direction": 2.0}, {"direction": [1.0]} | {"direction": [1.0, -1.0]}],
    "AntGoal": [{"goal": [1.0]}, {"goal": [4.0, 0.0]}, {"goal": [np.nan, 0.0]}, {"velocity": 1.0}],
}
FIELD = {"HalfCheetahVel": "velocity", "HalfCheetahDir": "direction", "AntVel": "velocity"}
FIELD |= {"AntDir": "direction", "AntGoal": "goal"}


def family(env_id: str) -> str:
    return env_id.split("/")[1].split("-")[0].replace("Oracle", "")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """MuJoCo appends runtime warnings to MUJOCO_LOG.TXT in the working directory."""
    monkeypatch.chdir(tmp_path)


# ----- gymnasium API ---------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*infinity")
@pytest.mark.parametrize("env_id", IDS)
def test_check_env(env_id):
    from gymnasium.utils.env_checker import check_env

    env = gym.make(env_id, task=TASKS[family(env_id)])
    check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize(
    "env_id, gym_id, ref_kwargs",
    [
        ("rlmaml/HalfCheetahVel-v0", "HalfCheetah-v5", {}),
        ("rlmaml/AntVel-v0", "Ant-v5", {"frame_skip": 1}),  # the Ant family steps at rllab's dt (envs/ant.py)
        ("rlmaml/AntDir-v0", "Ant-v5", {"frame_skip": 1}),
    ],
)
def test_observation_layout_is_v5(env_id, gym_id, ref_kwargs):
    with _quiet_model_compile():  # Gymnasium's half_cheetah.xml triggers a deprecation notice
        ours, ref = gym.make(env_id).unwrapped, gym.make(gym_id, **ref_kwargs).unwrapped
    np.testing.assert_array_equal(ours.reset(seed=4)[0], ref.reset(seed=4)[0])
    a = np.linspace(-0.9, 0.9, ref.action_space.shape[0])
    for _ in range(3):
        np.testing.assert_array_equal(ours.step(a)[0], ref.step(a)[0])
    assert ours.observation_space.shape == ref.observation_space.shape


@pytest.mark.parametrize("env_id", ["rlmaml/AntVel-v0", "rlmaml/AntDir-v0", "rlmaml/AntGoal-v0"])
def test_ant_steps_at_rllabs_dt_so_a_random_policy_survives_the_horizon(env_id):
    """At rllab's dt (0.01 s per action) a random policy's ant stays healthy for most of H = 200; at v5's
    frame skip 5 it jumps out of the healthy range within about 55 steps (envs/ant.py)."""
    env = gym.make(env_id, task=TASKS[family(env_id)]).unwrapped
    assert env.dt == pytest.approx(0.01)
    rng = np.random.default_rng(0)
    lengths = []
    for ep in range(5):
        env.reset(seed=ep)
        steps, terminated = 0, False
        while steps < 200 and not terminated:
            terminated = env.step(np.clip(rng.normal(size=8), -1, 1))[2]
            steps += 1
        lengths.append(steps)
    assert np.mean(lengths) > 150, lengths


def test_observation_sizes():
    sizes = {"HalfCheetahVel": 17, "HalfCheetahDir": 17, "AntVel": 105, "AntDir": 105, "AntGoal": 107}
    extra = {"AntGoal": 2}
    for f, n in sizes.items():
        assert gym.make(f"rlmaml/{f}-v0").observation_space.shape == (n,)
        assert gym.make(f"rlmaml/{f}Oracle-v0").observation_space.shape == (n + extra.get(f, 1),)


@pytest.mark.parametrize("f", FAMILIES)
def test_oracle_appends_task(f):
    env = gym.make(f"rlmaml/{f}Oracle-v0", task=TASKS[f])
    obs, _ = env.reset(seed=0)
    vec = np.atleast_1d(np.asarray(TASKS[f][FIELD[f]], dtype=float))
    np.testing.assert_array_equal(obs[-vec.size :], vec)
    obs, *_ = env.step(env.action_space.sample())
    np.testing.assert_array_equal(obs[-vec.size :], vec)


@pytest.mark.parametrize("env_id", ["rlmaml/HalfCheetahDir-v0", "rlmaml/AntGoal-v0"])
def test_reset_deterministic(env_id):
    env = gym.make(env_id)
    a = np.full(env.action_space.shape, 0.3, dtype=np.float32)
    runs = []
    for seed in (7, 7, 8):
        obs = [env.reset(seed=seed)[0]]
        obs += [env.step(a)[0] for _ in range(3)]
        runs.append(np.stack(obs))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0][0], runs[2][0])


# ----- reward formulas by hand -----------------------------------------------------------------
def test_half_cheetah_reward_formulas_by_hand():
    qpos = np.zeros((1, 9))
    qpos[0, 0] = 0.1  # moved 0.1 in dt = 0.05 -> v_x = 2.0
    x_before, qvel, a = np.zeros((1, 1)), np.zeros((1, 9)), np.full((1, 6), 0.5)  # ctrl = 0.075
    r, term, info = HalfCheetahVelEnv._reward_batch(np.array([[1.3]]), x_before, qpos, qvel, None, a, 0.05)
    assert r[0] == pytest.approx(-0.7 - 0.075, abs=1e-12) and not term[0]
    assert info["x_velocity"][0] == pytest.approx(2.0)
    r, _, _ = HalfCheetahDirEnv._reward_batch(np.array([[-1.0]]), x_before, qpos, qvel, None, a, 0.05)
    assert r[0] == pytest.approx(-2.0 - 0.075, abs=1e-12)


def _ant_state(z=0.5):
    qpos = np.zeros((1, 15))
    qpos[0, :3] = [0.15, -0.1, z]  # v_x = 0.15 / 0.05 = 3.0
    cfrc = np.zeros((1, 14, 6))
    cfrc[0, 3, :2] = [2.0, -0.5]  # clipped: 1.0, -0.5 -> contact = 5e-4 * 1.25
    return np.zeros((1, 2)), qpos, np.zeros((1, 14)), cfrc, np.full((1, 8), 0.5)  # ctrl = 0.01


@pytest.mark.parametrize(
    "cls, task_vec, expected",
    [
        (AntVelEnv, [2.0], -1.0 + 1.0 + 0.05 - 0.01 - 0.000625),
        (AntDirEnv, [-1.0], -3.0 + 0.05 - 0.01 - 0.000625),
        (AntGoalEnv, [1.0, 1.0], -(0.85 + 1.1) + 4.0 + 0.05 - 0.01 - 0.000625),
    ],
)
def test_ant_reward_formulas_by_hand(cls, task_vec, expected):
    xb, qpos, qvel, cfrc, a = _ant_state()
    r, term, info = cls._reward_batch(np.array([task_vec]), xb, qpos, qvel, cfrc, a, 0.05)
    assert r[0] == pytest.approx(expected, abs=1e-12)
    assert not term[0]
    assert sum(v[0] for k, v in info.items() if k.startswith("reward_")) == pytest.approx(r[0], abs=1e-12)
    assert info["reward_contact"][0] == pytest.approx(-0.000625)
    assert info["reward_ctrl"][0] == pytest.approx(-0.01)
    for z in (0.1, 1.2):
        _, qpos_z, *_ = _ant_state(z)
        assert cls._reward_batch(np.array([task_vec]), xb, qpos_z, qvel, cfrc, a, 0.05)[1][0]


def _independent_step(env, qpos, qvel, ctrl, rne, nstep):
    """Step a separate MjData of the env's model by hand, ``nstep`` MuJoCo steps per action (HalfCheetah: v5's 5;
    Ant: rllab's 1)."""
    m = env.model
    d = mujoco.MjData(m)
    d.qpos[:], d.qvel[:] = qpos, qvel
    mujoco.mj_forward(m, d)
    d.ctrl[:] = ctrl
    mujoco.mj_step(m, d, nstep=nstep)
    if rne:
        mujoco.mj_rnePostConstraint(m, d)
    return d, nstep * m.opt.timestep


def test_half_cheetah_end_to_end_against_raw_mujoco():
    env = gym.make("rlmaml/HalfCheetahVel-v0", task={"velocity": 1.3}).unwrapped
    env.reset(seed=0)
    q0, v0 = env.data.qpos.copy(), env.data.qvel.copy()
    action = np.array([0.5, -2.0, 0.3, 1.5, 0.0, -0.7])
    clipped = np.clip(action, -1, 1)
    d, dt = _independent_step(env, q0, v0, clipped, rne=False, nstep=5)
    vx = (d.qpos[0] - q0[0]) / dt
    obs, r, term, trunc, info = env.step(action)
    assert r == pytest.approx(-abs(vx - 1.3) - 0.05 * np.sum(clipped**2), rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(obs, np.concatenate([d.qpos[1:], d.qvel]), rtol=1e-9, atol=1e-9)
    assert info["x_velocity"] == pytest.approx(vx, rel=1e-9, abs=1e-9)
    assert not term and not trunc and info["unstable"] is False


@pytest.mark.parametrize("f", ["AntVel", "AntDir", "AntGoal"])
def test_ant_end_to_end_against_raw_mujoco(f):
    task = TASKS[f]
    env = gym.make(f"rlmaml/{f}-v0", task=task).unwrapped
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    contacts = []
    for _ in range(15):  # a few steps, so that the ant touches the ground (non-zero contact cost)
        action = rng.uniform(-1.5, 1.5, size=8)  # partly out of range
        clipped = np.clip(action, -1, 1)
        q0, v0 = env.data.qpos.copy(), env.data.qvel.copy()
        d, dt = _independent_step(env, q0, v0, clipped, rne=True, nstep=1)
        obs, r, term, _, info = env.step(action)
        vx = (d.qpos[0] - q0[0]) / dt
        ctrl = 0.5 * 1e-2 * np.sum(clipped**2)
        contact = 0.5 * 1e-3 * np.sum(np.clip(d.cfrc_ext, -1, 1) ** 2)
        contacts.append(contact)
        if f == "AntVel":
            expected = -abs(vx - task["velocity"]) + 1.0
        elif f == "AntDir":
            expected = task["direction"] * vx
        else:
            expected = -np.sum(np.abs(d.qpos[:2] - task["goal"])) + 4.0
        expected += 0.05 - ctrl - contact
        assert r == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert info["reward_contact"] == pytest.approx(-contact, rel=1e-9, abs=1e-12)
        skip = 0 if f == "AntGoal" else 2
        ref_obs = np.concatenate([d.qpos[skip:], d.qvel, np.clip(d.cfrc_ext[1:], -1, 1).ravel()])
        np.testing.assert_allclose(obs, ref_obs, rtol=1e-9, atol=1e-9)
        assert term == (not 0.2 <= d.qpos[2] <= 1.0)
    assert max(contacts) > 0


def test_ant_terminates_when_unhealthy():
    env = gym.make("rlmaml/AntVel-v0")
    env.reset(seed=0)
    u = env.unwrapped
    u.set_state(np.r_[0.0, 0.0, 1.5, u.init_qpos[3:]], np.zeros(14))  # torso too high
    _, r, term, trunc, info = env.step(np.zeros(8, dtype=np.float32))
    assert term and not trunc and np.isfinite(r) and info["unstable"] is False


# ----- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("f", FAMILIES)
def test_bad_tasks_rejected(f):
    env = gym.make(f"rlmaml/{f}-v0").unwrapped
    for bad in BAD_TASKS[f]:
        with pytest.raises(ValueError, match=FIELD[f]):
            env.set_task(bad)
        with pytest.raises(ValueError, match=FIELD[f]):
            env.reset(seed=0, options={"task": bad})
        with pytest.raises(ValueError, match=FIELD[f]):
            gym.make(f"rlmaml/{f}-v0", task=bad)
    assert env.get_task().keys() == {FIELD[f]}  # unchanged by the failed calls


@pytest.mark.parametrize("env_id", ["rlmaml/HalfCheetahVel-v0", "rlmaml/AntGoal-v0"])
def test_bad_actions(env_id):
    env = gym.make(env_id).unwrapped
    n = env.action_space.shape[0]
    env.reset(seed=0)
    for bad in (np.full(n, np.nan), np.r_[np.inf, np.zeros(n - 1)], np.zeros(n + 1), "a"):
        with pytest.raises(ValueError, match="action"):
            env.step(bad)
    # out of range -> clipped (same trajectory and reward as the clipped action)
    a = np.linspace(-3, 3, n)
    env.reset(seed=5)
    o1, r1, *_ = env.step(a)
    env.reset(seed=5)
    o2, r2, *_ = env.step(np.clip(a, -1, 1))
    np.testing.assert_array_equal(o1, o2)
    assert r1 == r2


@pytest.mark.parametrize("env_id", ["rlmaml/HalfCheetahDir-v0", "rlmaml/AntVelOracle-v0"])
def test_instability_ends_trajectory(env_id, in_tmp):
    env = gym.make(env_id).unwrapped
    n = env.action_space.shape[0]
    env.reset(seed=0)
    prev, *_ = env.step(np.zeros(n))
    env.data.qvel[:] = 1e12  # MuJoCo flags it (and would silently reset the state)
    obs, r, term, _, info = env.step(np.full(n, 0.5))
    assert term and info["unstable"] is True
    assert np.isfinite(r) and r == pytest.approx(-env.ctrl_cost_weight * 0.25 * n)
    np.testing.assert_array_equal(obs, prev)
    obs, r, term, _, info = env.step(np.zeros(n))  # stepping on: no simulation, reward 0
    assert term and r == 0.0 and info["unstable"] is True
    obs, _ = env.reset(seed=0)
    assert not env.step(np.zeros(n))[2]
    env.data.qpos[3] = np.nan
    _, r, term, _, info = env.step(np.zeros(n))
    assert term and info["unstable"] is True and np.isfinite(r)


# ----- task interface and pickling -------------------------------------------------------------
@pytest.mark.parametrize("f", FAMILIES)
def test_task_roundtrip_and_pickle(f):
    dist = envs.task_distribution(f"rlmaml/{f}-v0")
    t1, t2 = dist.sample(2, np.random.default_rng(3))
    env = gym.make(f"rlmaml/{f}-v0", task=t1).unwrapped
    key = FIELD[f]
    np.testing.assert_array_equal(env.get_task()[key], t1[key])
    env.set_task(t2)
    np.testing.assert_array_equal(env.get_task()[key], t2[key])
    clone = pickle.loads(pickle.dumps(env))
    np.testing.assert_array_equal(clone.get_task()[key], t2[key])
    np.testing.assert_array_equal(clone.reset(seed=2)[0], env.reset(seed=2)[0])
    env.reset(seed=0, options={"task": t1})
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(env)).get_task()[key], t1[key])


# ----- batched == K single envs ----------------------------------------------------------------
def _compare(env_id, b, task, steps, seed, active_fn, perturb=None):
    k = b.num_envs
    singles = [gym.make(env_id, task=task, max_episode_steps=b.max_episode_steps) for _ in range(k)]
    obs_b = b.reset(seed)
    np.testing.assert_array_equal(obs_b, np.stack([s.reset(seed=seed + i)[0] for i, s in enumerate(singles)]))
    if perturb is not None:
        perturb(b.envs, [s.unwrapped for s in singles])
    rng = np.random.default_rng(seed)
    n = b.single_action_space.shape[0]
    for t in range(steps):
        actions = rng.uniform(-1.5, 1.5, size=(k, n)).astype(np.float32)
        active = active_fn(t, k)
        if active is not None:
            actions[~active] = np.nan
        o, r, term, trunc, info = b.step(actions, active)
        for i, s in enumerate(singles):
            if active is not None and not active[i]:
                np.testing.assert_array_equal(o[i], obs_b[i])
                assert r[i] == 0.0 and not term[i] and not trunc[i]
                continue
            so, sr, sterm, strunc, sinfo = s.step(actions[i])
            np.testing.assert_array_equal(o[i], so)
            assert r[i] == sr
            assert (term[i], trunc[i]) == (sterm, strunc)
            for key, v in sinfo.items():
                assert info[key][i] == v, key
        obs_b = o


@pytest.mark.parametrize("f", FAMILIES)
def test_batched_matches_single_envs(f):
    env_id = f"rlmaml/{f}-v0"
    b = envs.make_batched(env_id, 3, task=TASKS[f], max_episode_steps=6)
    assert isinstance(b, MujocoBatchedEnv) and isinstance(b, envs.BatchedTaskEnv)
    _compare(env_id, b, TASKS[f], 6, 11, lambda t, k: None)
    _compare(env_id, b, TASKS[f], 6, 21, lambda t, k: np.arange(k) != t % k)


def test_batched_threads_match_single_envs():
    task = TASKS["AntDir"]
    b = envs.make_batched("rlmaml/AntDir-v0", 4, task=task, num_threads=2, max_episode_steps=4)
    _compare("rlmaml/AntDir-v0", b, task, 4, 1, lambda t, k: np.arange(k) != t)
    b.close()


def test_batched_oracle_and_instability_match_single_envs(in_tmp):
    env_id = "rlmaml/AntGoalOracle-v0"
    b = envs.make_batched(env_id, 3, task=TASKS["AntGoal"], max_episode_steps=5)

    def blow_up(batched_envs, single_envs):
        batched_envs[1].data.qvel[:] = 1e12
        single_envs[1].data.qvel[:] = 1e12
        for e in (batched_envs[2], single_envs[2]):  # and one unhealthy ant
            e.set_state(np.r_[0.0, 0.0, 1.5, e.init_qpos[3:]], np.zeros(14))

    _compare(env_id, b, TASKS["AntGoal"], 5, 3, lambda t, k: None, blow_up)
    o, r, term, trunc, info = b.step(np.zeros((3, 8)))
    assert info["unstable"].tolist() == [False, True, False] and term[1] and r[1] == 0.0


def test_batched_interface():
    b = envs.make_batched("HalfCheetahVelOracle-v0", 2)
    assert b.max_episode_steps == 200 and b.single_observation_space.shape == (18,)
    b.set_task({"velocity": 0.25})
    assert b.get_task() == {"velocity": 0.25}
    obs = b.reset(0)
    assert obs.shape == (2, 18) and np.all(obs[:, -1] == 0.25)
    with pytest.raises(ValueError, match="velocity"):
        b.set_task({"velocity": -1.0})
    with pytest.raises(ValueError, match="env 0"):
        b.step(np.full((2, 6), np.nan))
    with pytest.raises(ValueError, match="shape"):
        b.step(np.zeros((2, 5)))
    o, r, term, trunc, info = b.step(np.zeros((2, 6)), np.zeros(2, dtype=bool))  # nothing active
    np.testing.assert_array_equal(o, obs)
    assert not r.any() and not term.any() and not trunc.any()
    clone = pickle.loads(pickle.dumps(b))
    assert clone.get_task() == {"velocity": 0.25} and clone.num_envs == 2
    np.testing.assert_array_equal(clone.reset(0), b.reset(0))
    b.close()
    clone.close()


# ----- several tasks in one kernel call: step_tasks -> MujocoBatchedEnv.step_many --------------
@pytest.mark.parametrize("stepper, share", [("loop", False), ("auto", False), ("auto", True)])
@pytest.mark.parametrize("family, tasks", [
    ("HalfCheetahVel", [{"velocity": 0.3}, {"velocity": 1.7}, {"velocity": 1.0}]),
    ("AntGoal", [{"goal": [1.0, -2.0]}, {"goal": [-0.5, 0.5]}]),
])
def test_step_tasks_fused_step_equals_each_envs_own_step(family, tasks, stepper, share):
    """One kernel call (and, with ``share_physics``, one physics call) for M tasks gives every env exactly what
    its own ``step`` gives, through inactive slots, ended episodes, resets, a subset of the envs stepped, and
    a re-share in the middle of an episode."""
    from envs import make_batched, share_physics, step_tasks
    from envs.batched import step_each
    from envs.mujoco_batch import RowStepper, batch_module

    k, horizon = 3, 12

    def build():
        return [make_batched(f"rlmaml/{family}-v0", k, task=t, stepper=stepper, max_episode_steps=horizon)
                for t in tasks]

    fused, each = build(), build()
    assert type(fused[0]) is MujocoBatchedEnv  # step_tasks takes its step_many
    can_share = share and stepper == "auto" and batch_module() is not None
    if share:
        assert share_physics(fused) == can_share
        assert all(isinstance(e._sim, RowStepper) for e in fused) == can_share
    rng = np.random.default_rng(3)
    n = fused[0].single_action_space.shape[0]
    for t in range(30):
        if t % 15 == 0:
            for i, (f, e) in enumerate(zip(fused, each, strict=True)):
                np.testing.assert_array_equal(f.reset(10 * t + i), e.reset(10 * t + i))
        if share and t == 7:
            assert share_physics(fused) == can_share  # a new batch mid-episode takes over the state
        actions = rng.uniform(-1.2, 1.2, size=(len(tasks), k, n))
        active = rng.random((len(tasks), k)) < 0.8
        some = slice(None) if t % 5 else slice(1, None)  # every 5th step, all envs but the first
        fused_step = step_each if t % 7 == 3 else step_tasks  # sometimes each env's own step, on its rows
        got = fused_step(fused[some], actions[some], active[some])
        want = step_each(each[some], actions[some], active[some])
        for name, g, w in zip(("obs", "reward", "terminated", "truncated"), got, want, strict=True):
            np.testing.assert_array_equal(g, w, err_msg=f"{name} at step {t}")
    assert not np.array_equal(got[1][0], got[1][1])  # the tasks' rewards differ: each env kept its own task
