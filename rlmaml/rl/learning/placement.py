"""Where the learner runs: on the GPU when the cluster has one, else on the CPU in the driver.

* ``run.device=cpu``: in the driver, on the CPU.
* The driver sees CUDA (``torch.cuda.is_available()``): in the driver, on ``cuda``.
* Otherwise, with Ray up and a GPU in the cluster (now, or one the autoscaler can start): in a Ray actor
  with ``num_gpus=1`` that wraps the unchanged :class:`~rlmaml.rl.learning.learner.MetaLearner`, behind
  :class:`RemoteLearner`, a driver-side proxy with the same methods.
* Otherwise in the driver on the CPU (``run.device=cuda`` then is a configuration error).

:func:`learner_placement` is the decision alone, on plain inputs, so it can be tested without a GPU.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlmaml.config import Config, ConfigError
from rlmaml.rl.learning.learner import MetaLearner
from rlmaml.rl.ray_runtime import autoscaler_max_resources, cluster_resources, ray_is_initialized


@dataclass(frozen=True)
class Placement:
    where: str
    """'driver' or 'actor'."""
    device: str
    """'cpu' or 'cuda'."""
    reason: str


def learner_placement(device: str, driver_has_cuda: bool, resources: Mapping[str, float] | None,
                      autoscaler_max: Mapping[str, float] | None = None) -> Placement:
    """Decide where the learner runs.

    ``device`` is ``run.device`` (auto, cpu, cuda); ``resources`` the Ray cluster's total resources now
    (``None`` without Ray); ``autoscaler_max`` the most the autoscaler could provide (``None``/``{}`` without
    an autoscaler).
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"run.device must be auto, cpu or cuda; got {device!r}")
    if device == "cpu":
        return Placement("driver", "cpu", "run.device=cpu")
    if driver_has_cuda:
        return Placement("driver", "cuda", "the driver has a CUDA device")
    gpus_now = float((resources or {}).get("GPU", 0.0))
    gpus_max = float((autoscaler_max or {}).get("GPU", 0.0))
    if resources is not None and max(gpus_now, gpus_max) >= 1:
        why = "the Ray cluster has a GPU" if gpus_now >= 1 else "the Ray autoscaler can start a GPU node"
        return Placement("actor", "cuda", f"{why} and the driver has none")
    if device == "cuda":
        raise ConfigError("run.device=cuda but neither this machine nor the Ray cluster has a GPU; "
                          "use run.device=auto or cpu")
    return Placement("driver", "cpu", "no CUDA device in the driver or the Ray cluster")


def current_placement(cfg: Config) -> Placement:
    """:func:`learner_placement` for this process and the Ray cluster it is connected to (if any)."""
    use_ray = cfg.rl.backend == "ray" and ray_is_initialized()
    return learner_placement(cfg.run.device, torch.cuda.is_available(),
                             cluster_resources() if use_ray else None,
                             autoscaler_max_resources() if use_ray else None)


def make_learner(cfg: Config, observation_space: Any, action_space: Any) -> Any:
    """A ``MetaLearner`` (in the driver) or a :class:`RemoteLearner` (on a GPU actor), per :func:`current_placement`."""
    placement = current_placement(cfg)
    if placement.where == "actor":
        print(f"rlmaml: learner in a Ray actor on a GPU (num_gpus=1): {placement.reason}", file=sys.stderr, flush=True)
        return RemoteLearner(cfg, observation_space, action_space)
    if placement.device == "cpu":
        print("rlmaml: learner on the CPU (no CUDA device)" if cfg.run.device != "cpu"
              else "rlmaml: learner on the CPU (run.device=cpu)", file=sys.stderr, flush=True)
    else:
        print("rlmaml: learner on cuda in the driver", file=sys.stderr, flush=True)
    return MetaLearner(cfg, observation_space, action_space, torch.device(placement.device))


class LearnerActor(MetaLearner):
    """``MetaLearner`` unchanged, plus calls that return what the proxy mirrors (the version)."""

    def step_and_version(self) -> tuple[dict[str, Any], int]:
        metrics = self.step()
        return metrics, self.version

    def load_and_version(self, state: dict[str, Any]) -> int:
        self.load_state_dict(state)
        return self.version

    def get_version(self) -> int:
        return self.version

    def device_name(self) -> str:
        return str(self.device) + (f" ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else "")


class RemoteLearner:
    """Driver-side proxy of a ``MetaLearner`` running in a Ray actor with ``num_gpus=1``.

    ``add_task`` does not wait (the actor runs calls in order, so the per-task work still overlaps sampling);
    an error in it surfaces at the next :meth:`step`. Everything else waits for its answer.
    """

    def __init__(self, cfg: Config, observation_space: Any, action_space: Any, *, device: str = "cuda",
                 num_gpus: float = 1, num_cpus: float = 0) -> None:
        import ray

        # num_cpus=0: the rollout actors may hold every CPU of the GPU node; the learner must still be placed.
        # (device="cpu", num_gpus=0 runs the same proxy without a GPU: the tests use it.)
        cls = ray.remote(LearnerActor).options(num_gpus=num_gpus, num_cpus=num_cpus, max_restarts=0)
        self.cfg = cfg
        self.device = torch.device(device)
        self._actor = cls.remote(cfg, observation_space, action_space, self.device)
        self._pending: list[Any] = []
        self.version = int(ray.get(self._actor.get_version.remote()))

    def device_name(self) -> str:
        import ray

        return str(ray.get(self._actor.device_name.remote()))

    def _flush(self) -> None:
        import ray

        pending, self._pending = self._pending, []
        ray.get(pending)

    def add_task(self, result: dict[str, Any]) -> None:
        self._pending.append(self._actor.add_task.remote(result))

    def discard_tasks(self) -> None:
        import ray

        self._flush()
        ray.get(self._actor.discard_tasks.remote())

    def step(self) -> dict[str, Any]:
        import ray

        self._flush()
        metrics, self.version = ray.get(self._actor.step_and_version.remote())
        return metrics

    def weights(self) -> dict[str, np.ndarray]:
        import ray

        return ray.get(self._actor.weights.remote())

    def state_dict(self) -> dict[str, Any]:
        import ray

        self._flush()
        return ray.get(self._actor.state_dict.remote())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import ray

        self._flush()
        self.version = int(ray.get(self._actor.load_and_version.remote(state)))

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            ray.kill(self._actor, no_restart=True)
