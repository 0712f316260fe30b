"""Machinery shared by the MuJoCo task families (HalfCheetah*, Ant*).

Each family is a subclass of :class:`MujocoTaskMixin` and a Gymnasium v5 env
(``HalfCheetahEnv`` / ``AntEnv``): the v5 model (xml), frame skip (5), reset noise and
observation layout are reused; the reward, termination, action scaling and the
instability handling are ours.  Observations and rewards are computed by vectorised
class-level kernels over ``[K, ...]`` arrays taken directly from ``data.qpos / qvel /
cfrc_ext``; the single env uses them with K = 1 and :class:`MujocoBatchedEnv` with K
instances, so both produce identical trajectories.

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
from .mujoco_batch import make_stepper

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
        return self._obs_batch(d.qpos[None], d.qvel[None], cfrc, self._task_vec, self._oracle)[0]

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
            self._task_vec,
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
        self._task_vec = e0._task_vec

    # ----- task ----------------------------------------------------------------------------
    def set_task(self, task: dict) -> None:
        task = self.envs[0].validate_task(task)
        for e in self.envs:
            e.set_task(task)
        self._task = self.envs[0].get_task()
        self._task_vec = self.envs[0]._task_vec

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
        where = f"{self.env_id} batched step"
        k = self.num_envs
        act = check_active(active, k, where)
        a = check_actions(actions, act, (self._nu,), -1.0, 1.0, where)
        run = act & ~self._dead
        ctrl = a if self._ctrl_identity else self._ctrl_center + a * self._ctrl_half

        x_before = self._sim.qpos()[:, : self.cls.x_dims]
        self._sim.advance(run, ctrl)
        qpos, qvel, cfrc, warn = self._sim.state()
        unstable = run & (warn[:, _BAD_WARNINGS].sum(axis=1) > self._warn0)
        obs, reward, terminated, info = self.cls._kernel(
            self._task_vec,
            self.envs[0].oracle,
            self.dt,
            x_before,
            qpos,
            qvel,
            cfrc,
            a,
            unstable,
            self._obs,
        )
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
