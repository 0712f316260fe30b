"""``rlmaml eval --video``: MP4s of a MuJoCo policy before and after test-time adaptation.

Rendering uses Gymnasium's ``RecordVideo`` wrapper (``render_mode="rgb_array"``; it needs moviepy, which the
``video`` extra installs) and MuJoCo's off-screen OpenGL: ``MUJOCO_GL=egl`` when a GPU is visible, ``osmesa``
otherwise, falling back to the other one when a one-frame probe (run in a subprocess, so a failing backend
cannot poison this process's OpenGL state) fails. A ``MUJOCO_GL`` set by the user is respected. When nothing
can render, :func:`prepare_video` raises :class:`ConfigError` with one line saying what to install.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlmaml.config import Config, ConfigError

INSTALL_VIDEO = "pip install 'rlmaml[video]'"
INSTALL_GL = ("install an off-screen OpenGL for MuJoCo: EGL (GPU driver, or apt-get install libegl1) with "
              "MUJOCO_GL=egl, or OSMesa (apt-get install libosmesa6) with MUJOCO_GL=osmesa")
VIDEO_SIZE = (480, 320)

_PROBE = """
import sys, gymnasium, envs
env = gymnasium.make(sys.argv[1], render_mode="rgb_array", width=32, height=32)
env.reset(seed=0)
frame = env.render()
assert frame is not None and frame.shape == (32, 32, 3), getattr(frame, "shape", frame)
env.close()
"""

_chosen: dict[str, str] = {}


def _has_gpu() -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken driver counts as no GPU
        return False


def probe_backend(backend: str, env_id: str, timeout_s: float = 120.0) -> str | None:
    """None if MuJoCo renders a frame of ``env_id`` with ``MUJOCO_GL=backend`` (in a subprocess), else why not."""
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, env_id], env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"rendering with MUJOCO_GL={backend} timed out"
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return f"MUJOCO_GL={backend}: {lines[-1] if lines else f'exit code {proc.returncode}'}"


def choose_gl_backend(env_id: str) -> str:
    """The MuJoCo OpenGL backend to use (see the module docstring); ConfigError when none renders."""
    if env_id in _chosen:
        return _chosen[env_id]
    user = os.environ.get("MUJOCO_GL")
    candidates = [user] if user else (["egl", "osmesa"] if _has_gpu() else ["osmesa", "egl"])
    errors = []
    for backend in candidates:
        error = probe_backend(backend, env_id)
        if error is None:
            _chosen[env_id] = backend
            return backend
        errors.append(error)
    raise ConfigError(f"--video: MuJoCo cannot render ({'; '.join(errors)}); {INSTALL_GL}")


def _renders_rgb(env_id: str) -> bool:
    """Whether the env class behind ``env_id`` declares the ``rgb_array`` render mode."""
    import gymnasium
    from gymnasium.envs.registration import load_env_creator

    import envs  # noqa: F401  (registers the rlmaml/ ids)

    spec = gymnasium.spec(env_id)
    creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
    return "rgb_array" in getattr(creator, "metadata", {}).get("render_modes", [])


def prepare_video(cfg: Config) -> str:
    """Check that a video can be recorded for ``cfg.rl.env`` and select the OpenGL backend; returns it.

    Raises :class:`ConfigError` (one line: what to install) when moviepy/imageio are missing, the env is not a
    MuJoCo env, or MuJoCo cannot render off-screen.
    """
    missing = []
    for module in ("moviepy", "imageio"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ConfigError(f"--video needs {' and '.join(missing)}: {INSTALL_VIDEO}")
    try:
        renders = _renders_rgb(cfg.rl.env)
    except Exception as exc:  # noqa: BLE001 - mujoco's import itself fails when MUJOCO_GL names a missing library
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--video: cannot load {cfg.rl.env} with MUJOCO_GL={os.environ.get('MUJOCO_GL', 'unset')} "
                          f"({type(exc).__name__}: {first}); {INSTALL_GL}") from None
    if not renders:
        raise ConfigError(f"--video records MuJoCo envs (HalfCheetah, Ant); {cfg.rl.env} has no renderer "
                          "(2D navigation trajectories are drawn in nav_trajectories.png instead)")
    backend = choose_gl_backend(cfg.rl.env)
    os.environ["MUJOCO_GL"] = backend
    os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


def adapted_params(cfg: Config, policy: torch.nn.Module, weights: dict[str, np.ndarray],
                   episodes: Sequence[dict[str, np.ndarray]], lrs: Sequence[float]) -> list[dict[str, torch.Tensor]]:
    """[θ, φ₁, ..., φ_N]: the worker's test-time steps recomputed from its episode batches (first order)."""
    from rlmaml.rl.adaptation import adaptation_path
    from rlmaml.rl.objectives import inner_loss
    from rlmaml.rl.policies import params_from_numpy

    loss = inner_loss(policy, cfg.rl.inner_loss)  # type: ignore[arg-type]
    return adaptation_path(loss, params_from_numpy(weights), episodes, lrs, cfg.rl.gamma, cfg.rl.gae_lambda)


def record_episode(cfg: Config, policy: torch.nn.Module, params: dict[str, torch.Tensor], task: dict[str, Any],
                   out_dir: Path, name: str) -> Path:
    """One deterministic (mean-action) episode of ``task`` recorded with ``RecordVideo``; returns the MP4."""
    import gymnasium
    from gymnasium.wrappers import RecordVideo

    import envs  # noqa: F401
    from rlmaml.rl.policies import act, action_rescaler
    from rlmaml.rl.sampling.worker import config_env_kwargs

    target = out_dir / f"{name}-episode-0.mp4"
    target.unlink(missing_ok=True)
    env = gymnasium.make(cfg.rl.env, render_mode="rgb_array", task=task, width=VIDEO_SIZE[0], height=VIDEO_SIZE[1],
                         max_episode_steps=cfg.rl.horizon, disable_env_checker=True, **config_env_kwargs(cfg))
    with warnings.catch_warnings():  # the folder is ours; RecordVideo warns whenever it already exists
        warnings.filterwarnings("ignore", message=".*Overwriting existing videos.*")
        env = RecordVideo(env, str(out_dir), episode_trigger=lambda _: True, name_prefix=name, disable_logger=True)
    generator = torch.Generator().manual_seed(cfg.eval.seed)
    rescale = action_rescaler(env.action_space) if cfg.rl.normalize_actions else None  # once, not per frame
    try:
        obs, _ = env.reset(seed=cfg.eval.seed)
        for _ in range(cfg.rl.horizon):
            action = act(policy, params, np.asarray(obs)[None], generator, deterministic=True)[0]
            if rescale is not None:
                action = rescale(action[None])[0]
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
    finally:
        env.close()
    if not target.is_file():
        raise RuntimeError(f"RecordVideo wrote no {target.name}")
    return target


def record_adaptation_videos(cfg: Config, weights: dict[str, np.ndarray], episodes: Sequence[dict[str, np.ndarray]],
                             lrs: Sequence[float], task: dict[str, Any], out_dir: Path) -> list[Path]:
    """MP4s of one test task: the policy before adaptation and after the last test-time step."""
    import gymnasium

    from rlmaml.rl.policies import make_policy

    out_dir.mkdir(parents=True, exist_ok=True)
    backend = os.environ.get("MUJOCO_GL", "")
    try:
        probe = gymnasium.make(cfg.rl.env, disable_env_checker=True)
        r = cfg.rl
        policy = make_policy(probe.observation_space, probe.action_space, tuple(r.hidden), r.init_std, r.min_std)
        probe.close()
        path = adapted_params(cfg, policy, weights, episodes, lrs)
        steps = len(path) - 1
        videos = [record_episode(cfg, policy, path[0], task, out_dir, "before-adaptation")]
        if steps:
            videos.append(record_episode(cfg, policy, path[-1], task, out_dir,
                                         f"after-{steps}-step{'s' if steps > 1 else ''}"))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any rendering failure becomes one actionable line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--video: recording failed with MUJOCO_GL={backend or 'unset'} "
                          f"({type(exc).__name__}: {first}); {INSTALL_GL}; and {INSTALL_VIDEO}") from None
    return videos
