"""Fault-injecting Navigation2D envs for the Ray tests (imported by Ray workers as ``rl.env_module``).

Ray workers import this module by name, so the tests directory must be on their ``PYTHONPATH``: the
``ray_session`` fixture (tests/conftest.py) arranges that for the shared instance, and the two-node test
passes it to its cluster's nodes.

``rlmaml_test/FaultyNav-v0`` is Navigation2D (same dynamics, same data) with knobs passed as env kwargs
(``WorkerSpec.env_kwargs``):

* ``delay``: seconds to sleep per batched step (makes a task slow enough to be hit mid-flight);
* ``hang_seed`` / ``hang_s`` / ``marker``: on ``reset(hang_seed)``, if the file ``marker`` does not exist,
  create it and sleep ``hang_s`` (the first attempt hangs, a retry does not); ``marker="always"`` hangs
  every time;
* ``raise_seed``: on a step after ``reset(raise_seed)``, raise ``ValueError``;
* ``plan``: a JSON file holding any of the knobs above, re-read at every reset (so one set of actors can
  serve several tests: each writes its own plan).

``rlmaml_test/SlowNav-v0`` is the same with ``delay=0.01`` by default (usable from a config, which has no
env kwargs).
"""

from __future__ import annotations

import json
import os
import time

import gymnasium

import envs
from envs.batched import BATCHED_FORMS
from envs.navigation import BatchedNavigation2D
from envs.tasks import GoalPositionDistribution

FAULTY_ID = "rlmaml_test/FaultyNav-v0"
SLOW_ID = "rlmaml_test/SlowNav-v0"


class FaultyBatchedNav(BatchedNavigation2D):
    default_delay = 0.0

    def __init__(self, env_id: str, num_envs: int, task: dict | None = None, *, delay: float | None = None,
                 hang_seed: int = -1, hang_s: float = 0.0, marker: str = "", raise_seed: int = -1, plan: str = "",
                 **env_kwargs):
        super().__init__(env_id, num_envs, task, **env_kwargs)
        self._knobs = {"delay": self.default_delay if delay is None else float(delay), "hang_seed": int(hang_seed),
                       "hang_s": float(hang_s), "marker": marker, "raise_seed": int(raise_seed)}
        self.plan = plan
        self._set(self._knobs)
        self._seed = None

    def _set(self, knobs: dict) -> None:
        self.delay, self.hang_seed, self.hang_s = float(knobs["delay"]), int(knobs["hang_seed"]), float(knobs["hang_s"])
        self.marker, self.raise_seed = str(knobs["marker"]), int(knobs["raise_seed"])

    def reset(self, seed: int):
        if self.plan:
            with open(self.plan) as f:
                self._set({**self._knobs, **json.load(f)})
        self._seed = int(seed)
        if self._seed == self.hang_seed and self.marker == "always":
            time.sleep(self.hang_s)
        elif self._seed == self.hang_seed and self.marker and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(self.hang_s)
        return super().reset(seed)

    def step(self, actions, active=None):
        if self.delay:
            time.sleep(self.delay)
        if self._seed == self.raise_seed:
            raise ValueError(f"injected env failure at reset seed {self._seed}")
        return super().step(actions, active)


class SlowBatchedNav(FaultyBatchedNav):
    default_delay = 0.01


for _id, _form in ((FAULTY_ID, FaultyBatchedNav), (SLOW_ID, SlowBatchedNav)):
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point="envs.navigation:Navigation2DEnv", max_episode_steps=100,
                           kwargs={"oracle": False})
    BATCHED_FORMS[_id] = _form
    envs.register_task_distribution(_id, GoalPositionDistribution(-0.5, 0.5, 2))
