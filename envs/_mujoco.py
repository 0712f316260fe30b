"""Machinery shared by the MuJoCo task families (HalfCheetah*, Ant*).

Each family is a subclass of :class:`MujocoTaskMixin` and a Gymnasium v5 env
(``HalfCheetahEnv`` / ``AntEnv``): the v5 model (xml), reset noise and observation layout
are reused; the frame skip is v5's 5 for HalfCheetah and rllab's 1 for Ant (``envs/ant.py``
says why); the reward, termination, action scaling and the instability handling are ours.
Observations and rewards are computed by vectorised class-level kernels over ``[K, ...]``
arrays taken directly from ``data.qpos / qvel / cfrc_ext``; the single env uses them with
K = 1 and :class:`MujocoBatchedEnv` with K instances, so both produce identical trajectories.

Instability: after each step the MuJoCo warning counters for bad qpos / qvel / qacc / ctrl
are compared with their value at reset (MuJoCo silently resets the simulation when it
detects a blow-up, so the counters are the reliable signal) and qpos / qvel / the
observation / the reward are checked to be finite.  An unstable step ends the trajectory
(``terminated=True``, ``info["unstable"]=True``), returns the previous observation and a
reward of minus the control cost (always finite); further steps without a reset repeat that
observation with reward 0.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import gymnasium
import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.utils import EzPickle

from .base import TaskEnvMixin, check_action, check_actions, check_active, check_finite, copy_task
from .mujoco_batch import RowStepper, advance_together, batch_module, make_stepper, share_batch

_BAD_WARNINGS = np.array(
    [
        int(mujoco.mjtWarning.mjWARN_BADQPOS),
        int(mujoco.mjtWarning.mjWARN_BADQVEL),
        int(mujoco.mjtWarning.mjWARN_BADQACC),
        int(mujoco.mjtWarning.mjWARN_BADCTRL),
    ]
)


_log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_model_compile():
    """While compiling a v5 xml: drop MuJoCo's deprecation notice for ``settotalmass`` (used by
    Gymnasium's half_cheetah.xml; harmless) and route other compiler warnings to ``logging``
    instead of MuJoCo's default (stderr + ``MUJOCO_LOG.TXT`` in the working directory)."""
    previous = mujoco.get_mju_user_warning()

    def handler(msg: str) -> None:
        if "settotalmass" not in msg:
            _log.warning("MuJoCo: %s", msg)

    mujoco.set_mju_user_warning(handler)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


def _warning_count(data: Any) -> int:
    return int(data.warning.number[_BAD_WARNINGS].sum())


class MujocoTaskMixin(TaskEnvMixin):
    """Task-conditioned MuJoCo env on top of a Gymnasium v5 env class.

    Subclasses define ``x_dims`` (how many leading qpos entries the reward needs before the
    step), ``needs_cfrc`` (whether ``cfrc_ext`` must be computed after each step),
    ``ctrl_cost_weight``, ``_task_vector``, ``_obs_batch`` and ``_reward_batch``.

    The kernels take the task as rows, ``task_vec [K, task_dim]`` (one per simulation), so one call can
    serve simulations of different tasks (:meth:`MujocoBatchedEnv.step_many`).
    """

    x_dims: int = 1
    needs_cfrc: bool = False
    ctrl_cost_weight: float = 0.0

    def _setup_task_env(self, task: dict | None, oracle: bool) -> None:
        self._init_task(task, oracle)
        model = self.model
        lo = model.actuator_ctrlrange[:, 0].astype(np.float64)
        hi = model.actuator_ctrlrange[:, 1].astype(np.float64)
        limited = np.asarray(model.actuator_ctrllimited, dtype=bool)
        self._ctrl_center = np.where(limited, 0.5 * (lo + hi), 0.0)
        self._ctrl_half = np.where(limited, 0.5 * (hi - lo), 1.0)
        self._ctrl_identity = bool(np.all(self._ctrl_center == 0.0) and np.all(self._ctrl_half == 1.0))
        nu = model.nu
        self.action_space = spaces.Box(-1.0, 1.0, shape=(nu,), dtype=np.float32)
        obs_dim = self._get_obs().shape[0]
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float64)
        self._unstable = False
        self._warn0 = 0
        self._last_obs = self._get_obs()

    # ----- vectorised kernels (overridden per family) ------------------------------------
    @classmethod
    def _obs_batch(cls, qpos, qvel, cfrc, task_vec, oracle) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def _reward_batch(cls, task_vec, x_before, qpos, qvel, cfrc, a, dt):  # pragma: no cover
        """-> (reward [K], terminated [K] bool, info: dict of [K] arrays whose ``reward_*``
        entries sum to the reward)."""
        raise NotImplementedError

    @classmethod
    def _kernel(cls, task_vec, oracle, dt, x_before, qpos, qvel, cfrc, a, unstable, prev_obs):
        """Observation, reward, termination and info for K envs after a physics step."""
        finite = np.isfinite(qpos).all(axis=1) & np.isfinite(qvel).all(axis=1)
        if cfrc is not None:
            finite &= np.isfinite(cfrc).reshape(cfrc.shape[0], -1).all(axis=1)
        unstable = unstable | ~finite
        if unstable.any():  # keep the arithmetic below free of NaN / inf
            u = unstable[:, None]
            qpos = np.where(u, 0.0, qpos)
            qvel = np.where(u, 0.0, qvel)
            x_before = np.where(u, 0.0, x_before)
            if cfrc is not None:
                cfrc = np.where(unstable[:, None, None], 0.0, cfrc)
        obs = cls._obs_batch(qpos, qvel, cfrc, task_vec, oracle)
        reward, terminated, info = cls._reward_batch(task_vec, x_before, qpos, qvel, cfrc, a, dt)
        unstable = unstable | ~(np.isfinite(obs).all(axis=1) & np.isfinite(reward))
        if unstable.any():
            ctrl = -cls.ctrl_cost_weight * np.sum(np.square(a), axis=1)
            obs = np.where(unstable[:, None], prev_obs, obs)
            reward = np.where(unstable, ctrl, reward)
            terminated = terminated | unstable
            info = {k: np.where(unstable, 0.0, v) for k, v in info.items()}
            info["reward_ctrl"] = np.where(unstable, ctrl, info["reward_ctrl"])
        info["unstable"] = unstable
        return obs, reward, terminated, info

    # ----- gymnasium API -------------------------------------------------------------------
    def _get_obs(self):
        d = self.data
        cfrc = d.cfrc_ext[None] if self.needs_cfrc else None
        return self._obs_batch(d.qpos[None], d.qvel[None], cfrc, self._task_vec[None], self._oracle)[0]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        task = self._task_from_options(options)  # validate before touching any state
        obs, info = super().reset(seed=seed)
        if task is not None:
            self.set_task(task)
            obs = self._get_obs()
        self._unstable = False
        self._warn0 = _warning_count(self.data)
        self._last_obs = obs
        return obs, info

    def _zero_info(self) -> dict:
        return {k: 0.0 for k in self._info_keys} | {"unstable": True}

    def step(self, action):
        a = check_action(action, (self.model.nu,), -1.0, 1.0, f"{type(self).__name__}.step")
        if self._unstable:
            return self._last_obs.copy(), 0.0, True, False, self._zero_info()
        d = self.data
        x_before = d.qpos[None, : self.x_dims].copy()
        d.ctrl[:] = a if self._ctrl_identity else self._ctrl_center + a * self._ctrl_half
        mujoco.mj_step(self.model, d, nstep=self.frame_skip)
        if self.needs_cfrc:
            mujoco.mj_rnePostConstraint(self.model, d)
        unstable = np.array([_warning_count(d) > self._warn0])
        cfrc = d.cfrc_ext[None] if self.needs_cfrc else None
        obs, reward, terminated, info = self._kernel(
            self._task_vec[None],
            self._oracle,
            self.dt,
            x_before,
            d.qpos[None],
            d.qvel[None],
            cfrc,
            a[None],
            unstable,
            self._last_obs[None],
        )
        obs = obs[0]
        self._unstable = bool(info["unstable"][0])
        self._last_obs = obs
        info = {k: v[0].item() for k, v in info.items()}
        if self.render_mode == "human":
            self.render()
        return obs.copy(), float(reward[0]), bool(terminated[0]), False, info


def _init_mujoco_env(
    self, v5_cls, task, oracle, render_mode, xml_file, frame_skip, reset_noise_scale, v5_kwargs, render_kwargs
):
    """Build the v5 env then the task layer; EzPickle records *our* constructor arguments."""
    with _quiet_model_compile():
        v5_cls.__init__(
            self,
            xml_file=xml_file,
            frame_skip=frame_skip,
            reset_noise_scale=reset_noise_scale,
            render_mode=render_mode,
            **v5_kwargs,
            **render_kwargs,
        )
    EzPickle.__init__(
        self,
        task=copy_task(task) if task is not None else None,
        oracle=oracle,
        render_mode=render_mode,
        xml_file=xml_file,
        frame_skip=frame_skip,
        reset_noise_scale=reset_noise_scale,
        **render_kwargs,
    )
    self._setup_task_env(task, oracle)


class MujocoBatchedEnv:
    """K instances of one of the suite's MuJoCo envs, stepped without any gymnasium wrapper.

    Each step writes the controls and advances every active instance by ``frame_skip`` substeps
    with the ``stepper`` (:mod:`envs.mujoco_batch`): ``"batch"``, one ``mujoco.batch.Batch`` call
    in C on ``num_threads`` threads (MuJoCo >= 3.17); ``"loop"``, ``mujoco.mj_step`` on each
    instance's ``MjData`` from Python (a thread pool when ``num_threads > 1``); ``"auto"``, the
    first where available.  Then the family's vectorised kernel computes all observations /
    rewards at once.  Results depend on neither the stepper nor ``num_threads``.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        task: dict | None = None,
        num_threads: int = 1,
        stepper: str = "auto",
        **env_kwargs,
    ):
        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        spec = gymnasium.spec(env_id)
        max_steps = env_kwargs.pop("max_episode_steps", None) or spec.max_episode_steps
        self._env_kwargs = dict(env_kwargs)
        self.env_id = env_id
        self.num_envs = k = int(num_envs)
        self.envs = [
            gymnasium.make(env_id, task=task, disable_env_checker=True, **env_kwargs).unwrapped
            for _ in range(k)
        ]
        e0 = self.envs[0]
        if not isinstance(e0, MujocoTaskMixin):
            raise TypeError(f"{env_id} is not one of the suite's MuJoCo envs")
        self.cls = type(e0)
        self.single_observation_space = e0.observation_space
        self.single_action_space = e0.action_space
        self.max_episode_steps = int(max_steps)
        self.frame_skip = e0.frame_skip
        self.dt = e0.dt
        self._ctrl_center = e0._ctrl_center
        self._ctrl_half = e0._ctrl_half
        self._ctrl_identity = e0._ctrl_identity
        self._nu = e0.model.nu
        self._info_keys = e0._info_keys
        self._obs = np.stack([e._get_obs() for e in self.envs])
        self._t = np.zeros(k, dtype=np.int64)
        self._dead = np.zeros(k, dtype=bool)
        self._warn0 = np.zeros(k, dtype=np.int64)
        self.num_threads = max(1, int(num_threads))
        self._stepper_arg = stepper
        self._sim = make_stepper(stepper, self.envs, self.cls.needs_cfrc, self.num_threads)
        self.stepper = self._sim.name  # "batch" or "loop": the one in use
        self._task = e0.get_task()
        self._task_rows = self._rows_of(e0._task_vec)

    # ----- task ----------------------------------------------------------------------------
    def set_task(self, task: dict) -> None:
        task = self.envs[0].validate_task(task)
        for e in self.envs:
            e.set_task(task)
        self._task = self.envs[0].get_task()
        self._task_rows = self._rows_of(self.envs[0]._task_vec)

    def _rows_of(self, task_vec: np.ndarray) -> np.ndarray:
        """The task as the kernels take it: one row per simulation, ``[K, task_dim]`` (a read-only view)."""
        return np.broadcast_to(task_vec, (self.num_envs, task_vec.shape[0]))

    def get_task(self) -> dict:
        return copy_task(self._task)

    # ----- episode -------------------------------------------------------------------------
    def reset(self, seed: int) -> np.ndarray:
        obs = [e.reset(seed=int(seed) + i)[0] for i, e in enumerate(self.envs)]
        self._sim.reset()
        self._obs = np.stack(obs)
        self._t[:] = 0
        self._dead[:] = False
        self._warn0 = np.array([_warning_count(e.data) for e in self.envs], dtype=np.int64)
        return self._obs.copy()

    def step(self, actions: np.ndarray, active: np.ndarray | None = None):
        act, a, run, x_before = self._begin(actions, active)
        self._sim.advance(run, self._ctrl(a))
        qpos, qvel, cfrc, warn = self._sim.state()
        out = self.cls._kernel(self._task_rows, self.envs[0].oracle, self.dt, x_before, qpos, qvel, cfrc, a,
                               self._unstable_now(run, warn), self._obs)
        return self._finish(act, run, *out)

    @classmethod
    def step_many(cls, envs: list[MujocoBatchedEnv], actions: np.ndarray, active: np.ndarray):
        """:func:`envs.batched.step_tasks` for M envs of one family (one task each): the physics of each env,
        then one observation / reward kernel call for all M·K simulations, the task as rows. Each env's
        result is its own ``step(actions[i], active[i])``'s (the kernels are row-wise)."""
        e0 = envs[0]
        if any(e.cls is not e0.cls or e.envs[0].oracle != e0.envs[0].oracle or e.dt != e0.dt
               or e.num_envs != e0.num_envs for e in envs):
            out = [e.step(a, active=act)[:4] for e, a, act in zip(envs, actions, active, strict=True)]
            return tuple(np.stack(x) for x in zip(*out, strict=True))
        begun = [e._begin(a, act) for e, a, act in zip(envs, actions, active, strict=True)]
        sims = [e._sim for e in envs]
        if all(isinstance(s, RowStepper) for s in sims) and len({id(s.shared) for s in sims}) == 1:
            advance_together(sims, [b[2] for b in begun], [e._ctrl(b[1]) for e, b in zip(envs, begun, strict=True)])
        else:
            for e, (_, a, r, _) in zip(envs, begun, strict=True):
                e._sim.advance(r, e._ctrl(a))
        states, unstable = [], []
        for e, (_, _, run, _) in zip(envs, begun, strict=True):
            state = e._sim.state()
            states.append(state)
            unstable.append(e._unstable_now(run, state[3]))
        qpos, qvel = np.concatenate([s[0] for s in states]), np.concatenate([s[1] for s in states])
        cfrc = np.concatenate([s[2] for s in states]) if states[0][2] is not None else None
        obs, reward, terminated, info = e0.cls._kernel(
            np.concatenate([e._task_rows for e in envs]), e0.envs[0].oracle, e0.dt,
            np.concatenate([b[3] for b in begun]), qpos, qvel, cfrc, np.concatenate([b[1] for b in begun]),
            np.concatenate(unstable), np.concatenate([e._obs for e in envs]))
        results = []
        for i, (e, (act, _, run, _)) in enumerate(zip(envs, begun, strict=True)):
            rows = slice(i * e0.num_envs, (i + 1) * e0.num_envs)
            results.append(e._finish(act, run, obs[rows], reward[rows], terminated[rows],
                                     {key: v[rows] for key, v in info.items()})[:4])
        return tuple(np.stack(x) for x in zip(*results, strict=True))

    @classmethod
    def share_physics(cls, envs: list[MujocoBatchedEnv]) -> bool:
        """Put the simulations of M envs of one model into one ``mujoco.batch.Batch``, so that
        :meth:`step_many` advances them all in one call on their threads (the worker's M tasks: one call per
        step instead of M, and threads that each get M·K/T simulations). Trajectories are unchanged. Only for
        envs on the ``batch`` stepper with the same env id, settings and thread count; returns whether it
        shared (False leaves the envs as they were)."""
        e0 = envs[0]
        module = batch_module()
        if (module is None or len(envs) < 2 or any(e.stepper != "batch" for e in envs)
                or len({(type(e), e.env_id, repr(sorted(e._env_kwargs.items())), e.num_threads) for e in envs}) > 1):
            return False
        steppers = share_batch(module, [e._sim for e in envs], [e.envs for e in envs], e0.cls.needs_cfrc,
                               e0.num_threads)
        for e, stepper in zip(envs, steppers, strict=True):
            e._sim = stepper
        return True

    def _begin(self, actions: np.ndarray, active: np.ndarray | None):
        """Checked ``active`` and actions, the simulations to step (``run``: active and not ended unstable)
        and the positions the reward needs from before the step."""
        where = f"{self.env_id} batched step"
        act = check_active(active, self.num_envs, where)
        a = check_actions(actions, act, (self._nu,), -1.0, 1.0, where)
        return act, a, act & ~self._dead, self._sim.qpos()[:, : self.cls.x_dims]

    def _ctrl(self, a: np.ndarray) -> np.ndarray:
        """Actuator controls of actions in [-1, 1]."""
        return a if self._ctrl_identity else self._ctrl_center + a * self._ctrl_half

    def _unstable_now(self, run: np.ndarray, warn: np.ndarray) -> np.ndarray:
        """Which stepped simulations raised a new bad-warning count in this step."""
        return run & (warn[:, _BAD_WARNINGS].sum(axis=1) > self._warn0)

    def _finish(self, act: np.ndarray, run: np.ndarray, obs: np.ndarray, reward: np.ndarray,
                terminated: np.ndarray, info: dict):
        """The step's results from the kernel's, with the episode bookkeeping (inactive and ended simulations,
        time limit, non-finite check)."""
        if not run.all():
            r = run[:, None]
            obs = np.where(r, obs, self._obs)
            reward = np.where(run, reward, 0.0)
            dead_now = act & self._dead  # stepped after an unstable end: like the single env
            terminated = np.where(run, terminated, dead_now)
            info = {key: np.where(run, v, 0.0) for key, v in info.items() if key != "unstable"} | {
                "unstable": np.where(run, info["unstable"], dead_now)
            }
        self._dead |= info["unstable"]
        self._t += act
        truncated = act & (self._t >= self.max_episode_steps)
        check_finite(self.env_id, self._task, obs, reward)
        self._obs = obs
        return obs.copy(), reward, terminated, truncated, info

    def close(self) -> None:
        self._sim.close()
        for e in self.envs:
            e.close()

    def __reduce__(self):
        # Rebuilt from its arguments and current task (simulation state is not carried).
        return (
            _rebuild_batched,
            (
                self.env_id,
                self.num_envs,
                self._task,
                self.num_threads,
                self.max_episode_steps,
                self._env_kwargs,
                self._stepper_arg,
            ),
        )


def _rebuild_batched(env_id, num_envs, task, num_threads, max_episode_steps, env_kwargs, stepper="auto"):
    return MujocoBatchedEnv(
        env_id,
        num_envs,
        task=task,
        num_threads=num_threads,
        stepper=stepper,
        max_episode_steps=max_episode_steps,
        **env_kwargs,
    )
