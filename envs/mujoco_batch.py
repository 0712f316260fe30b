"""Physics steppers of :class:`envs._mujoco.MujocoBatchedEnv`: advance K simulations of one model.

Two interchangeable steppers, chosen with ``stepper=`` (:func:`make_stepper`):

* ``"loop"`` (:class:`LoopStepper`): ``mujoco.mj_step(model, data, nstep=frame_skip)`` on each env's
  own ``MjData`` in a Python loop, from a thread pool when ``num_threads > 1``.  Any MuJoCo.
* ``"batch"`` (:class:`BatchStepper`): the K states live in one ``mujoco.batch.Batch``
  (MuJoCo >= 3.17), advanced by one call, in C, on ``num_threads`` threads with the GIL released.
* ``"auto"`` (the default): ``"batch"`` where ``mujoco.batch`` exists, else ``"loop"``.

Both give bit-identical ``qpos`` / ``qvel`` / ``cfrc_ext`` / warning counters: the batch API runs the
same ``mj_step`` on a copy of the same model, bit-identical to a loop over one ``MjData`` per
simulation at any thread count (``tests/test_envs_mujoco_batch.py`` checks whole trajectories), so
the env's vectorised kernels see the same arrays whichever stepper runs.

State ownership: after ``reset()`` the state is in each env's ``MjData`` (drawn there by the env's
own reset with its ``np_random``); the next ``advance`` or ``qpos`` copies it into the batch, so that
writes to ``envs[i].data`` between a reset and the first step still count, as they do with the loop.
From then on the batch owns it; ``envs[i].data`` is not kept current, except where ``cfrc_ext`` is
needed (Ant): ``mj_rnePostConstraint`` is not part of a batch step, so each stepped simulation's
whole ``MjData`` is copied back into ``envs[i].data`` (``persistent=True`` keeps it per simulation)
and ``mj_rnePostConstraint`` runs there, on exactly the data the loop would run it on.
"""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, Protocol

import mujoco
import numpy as np

STEPPERS = ("auto", "batch", "loop")
_STATE = mujoco.mjtState.mjSTATE_INTEGRATION
_STAGE_NONE = int(mujoco.mjtStage.mjSTAGE_NONE)  # derived fields as mj_step leaves them


class Stepper(Protocol):
    """What :class:`envs._mujoco.MujocoBatchedEnv` needs from the physics of its K envs."""

    name: str

    def reset(self) -> None:
        """The envs were just reset: their ``MjData`` hold the state again."""

    def qpos(self) -> np.ndarray:
        """``[K, nq]`` copy of the current positions."""

    def advance(self, run: np.ndarray, ctrl: np.ndarray) -> None:
        """Set ``ctrl[i]`` and step ``frame_skip`` substeps for each ``i`` where ``run`` is True."""

    def state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """Copies of ``qpos [K, nq]``, ``qvel [K, nv]``, ``cfrc_ext [K, nbody, 6]`` (None when not
        needed) and the warning counts ``[K, mjNWARNING]``."""

    def flush(self) -> None:
        """Write any state the stepper holds back into the envs' ``MjData``."""

    def close(self) -> None:
        """Release threads."""


def batch_module() -> ModuleType | None:
    """``mujoco.batch`` where this MuJoCo has it (>= 3.17), else None."""
    try:
        return importlib.import_module("mujoco.batch")
    except ImportError:
        return None


def make_stepper(kind: str, envs: list[Any], needs_cfrc: bool, num_threads: int) -> Stepper:
    """The ``kind`` stepper (one of :data:`STEPPERS`) over ``envs`` (unwrapped MuJoCo envs of one
    model); ``"auto"`` is ``"batch"`` when ``mujoco.batch`` is available, else ``"loop"``."""
    if kind not in STEPPERS:
        raise ValueError(f"stepper must be one of {STEPPERS}, got {kind!r}")
    module = None if kind == "loop" else batch_module()
    if module is not None:
        return BatchStepper(module, envs, needs_cfrc, num_threads)
    if kind == "batch":
        raise ValueError(f"stepper='batch' needs mujoco.batch (MuJoCo >= 3.17); MuJoCo is {mujoco.__version__}")
    return LoopStepper(envs, needs_cfrc, num_threads)


class LoopStepper:
    """``mj_step`` (+ ``mj_rnePostConstraint`` where ``cfrc_ext`` is needed) on each env's own
    ``MjData``, from a thread pool when ``num_threads > 1`` (MuJoCo releases the GIL)."""

    name = "loop"

    def __init__(self, envs: list[Any], needs_cfrc: bool, num_threads: int):
        self._models = [e.model for e in envs]
        self._datas = [e.data for e in envs]
        # live views of the fields read and written each step (made once: each access builds a view)
        self._qpos = [d.qpos for d in self._datas]
        self._qvel = [d.qvel for d in self._datas]
        self._ctrl = [d.ctrl for d in self._datas]
        self._cfrc = [d.cfrc_ext for d in self._datas] if needs_cfrc else None
        self._warn = [d.warning.number for d in self._datas]
        self._frame_skip = envs[0].frame_skip
        self._num_threads = num_threads
        self._pool = ThreadPoolExecutor(num_threads) if num_threads > 1 else None

    def reset(self) -> None:
        pass

    def qpos(self) -> np.ndarray:
        return np.array(self._qpos)

    def _advance(self, idx: list[int], ctrl: np.ndarray) -> None:
        """Step the envs ``idx`` one after another."""
        step, rne = mujoco.mj_step, mujoco.mj_rnePostConstraint
        models, datas, ctrl_views, fs = self._models, self._datas, self._ctrl, self._frame_skip
        for i in idx:
            ctrl_views[i][:] = ctrl[i]
            step(models[i], datas[i], fs)
            if self._cfrc is not None:
                rne(models[i], datas[i])

    def advance(self, run: np.ndarray, ctrl: np.ndarray) -> None:
        idx = np.flatnonzero(run).tolist()
        if self._pool is None or len(idx) < 2:
            self._advance(idx, ctrl)
        else:
            chunks = [idx[j :: self._num_threads] for j in range(self._num_threads)]
            list(self._pool.map(lambda c: self._advance(c, ctrl), chunks))

    def state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        cfrc = np.array(self._cfrc) if self._cfrc is not None else None
        return np.array(self._qpos), np.array(self._qvel), cfrc, np.array(self._warn)

    def flush(self) -> None:
        pass  # the state is always in the envs' MjData

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


class BatchStepper:
    """The K states in one persistent ``mujoco.batch.Batch`` of ``envs[0].model`` (a copy, taken
    here), stepped by one call on ``num_threads`` threads; see the module docstring for who owns
    the state when."""

    name = "batch"

    def __init__(self, module: ModuleType, envs: list[Any], needs_cfrc: bool, num_threads: int):
        self._models = [e.model for e in envs]
        self._datas = [e.data for e in envs]
        self._cfrc = [d.cfrc_ext for d in self._datas] if needs_cfrc else None  # live views
        self._frame_skip = envs[0].frame_skip
        b = module.Batch(envs[0].model, nsim=len(envs), nthread=num_threads, persistent=needs_cfrc)
        self._batch = b
        self._rows = b.state  # [K, nstate] live integration states
        self._warning = b.warning  # [K, mjNWARNING, 2] live (lastinfo, number)
        self._qpos, self._qvel, self._ctrl = b.bind("qpos"), b.bind("qvel"), b.bind("ctrl")
        self._pending = np.ones(len(envs), dtype=bool)

    def reset(self) -> None:
        self._pending[:] = True

    def _load(self) -> None:
        """Copy the state (and warning counters) of the envs reset since the last step into the batch."""
        if not self._pending.any():
            return
        for i in np.flatnonzero(self._pending):
            d = self._datas[i]
            mujoco.mj_getState(self._models[i], d, self._rows[i], _STATE)
            self._warning[i, :, 0] = d.warning.lastinfo
            self._warning[i, :, 1] = d.warning.number
        self._pending[:] = False

    def qpos(self) -> np.ndarray:
        self._load()
        return self._qpos.copy()

    def advance(self, run: np.ndarray, ctrl: np.ndarray) -> None:
        self._load()
        if run.all():
            self._ctrl[:] = ctrl
            ids = None
        elif run.any():
            ids = np.flatnonzero(run)
            self._ctrl[ids] = ctrl[ids]
        else:
            return
        self._batch.step(ids, self._frame_skip, _STAGE_NONE)
        if self._cfrc is not None:
            b, rne = self._batch, mujoco.mj_rnePostConstraint
            for i in range(len(self._datas)) if ids is None else ids.tolist():
                b.get_data(i, self._datas[i])
                rne(self._models[i], self._datas[i])

    def state(self, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        cfrc = np.array(self._cfrc[rows]) if self._cfrc is not None else None
        return self._qpos[rows].copy(), self._qvel[rows].copy(), cfrc, self._warning[rows, :, 1].copy()

    def flush(self) -> None:
        """Write the state the batch owns back into the envs' ``MjData`` (before another stepper takes them)."""
        for i in np.flatnonzero(~self._pending):
            d = self._datas[i]
            mujoco.mj_setState(self._models[i], d, self._rows[i], _STATE)
            d.warning.lastinfo[:] = self._warning[i, :, 0]
            d.warning.number[:] = self._warning[i, :, 1]
        self._pending[:] = True

    def close(self) -> None:
        pass  # the batch's threads sleep between calls and end with the batch


class RowStepper:
    """The stepper of one env whose K simulations are rows ``rows`` of a :class:`BatchStepper` shared by
    several envs (:func:`share_batch`), so that stepping them all is one ``mujoco.batch`` call
    (:meth:`envs._mujoco.MujocoBatchedEnv.step_many`); stepped alone, it advances only its rows."""

    name = "batch"

    def __init__(self, shared: BatchStepper, rows: slice, nu: int):
        self.shared, self.rows, self._nu = shared, rows, nu

    def reset(self) -> None:
        self.shared._pending[self.rows] = True

    def qpos(self) -> np.ndarray:
        self.shared._load()
        return self.shared._qpos[self.rows].copy()

    def advance(self, run: np.ndarray, ctrl: np.ndarray) -> None:
        advance_together([self], [run], [ctrl])

    def state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        return self.shared.state(self.rows)

    def flush(self) -> None:
        self.shared.flush()

    def close(self) -> None:
        pass  # the shared batch ends with the last env that holds it


def advance_together(steppers: list[RowStepper], runs: list[np.ndarray], ctrls: list[np.ndarray]) -> None:
    """Advance the rows of several :class:`RowStepper` of one shared batch in one ``mujoco.batch`` call
    (``runs[i]`` / ``ctrls[i]``: stepper i's which-to-step mask and controls)."""
    shared = steppers[0].shared
    n = shared._qpos.shape[0]
    run, ctrl = np.zeros(n, dtype=bool), np.zeros((n, steppers[0]._nu))
    for s, r, c in zip(steppers, runs, ctrls, strict=True):
        run[s.rows], ctrl[s.rows] = r, c
    shared.advance(run, ctrl)


def share_batch(module: ModuleType, steppers: list[Any], envs: list[list[Any]], needs_cfrc: bool,
                num_threads: int) -> list[RowStepper]:
    """One :class:`BatchStepper` over the simulations of several envs (``envs[i]``: env i's K unwrapped
    envs), replacing their ``steppers``: each gets a :class:`RowStepper` of its rows. The state each stepper
    owned is written back to the envs' ``MjData`` first, so the trajectories go on unchanged."""
    for s in steppers:
        s.flush()
    flat = [e for group in envs for e in group]
    shared = BatchStepper(module, flat, needs_cfrc, num_threads)
    out, start = [], 0
    for group in envs:
        out.append(RowStepper(shared, slice(start, start + len(group)), flat[0].model.nu))
        start += len(group)
    return out
