"""Specifications of meta-RL evaluation (``rlmaml eval`` on RL runs, :mod:`rlmaml.rl.evaluation.evaluate`) and its videos."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from PIL import Image

from rlmaml.cli import main
from rlmaml.config import ConfigError, build_config
from rlmaml.rl.evaluation.evaluate import (
    EVAL_STREAM,
    eval_step_sizes,
    initial_params,
    load_goals_file,
    summarise_returns,
)
from rlmaml.runs import RunDir

TINY = ["optim.meta_batch=4", "rl.trajectories=20", "rl.horizon=30", "run.iterations=2"]
EVAL = ["eval.goals=6", "eval.trajectories=20", "eval.rl_steps=3"]


@pytest.fixture(scope="module")
def nav_run(tmp_path_factory):
    """A nav2d run trained for two tiny iterations on the local backend."""
    path = tmp_path_factory.mktemp("runs") / "nav"
    assert main(["train", "nav2d", f"run.dir={path}", *TINY, "--backend", "local"]) == 0
    return path


@pytest.fixture(scope="module")
def nav_eval(nav_run):
    """``rlmaml eval`` of that run: 6 goals, 0..3 steps of 20 trajectories."""
    assert main(["eval", str(nav_run), *EVAL]) == 0
    return json.loads((nav_run / "eval.json").read_text())


def _nav_distribution():
    import envs

    return envs.task_distribution("rlmaml/Navigation2D-v0")


# ---- the evaluation -------------------------------------------------------------------------------------------

@pytest.mark.slow  # shares the trained-run fixture (~20 s)
def test_eval_writes_json_csv_and_pictures(nav_run, nav_eval) -> None:
    for name, size in (("eval.json", 1000), ("eval.csv", 100), ("eval.png", 5000), ("nav_trajectories.png", 5000)):
        assert (nav_run / name).stat().st_size > size, name
    assert [r["steps"] for r in nav_eval["rows"]] == [0, 1, 2, 3]
    assert all(r["goals"] == 6 and r["method"] == "nav2d" for r in nav_eval["rows"])
    assert (nav_run / "eval.csv").read_text().splitlines()[0] == "method,steps,mean,ci95,goals"
    with Image.open(nav_run / "nav_trajectories.png") as img:
        assert img.width > img.height > 200


@pytest.mark.slow  # shares the trained-run fixture (~20 s)
def test_returns_rise_with_policy_gradient_steps(nav_eval) -> None:
    means = [r["mean"] for r in nav_eval["rows"]]
    assert means[1] > means[0] + 0.5
    assert means[3] > means[0] + 0.5


@pytest.mark.slow  # shares the trained-run fixture (~20 s)
def test_rows_are_mean_and_ci_over_the_stored_per_goal_returns(nav_eval) -> None:
    per_goal = np.array(nav_eval["per_goal"]["returns"])
    assert per_goal.shape == (6, 4) and len(nav_eval["per_goal"]["tasks"]) == 6
    for row in nav_eval["rows"]:
        column = per_goal[:, row["steps"]]
        assert row["mean"] == pytest.approx(column.mean())
        assert row["ci95"] == pytest.approx(1.96 * column.std() / math.sqrt(6))


def test_ci_of_known_numbers() -> None:
    rows, summary = summarise_returns("m", np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0], [4.0, 10.0]]))
    assert rows[0] == {"method": "m", "steps": 0, "mean": 2.5, "ci95": pytest.approx(1.96 * math.sqrt(1.25) / 2),
                       "goals": 4}
    assert rows[1]["mean"] == 10.0 and rows[1]["ci95"] == 0.0
    assert summary["m: return after 0 steps"] == "2.50 ± 1.10"


def test_step_sizes_are_alpha_then_decayed_alpha() -> None:
    cfg = build_config("nav2d", ["maml.inner_lr=0.1", "eval.rl_steps=3"])
    assert eval_step_sizes(cfg) == pytest.approx((0.1, 0.05, 0.05))
    assert eval_step_sizes(build_config("nav2d", ["eval.rl_steps=0"])) == ()


@pytest.mark.slow  # shares the trained-run fixture (~20 s)
def test_the_protocol_is_recorded(nav_eval) -> None:
    p = nav_eval["protocol"]
    assert (p["goals"], p["trajectories"], p["rl_steps"], p["horizon"]) == (6, 20, 3, 30)
    assert p["step_sizes"] == pytest.approx([0.1, 0.05, 0.05])
    assert nav_eval["kind"] == "MAML" and "cpu" in nav_eval["hardware"]


@pytest.mark.slow  # shares the trained-run fixture (~20 s)
def test_goals_are_seeded_and_shared_by_every_method(nav_run, nav_eval) -> None:
    dist = _nav_distribution()
    expected = dist.sample(6, np.random.default_rng(build_config("nav2d").eval.seed))
    got = [t["goal"] for t in nav_eval["per_goal"]["tasks"]]
    assert np.allclose(got, [t["goal"] for t in expected])
    assert EVAL_STREAM != 0  # training samples on stream 0


@pytest.mark.slow  # shares the trained-run fixture (~20 s)
def test_a_goals_file_replaces_sampled_goals(nav_run, tmp_path) -> None:
    goals = tmp_path / "goals.yaml"
    goals.write_text("- goal: [0.3, -0.2]\n- goal: [-0.4, 0.1]\n")
    assert main(["eval", str(nav_run), f"eval.goals_file={goals}", "eval.rl_steps=1", "eval.trajectories=4"]) == 0
    result = json.loads((nav_run / "eval.json").read_text())
    assert [t["goal"] for t in result["per_goal"]["tasks"]] == [[0.3, -0.2], [-0.4, 0.1]]
    assert [r["goals"] for r in result["rows"]] == [2, 2]


def test_random_init_params_are_the_learners_seeded_initialisation() -> None:
    from rlmaml.rl.learning.learner import MetaLearner
    from rlmaml.rl.sampling.samplers import LocalSampler
    from rlmaml.rl.sampling.worker import WorkerSpec

    cfg = build_config("nav2d-random", ["run.seed=3"])
    spaces = LocalSampler(WorkerSpec.from_config(cfg)).spaces()
    learner = MetaLearner(cfg, *spaces, __import__("torch").device("cpu"))
    params = initial_params(cfg, *spaces)
    assert params.keys() == learner.params.keys()
    assert all(np.array_equal(params[k].numpy(), learner.params[k].detach().numpy()) for k in params)


def test_the_oracle_is_evaluated_with_zero_steps(tmp_path) -> None:
    path = tmp_path / "oracle"
    assert main(["train", "nav2d-oracle", f"run.dir={path}", "optim.meta_batch=2", "rl.trajectories=4",
                 "rl.horizon=20", "run.iterations=1", "--backend", "local"]) == 0
    assert main(["eval", str(path), "eval.goals=3", "eval.trajectories=4"]) == 0
    result = json.loads((path / "eval.json").read_text())
    assert [r["steps"] for r in result["rows"]] == [0]
    assert result["kind"] == "oracle" and result["env"] == "rlmaml/Navigation2DOracle-v0"


@pytest.mark.ray
@pytest.mark.slow
def test_ray_backend_gives_the_local_numbers(nav_run, nav_eval, ray_session) -> None:
    from rlmaml.rl.evaluation.evaluate import evaluate_rl_run

    run = RunDir.open(nav_run)
    cfg = run.config([*EVAL, "rl.backend=ray", "rl.num_workers=2"])
    result = evaluate_rl_run(cfg, run, run.load_checkpoint("best"))
    assert np.allclose(result["per_goal"]["returns"], nav_eval["per_goal"]["returns"], atol=1e-4)


# ---- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "line", "problem"), [
    ("- goal: [0.1, 0.2]\n- goal: [0.1, 0.2]\n- goal: [0.3]\n", 3, "shape"),
    ("- goal: [0.1, 0.2]\n\n- goal: [0.9, 0.0]\n", 3, "out of range"),
    ("- goal: [0.1, 0.2]\n- velocity: 1.0\n", 2, "missing field 'goal'"),
])
def test_a_bad_goals_file_names_the_line(tmp_path, text, line, problem) -> None:
    path = tmp_path / "goals.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"line {line}, entry .*{problem}") as info:
        load_goals_file(path, _nav_distribution())
    assert "\n" not in str(info.value)


def test_a_bad_json_goals_file_names_the_line(tmp_path) -> None:
    path = tmp_path / "goals.json"
    path.write_text('[\n  {"goal": [0.1, 0.2]},\n  {"goal": [0.1, 0.2, 0.3]}\n]\n')
    with pytest.raises(ConfigError, match=r"line 3, entry 2: .*shape"):
        load_goals_file(path, _nav_distribution())


def test_a_goals_file_that_is_not_a_list_is_rejected(tmp_path) -> None:
    path = tmp_path / "goals.yaml"
    path.write_text("goal: [0.1, 0.2]\n")
    with pytest.raises(ConfigError, match="list of task dicts"):
        load_goals_file(path, _nav_distribution())


@pytest.mark.slow  # shares the trained-run fixture (~20 s)
def test_cli_reports_a_bad_goals_file_in_one_line(nav_run, tmp_path, capsys) -> None:
    path = tmp_path / "goals.yaml"
    path.write_text("- goal: [0.1, 0.2]\n- goal: [2.0, 0.0]\n")
    assert main(["eval", str(nav_run), f"eval.goals_file={path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlmaml: error:") and "line 2, entry 2" in err and "out of range" in err
    assert len(err.splitlines()) == 1


def test_cli_reports_a_run_without_checkpoint(tmp_path, capsys) -> None:
    run = RunDir.create(build_config("nav2d"), tmp_path)
    assert main(["eval", str(run.path)]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and str(run.path) in err


# ---- video -----------------------------------------------------------------------------------------------------

def test_video_without_moviepy_says_what_to_install(monkeypatch) -> None:
    from rlmaml.rl.evaluation.video import prepare_video

    monkeypatch.setitem(sys.modules, "moviepy", None)  # import moviepy -> ImportError
    with pytest.raises(ConfigError, match=r"needs moviepy: pip install 'rlmaml\[video\]'"):
        prepare_video(build_config("halfcheetah-vel"))


@pytest.mark.slow  # shares the trained-run fixture (~20 s)
def test_video_of_a_non_mujoco_env_is_a_clear_error(nav_run, capsys) -> None:
    pytest.importorskip("moviepy")
    assert main(["eval", str(nav_run), "eval.goals=2", "--video"]) == 2
    assert "--video records MuJoCo envs" in capsys.readouterr().err


def test_video_with_an_unusable_gl_backend_says_what_to_install(monkeypatch) -> None:
    pytest.importorskip("moviepy")
    from rlmaml.rl.evaluation import video

    monkeypatch.setattr(video, "_renders_rgb", lambda env_id: True)
    monkeypatch.setattr(video, "_chosen", {})
    monkeypatch.setattr(video, "probe_backend", lambda backend, env_id: f"MUJOCO_GL={backend}: no display")
    with pytest.raises(ConfigError, match="MuJoCo cannot render .*apt-get install libosmesa6"):
        video.prepare_video(build_config("halfcheetah-vel"))


@pytest.fixture(scope="module")
def renderable() -> None:
    """Skip unless MuJoCo renders a frame here (moviepy installed and EGL or OSMesa working)."""
    pytest.importorskip("moviepy")
    pytest.importorskip("mujoco")
    from rlmaml.rl.evaluation.video import prepare_video

    try:
        prepare_video(build_config("halfcheetah-vel"))
    except ConfigError as exc:
        pytest.skip(f"no MuJoCo rendering here: {exc}")


@pytest.mark.slow
@pytest.mark.mujoco
def test_video_before_and_after_adaptation(renderable, tmp_path) -> None:
    path = tmp_path / "cheetah"
    assert main(["train", "halfcheetah-vel-random", f"run.dir={path}", "rl.trajectories=2", "rl.horizon=20",
                 "--backend", "local"]) == 0
    assert main(["eval", str(path), "eval.goals=2", "eval.trajectories=2", "eval.rl_steps=1", "--video"]) == 0
    result = json.loads((path / "eval.json").read_text())
    assert result["videos"] == ["videos/before-adaptation-episode-0.mp4", "videos/after-1-step-episode-0.mp4"]
    import imageio.v3 as iio

    frames = iio.imread(path / result["videos"][1])
    assert frames.shape[0] >= 20 and frames.shape[1:] == (320, 480, 3) and frames.std() > 5
