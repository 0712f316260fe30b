"""``rl.frame_skip``: the MuJoCo steps per action of every env the config makes (the workers', the config check's and
the video's), 0 keeping the env's own (HalfCheetah: Gymnasium v5's 5; Ant: rllab's 1)."""

from __future__ import annotations

import pytest

from rlmaml.cli import main
from rlmaml.config import build_config
from rlmaml.rl.build import worker_spec
from rlmaml.rl.sampling.worker import RolloutWorker, config_env_kwargs


def test_frame_skip_0_passes_nothing_to_the_env() -> None:
    assert config_env_kwargs(build_config("halfcheetah-dir")) == {}
    assert config_env_kwargs(build_config("halfcheetah-dir", ["rl.frame_skip=1"])) == {"frame_skip": 1}


@pytest.mark.mujoco
@pytest.mark.parametrize(("preset", "overrides", "frame_skip"), [
    ("halfcheetah-dir", [], 5), ("halfcheetah-dir", ["rl.frame_skip=1"], 1),
    ("ant-vel", [], 1), ("ant-vel", ["rl.frame_skip=5"], 5),
])
def test_a_rollout_workers_envs_step_at_the_configured_frame_skip(preset, overrides, frame_skip) -> None:
    pytest.importorskip("mujoco")
    cfg = build_config(preset, ["rl.trajectories=2", *overrides])
    worker = RolloutWorker(worker_spec(cfg))
    env = worker._env(cfg.rl.trajectories)
    assert env.frame_skip == frame_skip
    assert env.dt == pytest.approx(0.01 * frame_skip)


def test_frame_skip_on_an_env_without_one_is_a_one_line_error(tmp_path, capsys) -> None:
    code = main(["train", "nav2d", "rl.frame_skip=2", "run.iterations=1", "--backend", "local",
                 "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "rl.frame_skip=2: rlmaml/Navigation2D-v0 takes no frame_skip" in err
    assert "Traceback" not in err and not any(tmp_path.iterdir())  # nothing written


def test_a_negative_frame_skip_is_refused(tmp_path, capsys) -> None:
    assert main(["train", "halfcheetah-dir", "rl.frame_skip=-1", "--runs-dir", str(tmp_path)]) == 2
    assert "rl.frame_skip must be >= 1, or 0 for the env's own, got -1" in capsys.readouterr().err
