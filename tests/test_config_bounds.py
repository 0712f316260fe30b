"""Specifications of the config's bounds (issue 19) and of keys refused where they do not apply (issue 15).

Every refusal is a one-line ConfigError (``rlmaml: error:`` and exit 2 on the command line) naming the key or
file and the bad value, raised quickly and before a run directory exists.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import rlmaml.rl.trainer as rl_trainer
import rlmaml.supervised as supervised
import rlmaml.supervised.trainer as supervised_trainer
from rlmaml import config_bounds
from rlmaml.cli import main
from rlmaml.config import PRESET_DIR, ConfigError, build_config, preset_names, read_config_file, to_yaml, validate
from rlmaml.runs import RunDir


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging) if the block takes longer than ``seconds``."""

    def expire(*_: object) -> None:
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_line(info: pytest.ExceptionInfo, *named: str) -> str:
    message = str(info.value)
    assert "\n" not in message and len(message) <= 1000, message[:2000]
    for text in named:
        assert text in message, message
    return message


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """9 levels of 9 aliases each: 81 aliases (under the alias cap) that expand to 9**9 values."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nrl:\n  hidden: *l{levels - 1}\n"


@pytest.fixture
def no_training(monkeypatch, tmp_path: Path) -> list[object]:
    """Trainers that record their config instead of training; the working directory is a scratch folder."""
    seen: list[object] = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rl_trainer, "train_rl", lambda cfg, run, checkpoint=None, sampler=None: seen.append(cfg))
    monkeypatch.setattr(supervised_trainer, "train_supervised",
                        lambda cfg, domain, run, checkpoint=None: seen.append(cfg))
    monkeypatch.setattr(supervised, "make_domain", lambda cfg: None)
    return seen


def cli_error(argv: list[str], capsys) -> str:
    """The one error line of a command that must exit 2."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlmaml: error: ") and len(lines[0]) < 1100, err[:2000]
    return lines[0]


# ---- YAML files: aliases, size, encoding, emptiness ----------------------------------------------------------


def test_a_billion_laughs_config_file_is_refused_in_a_moment(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    start = time.monotonic()
    with within(10), pytest.raises(ConfigError) as info:
        build_config(str(path))
    assert time.monotonic() - start < 2
    one_line(info, "bomb.yaml", "alias")


def test_more_aliases_than_the_cap_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "aliases.yaml"
    items = ", ".join(["*w"] * (config_bounds.MAX_ALIASES + 1))
    path.write_text(f"w: &w 1\nrl:\n  hidden: [{items}]\n")
    with within(10), pytest.raises(ConfigError) as info:
        read_config_file(path)
    one_line(info, "aliases.yaml", f"more than {config_bounds.MAX_ALIASES} YAML aliases")


def test_an_alias_bomb_already_loaded_as_data_is_refused_in_a_moment() -> None:
    data = yaml.safe_load(billion_laughs())  # what a reader of config.yaml that uses plain yaml.safe_load gets
    with within(10), pytest.raises(ConfigError) as info:
        build_config(data)
    one_line(info, "alias")


def test_an_alias_bomb_in_an_override_is_refused_in_a_moment() -> None:
    bomb = "[&a [1, 1, 1, 1, 1, 1, 1, 1, 1], " + ", ".join(
        f"&{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)) + "]"
    with within(10), pytest.raises(ConfigError) as info:
        build_config("nav2d", [f"rl.hidden={bomb}"])
    one_line(info, "bad value in override", "rl.hidden", "alias")


def test_an_alias_bomb_in_a_run_config_yaml_is_one_line_exit_2_for_eval(tmp_path: Path, capsys) -> None:
    run = RunDir.create(build_config("sinusoid", [f"run.dir={tmp_path / 'run'}"]))
    (run.path / "config.yaml").write_text(billion_laughs())
    with within(20):
        line = cli_error(["eval", str(run.path)], capsys)
    assert "config.yaml" in line and "alias" in line


@pytest.mark.parametrize("depth", [40, 5_000])  # past MAX_DEPTH; past Python's recursion limit in PyYAML
def test_a_deeply_nested_config_file_is_refused(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("rl:\n  hidden: " + "[" * depth + "]" * depth + "\n")
    with within(10), pytest.raises(ConfigError) as info:
        build_config(str(path))
    one_line(info, "deep.yaml", "nested")


def test_an_oversize_config_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("experiment: rl\n" + "# padding\n" * 150_000)
    assert path.stat().st_size > config_bounds.MAX_FILE_BYTES
    with within(10), pytest.raises(ConfigError) as info:
        build_config(str(path))
    one_line(info, "huge.yaml", f"larger than {config_bounds.MAX_FILE_BYTES:,} bytes")


@pytest.mark.parametrize(("content", "named"), [
    (b"", "is empty"),
    (b"# only a comment\n\n", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not UTF-8 text"),
    (b"experiment: rl\x00\x00\x00\n", "unacceptable character"),
    (b"\xff\xfe\x00\x00", "not UTF-8 text"),
    (b"42\n", "must be a mapping, got int"),
], ids=["empty", "comments-only", "png", "nul-bytes", "utf-32", "scalar"])
def test_an_empty_binary_or_non_mapping_config_file_is_one_line_naming_it(tmp_path: Path, content: bytes,
                                                                          named: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        build_config(str(path))
    one_line(info, str(path), named)
    with pytest.raises(ConfigError, match=named):
        read_config_file(path)


def test_an_empty_config_given_as_data_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="config is empty"):
        build_config(None)  # type: ignore[arg-type]  # yaml.safe_load of an empty config.yaml
    with pytest.raises(ConfigError, match="must be a mapping, got list"):
        build_config([1, 2])  # type: ignore[arg-type]


# ---- strings -------------------------------------------------------------------------------------------------


def test_a_10_mb_run_name_is_refused_in_one_short_line() -> None:
    huge = "x" * 10_000_000
    with within(10), pytest.raises(ConfigError) as info:
        build_config({"experiment": "sinusoid", "run": {"name": huge}})
    one_line(info, "run.name", "10,000,000 characters", f"the most is {config_bounds.STRING_LIMITS['run.name']}")
    with within(10), pytest.raises(ConfigError) as info:
        build_config("sinusoid", [f"run.name={huge}"])
    one_line(info, "run.name", "characters long")


def test_a_10_mb_run_name_on_the_command_line_is_exit_2_before_any_run_dir(no_training, tmp_path, capsys) -> None:
    run_dir = tmp_path / "would-be-run"
    with within(20):
        line = cli_error(["train", "sinusoid", f"run.dir={run_dir}", "run.name=" + "n" * 10_000_000], capsys)
    assert "run.name" in line
    assert not run_dir.exists() and not no_training


@pytest.mark.parametrize(("key", "limit"), [("run.name", 200), ("run.dir", 4096), ("rl.env", 256),
                                            ("eval.goals_file", 4096), ("omniglot.root", 4096)])
def test_string_lengths_are_capped(key: str, limit: int) -> None:
    preset = "sinusoid" if key.startswith(("run", "omniglot")) else "nav2d"
    build_config(preset, [f"{key}={'a' * limit}"])
    with pytest.raises(ConfigError) as info:
        build_config(preset, [f"{key}={'a' * (limit + 1)}"])
    one_line(info, key, f"{limit + 1:,} characters long", f"the most is {limit}")


def test_a_nul_character_in_a_string_setting_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"experiment": "sinusoid", "run": {"dir": "runs/a\x00b"}})
    one_line(info, "run.dir", "NUL")


# ---- counts --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("override", "named"), [
    ("rl.horizon=1e20", "1e20"),
    (f"rl.horizon={10**20}", f"{10**20}"),
    ("optim.meta_batch=1e11", "1e11"),
    (f"optim.meta_batch={10**11}", f"{10**11}"),
])
def test_huge_counts_are_exit_2_before_any_run_dir_exists(override: str, named: str, no_training, tmp_path,
                                                           capsys) -> None:
    run_dir = tmp_path / "would-be-run"
    with within(30):
        line = cli_error(["train", "nav2d", f"run.dir={run_dir}", override, "--backend", "local"], capsys)
    assert override.split("=")[0] in line and named in line
    assert not run_dir.exists() and not no_training


@pytest.mark.parametrize("key", sorted(config_bounds.INT_BOUNDS))
def test_every_count_has_an_upper_bound(key: str) -> None:
    bound = config_bounds.INT_BOUNDS[key]
    preset = "nav2d" if key.startswith(("rl.", "eval.goals", "eval.rl_steps", "eval.trajectories")) else "sinusoid"
    if key.startswith("omniglot."):
        preset = "omniglot-5w1s"
    value = f"[{bound + 1}]" if key in config_bounds.TUPLE_LIMITS else str(bound + 1)
    with pytest.raises(ConfigError) as info:
        build_config(preset, [f"{key}={value}"])
    one_line(info, key, f"{bound + 1}")


def test_the_work_of_one_rl_iteration_is_bounded_naming_every_factor() -> None:
    build_config("nav2d", ["rl.horizon=100000", "rl.trajectories=10", "optim.meta_batch=10"])  # 2e7 steps: fine
    with pytest.raises(ConfigError) as info:
        build_config("nav2d", ["rl.horizon=100000", "rl.trajectories=100000"])
    one_line(info, "optim.meta_batch x rl.trajectories x rl.horizon", "20 x 100000 x 100000 x 2",
             "env steps per iteration", "the most is 1,000,000,000")
    with pytest.raises(ConfigError) as info:
        build_config("nav2d", ["rl.horizon=10000", "eval.goals=100000", "eval.trajectories=100"])
    one_line(info, "eval.goals", "env steps of evaluation")


def test_the_work_of_one_supervised_iteration_is_bounded() -> None:
    with pytest.raises(ConfigError) as info:
        build_config("sinusoid", ["optim.meta_batch=100000", "sinusoid.k_shot=100000"])
    one_line(info, "sinusoid.k_shot", "points per iteration")
    with pytest.raises(ConfigError) as info:
        build_config("omniglot-5w1s", ["optim.meta_batch=10000", "omniglot.ways=1000"])
    one_line(info, "omniglot.ways", "images per iteration")


def test_list_settings_have_a_bounded_length_and_float_limits_are_bounded() -> None:
    with pytest.raises(ConfigError) as info:
        build_config("nav2d", ["rl.hidden=[" + ",".join(["8"] * 33) + "]"])
    one_line(info, "rl.hidden", "33 entries", "the most is 32")
    with pytest.raises(ConfigError) as info:
        build_config("nav2d", ["rl.task_timeout_s=1e12"])
    one_line(info, "rl.task_timeout_s", "at most 1e+06", "1000000000000.0")
    with pytest.raises(ConfigError) as info:
        build_config("sinusoid", ["run.time_limit_min=1e300"])
    one_line(info, "run.time_limit_min")


@pytest.mark.parametrize("override", ["rl.horizon=" + "9" * 5000, "rl.hidden=[" + "9" * 5000 + "]"])
def test_an_integer_too_long_to_read_is_a_config_error_not_a_value_error(override: str) -> None:
    with pytest.raises(ConfigError) as info:  # int() refuses more than 4300 digits: was a ValueError traceback
        build_config("nav2d", [override])
    one_line(info, override.split("=")[0], "4300 digits")


def test_an_override_longer_than_the_cap_is_refused_naming_its_key() -> None:
    with within(10), pytest.raises(ConfigError) as info:
        build_config("nav2d", ["rl.hidden=[" + "1," * 1_000_000 + "1]"])
    one_line(info, "override of 'rl.hidden'", "characters long")


# ---- keys that do not apply ----------------------------------------------------------------------------------

SUPERVISED_ONLY = ["maml.learn_inner_lr=true", "maml.multi_step_loss=true", "maml.msl_anneal_fraction=0.5",
                   "maml.batching=vmap", "maml.first_order_until=0.5", "optim.cosine=true", "optim.min_meta_lr=1e-4",
                   "optim.grad_clip=1.0", "sinusoid.k_shot=5", "sinusoid.hidden=[8]", "omniglot.ways=20",
                   "omniglot.model=mlp", "eval.test_tasks=10", "eval.shots=[1]", "eval.steps=[1]",
                   "eval.query_points=5"]
RL_ONLY = ["rl.horizon=50", "rl.outer=ppo", "rl.hidden=[8]", "rl.env=rlmaml/AntDir-v0", "rl.num_workers=2",
           "eval.goals=3", "eval.rl_steps=1", "eval.batch=steps", "eval.init=random", "eval.goals_file=goals.yaml",
           "eval.trajectories=5", "eval.step_decay=0.25"]


@pytest.mark.parametrize("override", SUPERVISED_ONLY)
def test_a_supervised_only_key_on_an_rl_run_is_refused_naming_it(override: str) -> None:
    key, value = override.split("=")
    with pytest.raises(ConfigError) as info:
        build_config("nav2d", [override])
    one_line(info, f"{key}=", "applies only to supervised runs", "experiment=rl")


@pytest.mark.parametrize("preset", ["sinusoid", "omniglot-5w1s"])
@pytest.mark.parametrize("override", RL_ONLY)
def test_an_rl_only_key_on_a_supervised_run_is_refused_naming_it(override: str, preset: str) -> None:
    key, value = override.split("=")
    with pytest.raises(ConfigError) as info:
        build_config(preset, [override])
    one_line(info, f"{key}=", "applies only to meta-RL runs", f"experiment={preset.split('-')[0]}")


def test_the_keys_each_experiment_reads_are_accepted() -> None:
    # RL reads maml.inner_lr/inner_steps/first_order, optim.meta_batch, and optim.meta_lr for its PPO outer step.
    cfg = build_config("nav2d", ["maml.first_order=true", "maml.inner_steps=2", "optim.meta_lr=3e-4",
                                 "rl.outer=ppo", "eval.seed=7", "run.device=cpu"])
    assert (cfg.maml.first_order, cfg.optim.meta_lr, cfg.rl.outer) == (True, 3e-4, "ppo")
    cfg = build_config("sinusoid", ["maml.learn_inner_lr=true", "optim.cosine=true", "optim.grad_clip=10",
                                    "eval.shots=[5]", "omniglot.ways=20"])  # omniglot keys on sinusoid: not refused
    assert cfg.optim.grad_clip == 10
    # A refused key set back to its default is no setting at all; --backend/--address set rl keys on any run.
    assert build_config("nav2d", ["optim.grad_clip=0", "maml.batching=auto"]).optim.grad_clip == 0
    assert build_config("sinusoid", ["rl.backend=local", "rl.address=auto", "rl.gamma=0.99"]).rl.backend == "local"


def test_backend_local_on_a_supervised_run_still_trains(no_training, tmp_path) -> None:
    assert main(["train", "sinusoid", f"run.dir={tmp_path / 'run'}", "--backend", "local"]) == 0
    assert len(no_training) == 1


def test_a_refused_key_on_the_command_line_is_exit_2_before_any_run_dir(no_training, tmp_path, capsys) -> None:
    run_dir = tmp_path / "would-be-run"
    line = cli_error(["train", "nav2d", f"run.dir={run_dir}", "optim.grad_clip=1", "--backend", "local"], capsys)
    assert "optim.grad_clip=1.0 applies only to supervised runs" in line
    assert not run_dir.exists() and not no_training


# ---- run.device ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:7"])
def test_run_device_accepts_auto_cpu_cuda_and_cuda_n(device: str) -> None:
    assert build_config("sinusoid", [f"run.device={device}"]).run.device == device


@pytest.mark.parametrize("device", ["tpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "cuda:0:1", "gpu", "mps", ""])
def test_run_device_is_spelled_auto_cpu_cuda_or_cuda_n(device: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config("sinusoid", [f"run.device={device}"])
    one_line(info, "run.device", "auto, cpu, cuda or cuda:N", repr(device))


# ---- presets -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates_round_trips_and_stays_far_inside_the_bounds(name: str, tmp_path: Path) -> None:
    cfg = build_config(name)
    validate(cfg)
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))  # what a run directory holds
    assert build_config(read_config_file(path)) == cfg
    events = yaml.parse((PRESET_DIR / f"{name}.yaml").read_text())
    assert not any(isinstance(e, yaml.AliasEvent) or getattr(e, "anchor", None) for e in events)  # the cap costs nothing
    for key, value in config_bounds.leaves(cfg):
        if key in config_bounds.INT_BOUNDS:
            for v in value if isinstance(value, tuple) else (value,):
                assert v * 100 <= config_bounds.INT_BOUNDS[key], (key, v)
