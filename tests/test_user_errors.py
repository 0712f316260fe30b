"""A user's own env and tasks, done wrong: one line on stderr, exit code 2, and no run directory left behind."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from rlmaml.cli import main

GOOD_ENV = '''
import gymnasium
import numpy as np
from gymnasium import spaces


class LineEnv(gymnasium.Env):
    def __init__(self, task=None, obs="box"):
        self.observation_space = (spaces.Dict({"x": spaces.Box(-1, 1, (1,))}) if obs == "dict"
                                  else spaces.Box(-np.inf, np.inf, (1,), np.float32))
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.task = dict(task or {"goal": 0.0})

    def set_task(self, task):
        self.task = dict(task)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), -abs(self.task["goal"]), False, False, {}


class Goals:
    def sample(self, n, rng):
        return [{"goal": float(g)} for g in rng.uniform(-1, 1, n)]


class TooFew(Goals):
    def sample(self, n, rng):
        return super().sample(n, rng)[:1]


class AnArray(Goals):
    def sample(self, n, rng):
        return rng.uniform(-1, 1, n)


class Strings(Goals):
    def sample(self, n, rng):
        return ["goal"] * n


gymnasium.register("{module}/Line-v0", entry_point="{module}:LineEnv", max_episode_steps=10)
gymnasium.register("{module}/DictLine-v0", entry_point="{module}:LineEnv", max_episode_steps=10,
                   kwargs={"obs": "dict"})
'''


@pytest.fixture
def folder(tmp_path: Path, monkeypatch) -> Path:
    """A fresh working directory, as a user's project folder; its modules are forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("usermod"):
            del sys.modules[name]


def _write(folder: Path, name: str, text: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(text))


def _train(folder: Path, capsys, *overrides: str) -> tuple[int, str]:
    code = main(["train", "custom", "--backend", "local", "run.iterations=1", "optim.meta_batch=2",
                 "rl.trajectories=2", "rl.horizon=5", *overrides])
    err = capsys.readouterr().err.strip()
    return code, err


def _assert_one_line_and_nothing_left(folder: Path, code: int, err: str, *expected: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("rlmaml: error: "), err
    for text in expected:
        assert text in err, err
    assert not (folder / "runs").exists()


def test_custom_without_an_env_is_refused(folder: Path, capsys) -> None:
    code, err = _train(folder, capsys)
    _assert_one_line_and_nothing_left(folder, code, err, "rl.env=ID")


def test_an_env_module_in_the_working_directory_is_found(folder: Path, capsys) -> None:
    _write(folder, "usermod_ok", GOOD_ENV.replace("{module}", "usermod_ok"))
    code, err = _train(folder, capsys, "rl.env=usermod_ok/Line-v0", "rl.env_module=usermod_ok",
                       "rl.task_distribution=usermod_ok:Goals")
    assert code == 0, err
    assert [p.name.startswith("Line-v0-") for p in (folder / "runs").iterdir()] == [True]  # named for the env


def test_a_missing_env_module_names_the_working_directory(folder: Path, capsys) -> None:
    code, err = _train(folder, capsys, "rl.env=usermod_none/Line-v0", "rl.env_module=usermod_none")
    _assert_one_line_and_nothing_left(folder, code, err, "'usermod_none'", str(folder))


def test_a_syntax_error_in_the_env_module_names_file_and_line(folder: Path, capsys) -> None:
    _write(folder, "usermod_syntax", "import gymnasium\n\ndef broken(:\n    pass\n")
    code, err = _train(folder, capsys, "rl.env=usermod_syntax/Line-v0", "rl.env_module=usermod_syntax")
    _assert_one_line_and_nothing_left(folder, code, err, "syntax error", "usermod_syntax.py:3")


def test_an_env_module_that_raises_at_import_names_file_and_line(folder: Path, capsys) -> None:
    _write(folder, "usermod_raises", "x = 1\nraise RuntimeError('no licence server')\n")
    code, err = _train(folder, capsys, "rl.env=usermod_raises/Line-v0", "rl.env_module=usermod_raises")
    _assert_one_line_and_nothing_left(folder, code, err, "RuntimeError", "usermod_raises.py:2", "no licence server")


def test_an_env_module_whose_own_import_fails_says_so(folder: Path, capsys) -> None:
    _write(folder, "usermod_dep", "import a_package_that_is_not_installed\n")
    code, err = _train(folder, capsys, "rl.env=usermod_dep/Line-v0", "rl.env_module=usermod_dep")
    _assert_one_line_and_nothing_left(folder, code, err, "a_package_that_is_not_installed", "not installed")
    assert "not a registered Gymnasium id" not in err


@pytest.mark.parametrize(("dist", "named"), [("TooFew", "got 1"), ("AnArray", "got ndarray"),
                                             ("Strings", "element of type str")])
def test_a_task_distribution_that_returns_the_wrong_thing_is_named(folder: Path, capsys, dist: str,
                                                                   named: str) -> None:
    _write(folder, "usermod_dist", GOOD_ENV.replace("{module}", "usermod_dist"))
    code, err = _train(folder, capsys, "rl.env=usermod_dist/Line-v0", "rl.env_module=usermod_dist",
                       f"rl.task_distribution=usermod_dist:{dist}")
    _assert_one_line_and_nothing_left(folder, code, err, f"usermod_dist:{dist}.sample(2, rng)", named)


def test_a_dict_observation_is_refused_naming_the_space(folder: Path, capsys) -> None:
    _write(folder, "usermod_space", GOOD_ENV.replace("{module}", "usermod_space"))
    code, err = _train(folder, capsys, "rl.env=usermod_space/DictLine-v0", "rl.env_module=usermod_space",
                       "rl.task_distribution=usermod_space:Goals")
    _assert_one_line_and_nothing_left(folder, code, err, "Dict", "Box")
