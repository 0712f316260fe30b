"""Property: any combination of dotted overrides ends in exit 0 or in one ``rlmaml: error:`` line with exit 2.

The trainers are replaced by a stub that records the config (the contract under test is the command line's
and the validator's, not training), so a valid combination returns 0 at once. A config that is accepted must
also obey the rule the validator promises: every number finite, every seed in [0, 2**63), no negative count.
Failing examples the fuzzer found are kept below as explicit regression tests.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import rlmaml.rl.trainer as rl_trainer
import rlmaml.supervised as supervised
import rlmaml.supervised.trainer as supervised_trainer
from rlmaml.cli import main
from rlmaml.config import Config, ConfigError, build_config, field_help

VALID_KEYS = [key for key, _, _ in field_help()]
INVALID_KEYS = ["nope", "run.nope", "run", "rl", "maml.inner_lr.x", "rl.hidden.0", "run..seed", ".run.seed",
                "run.seed.", "RUN.SEED", "optim.meta_batch.value", "eval.shots.1", "sinusoid.amplitude.low"]
KEYS = st.one_of(st.sampled_from(VALID_KEYS), st.sampled_from(INVALID_KEYS),
                 st.text(alphabet="abcrunlm._", min_size=1, max_size=12))

TOKENS = ["", "nan", "-nan", ".nan", "inf", "-inf", ".inf", "-.inf", "1e309", "-1e309", "1e-320", "-0.0", "0", "-1",
          "true", "false", "null", "~", "abc", "ρ", "[", "]", "{}", "[]", "{a: 1}", "[1, 2]", "[1, 2, 3]", "[nan]",
          "[inf, 1]", "[-1]", "[0]", "x=y", "'quoted'", "2001-01-01", "&a [*a]", "*a", "!!python/object:os.system",
          "local", "ray", "cpu", "cuda", "auto", "trpo", "ppo", "reinforce", "lvc", "rl", "sinusoid", "omniglot",
          "vmap", "loop", "alphabet", "mlp", "rlmaml/Navigation2D-v0", "127.0.0.1", "0.0.0.0"]
NUMBERS = st.one_of(st.integers(-1000, 1000), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=True, allow_infinity=True))
SCALARS = st.one_of(NUMBERS.map(repr), st.sampled_from(TOKENS))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"))
OVERRIDES = st.lists(st.tuples(KEYS, VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"), min_size=1, max_size=4)
PRESETS = st.sampled_from(["sinusoid", "nav2d", "omniglot-5w1s", "halfcheetah-vel"])

SEEDS = {"run.seed", "eval.seed", "omniglot.split_seed"}


def _leaves(obj, prefix: str = ""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def _broken_rule(cfg: Config) -> str | None:
    """The first leaf of an accepted config that breaks 'finite numbers, seeds in [0, 2**63), no negative count'."""
    for key, value in _leaves(cfg):
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                return f"{key}={v!r} is not finite"
            if key in SEEDS and not 0 <= v < 2**63:
                return f"{key}={v!r} is not a usable seed"
            if isinstance(v, int) and key not in SEEDS and v < 0:
                return f"{key}={v!r} is a negative count"
    return None


@pytest.fixture
def stub_trainers(monkeypatch, tmp_path: Path) -> list[Config]:
    """Trainers that record the config instead of training; run directories land in a scratch folder."""
    seen: list[Config] = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rl_trainer, "train_rl", lambda cfg, run, checkpoint=None, sampler=None: seen.append(cfg))
    monkeypatch.setattr(supervised_trainer, "train_supervised",
                        lambda cfg, domain, run, checkpoint=None: seen.append(cfg))
    monkeypatch.setattr(supervised, "make_domain", lambda cfg: None)
    return seen


def _check(preset: str, overrides: list[str], stub_trainers: list[Config], capsys) -> None:
    stub_trainers.clear()
    capsys.readouterr()
    code = main(["train", preset, *overrides, "--backend", "local"])  # an uncaught exception fails the test
    err = capsys.readouterr().err
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rlmaml: error:"), err
        assert not stub_trainers
    else:
        assert len(stub_trainers) == 1
        broken = _broken_rule(stub_trainers[0])
        assert broken is None, f"accepted {overrides}: {broken}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(preset=PRESETS, overrides=OVERRIDES)
@example(preset="nav2d", overrides=["optim.grad_clip=inf"])
@example(preset="sinusoid", overrides=["run.seed=-1"])
@example(preset="nav2d", overrides=["maml.inner_lr=nan", "rl.max_kl=.inf"])
@example(preset="sinusoid", overrides=["run.name=&a [*a]"])
@example(preset="sinusoid", overrides=["rl.hidden.0=0"])
@example(preset="nav2d", overrides=["rl.hidden=&a [*a]"])
def test_any_overrides_end_in_exit_0_or_one_error_line_with_exit_2(preset, overrides, stub_trainers, capsys) -> None:
    _check(preset, overrides, stub_trainers, capsys)


# ---- regressions the fuzzer found ----------------------------------------------------------------------------------


@pytest.mark.parametrize("override", [
    "optim.grad_clip=inf", "optim.grad_clip=.inf",
    "run.seed=-1", "eval.seed=-5", "omniglot.split_seed=-1", f"run.seed={2**64}",
])
def test_regression_non_finite_or_unusable_values_are_config_errors(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config("nav2d", [override])


@pytest.mark.parametrize("override", [
    "maml.inner_lr=nan", "maml.inner_lr=inf", "optim.meta_lr=nan", "optim.meta_lr=-inf", "rl.max_kl=inf",
    "rl.gamma=nan", "rl.cg_damping=nan", "eval.step_decay=inf", "sinusoid.amplitude=[0, inf]",
    "maml.first_order_until=nan", "optim.min_meta_lr=nan", "rl.task_timeout_s=1e309",
])
def test_nan_and_inf_are_refused_for_every_float_setting_tried(override: str) -> None:
    with pytest.raises(ConfigError):
        build_config("nav2d", [override])


@pytest.mark.parametrize("override", ["rl.hidden.0=0", "sinusoid.amplitude.x=1", "eval.shots.0=[1]"])
def test_regression_an_item_key_into_a_list_field_is_a_config_error_not_a_type_error(override: str) -> None:
    # OmegaConf raised a bare TypeError ("Cannot merge incompatible container types"): a traceback, exit 1.
    with pytest.raises(ConfigError, match="bad value in override"):
        build_config("nav2d", [override])


def test_regression_a_preset_file_merging_a_mapping_into_a_list_is_a_config_error(tmp_path: Path) -> None:
    preset = tmp_path / "mine.yaml"
    preset.write_text("rl:\n  hidden: {0: 1}\n")
    with pytest.raises(ConfigError, match="mine.yaml"):
        build_config(str(preset))


@pytest.mark.parametrize("override", ["rl.hidden=&a [*a]", "maml.inner_lr=&a [*a]", "eval.shots=[&a [*a]]"])
def test_regression_a_recursive_yaml_alias_in_an_override_is_a_config_error(override: str) -> None:
    # The self-containing list reached OmegaConf and ended in a RecursionError traceback.
    with pytest.raises(ConfigError, match="contains itself"):
        build_config("nav2d", [override])


def test_regression_a_recursive_yaml_alias_in_a_preset_file_is_a_config_error(tmp_path: Path) -> None:
    preset = tmp_path / "loop.yaml"
    preset.write_text("rl:\n  hidden: &x [*x]\n")
    with pytest.raises(ConfigError, match="loop.yaml.*contains itself"):
        build_config(str(preset))


def test_the_largest_usable_seed_is_accepted() -> None:
    assert build_config("nav2d", [f"run.seed={2**63 - 1}"]).run.seed == 2**63 - 1


@pytest.mark.parametrize(("override", "named"), [
    ("rl.env=nope/Nope-v0", "rl.env"),
    ("rl.env_module=no_such_module_for_rlmaml", "rl.env_module"),
    ("rl.task_distribution=no_such_module_for_rlmaml:Goals", "no task distribution"),
])
def test_an_unknown_env_env_module_or_task_distribution_is_one_line_exit_2(override, named, stub_trainers,
                                                                          capsys) -> None:
    assert main(["train", "nav2d", override, "--backend", "local"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("rlmaml: error:") and named in err
    assert not stub_trainers
