"""Specifications of rlmaml.config: presets, typed dotted overrides, YAML round trips and validation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import yaml

from rlmaml.config import (
    Config,
    ConfigError,
    build_config,
    config_from_dict,
    field_help,
    preset_names,
    to_dict,
    to_yaml,
    validate,
)


def _leaf_keys(cls: type = Config, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        value = getattr(cls(), f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(_leaf_keys(type(value), f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


# ---- presets -------------------------------------------------------------------------------------------------------


def test_shipped_presets_include_both_sinusoid_settings_and_all_build() -> None:
    names = preset_names()
    assert {"sinusoid", "sinusoid-pretrained"} <= set(names)
    for name in names:
        cfg = build_config(name)
        assert cfg.run.name == (name if name != "custom" else "Navigation2D-v0")  # custom: named for its env


def test_the_custom_preset_names_the_run_for_the_env_and_has_the_papers_meta_rl_defaults() -> None:
    cfg = build_config("custom", ["rl.env=mytasks/PointLine-v0"])
    assert cfg.run.name == "PointLine-v0" and cfg.experiment == "rl"
    assert (cfg.optim.meta_batch, cfg.rl.trajectories, cfg.maml.inner_lr, cfg.rl.outer, cfg.rl.max_kl) == \
        (20, 20, 0.1, "trpo", 0.01)


def test_sinusoid_presets_have_the_papers_settings() -> None:
    cfg = build_config("sinusoid")
    assert cfg.experiment == "sinusoid"
    # alpha is the original code's 1e-3 (the paper's text says 0.01; see the preset's comment).
    assert (cfg.maml.inner_lr, cfg.maml.inner_steps, cfg.optim.meta_batch) == (0.001, 1, 25)
    assert (cfg.sinusoid.k_shot, cfg.sinusoid.hidden, cfg.sinusoid.amplitude) == (10, (40, 40), (0.1, 5.0))
    assert build_config("sinusoid-pretrained").maml.inner_steps == 0


def test_nav2d_fast_is_nav2d_with_only_the_learner_speed_ups() -> None:
    import dataclasses

    fast, paper = build_config("nav2d-fast"), build_config("nav2d")
    speed = {"cg_task_fraction": 0.25, "compile": True, "ls_kl_extrapolate": True}
    assert {k: getattr(fast.rl, k) for k in speed} == speed
    assert dataclasses.replace(fast.rl, **{k: getattr(paper.rl, k) for k in speed}) == paper.rl
    assert dataclasses.replace(fast, rl=paper.rl, run=paper.run) == paper
    assert dataclasses.replace(fast.run, name="nav2d") == paper.run


def test_compiling_the_learner_with_step_budget_batches_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="rl.compile=true needs rl.batch=trajectories") as info:
        build_config("nav2d-fast", ["rl.batch=steps"])
    assert "\n" not in str(info.value)
    assert build_config("nav2d-fast", ["eval.batch=steps"]).rl.compile  # test-time batches do not matter
    with pytest.raises(ConfigError, match="rl.outer=ppo has none to compile"):
        build_config("nav2d-fast", ["rl.outer=ppo"])


def test_unknown_preset_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="no-such-preset") as info:
        build_config("no-such-preset")
    assert "sinusoid" in str(info.value)  # lists the choices
    assert "\n" not in str(info.value)


def test_a_yaml_file_path_works_as_a_preset(tmp_path) -> None:
    path = tmp_path / "my-exp.yaml"
    path.write_text("experiment: sinusoid\nmaml:\n  inner_lr: 0.05\nsinusoid:\n  hidden: [8, 8]\n")
    cfg = build_config(str(path), ["run.seed=3"])
    assert cfg.maml.inner_lr == 0.05
    assert cfg.sinusoid.hidden == (8, 8)
    assert cfg.run.seed == 3
    assert cfg.run.name == "my-exp"


@pytest.mark.parametrize("text", ["- just\n- a list\n", "maml: [unclosed\n"])
def test_a_yaml_file_that_is_not_a_mapping_or_not_yaml_is_a_config_error(tmp_path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml") as info:
        build_config(str(path))
    assert "\n" not in str(info.value)


def test_a_yaml_preset_with_an_unknown_key_is_a_config_error_naming_it(tmp_path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("maml:\n  innr_lr: 0.1\n")
    with pytest.raises(ConfigError, match="innr_lr"):
        build_config(str(path))


# ---- overrides -----------------------------------------------------------------------------------------------------


def test_overrides_are_typed() -> None:
    cfg = build_config("sinusoid", [
        "optim.meta_lr=1e-3", "maml.inner_lr=2.5e-2", "run.iterations=1_000", "maml.first_order=true",
        "sinusoid.hidden=[20,20]", "sinusoid.amplitude=[1, 2]", "run.name=123", "maml.batching=loop",
    ])
    assert cfg.optim.meta_lr == 1e-3 and isinstance(cfg.optim.meta_lr, float)
    assert cfg.maml.inner_lr == 0.025
    assert cfg.run.iterations == 1000 and isinstance(cfg.run.iterations, int)
    assert cfg.maml.first_order is True
    assert cfg.sinusoid.hidden == (20, 20)
    assert cfg.sinusoid.amplitude == (1.0, 2.0) and all(isinstance(v, float) for v in cfg.sinusoid.amplitude)
    assert cfg.run.name == "123"
    assert cfg.maml.batching == "loop"


def test_later_overrides_win_and_presets_override_defaults() -> None:
    cfg = build_config("sinusoid", ["maml.inner_lr=0.1", "maml.inner_lr=0.2"])
    assert cfg.maml.inner_lr == 0.2
    assert build_config("sinusoid").run.iterations == 70000  # preset value, not the dataclass default
    assert Config().run.iterations == 1000


def test_a_dict_preset_is_accepted() -> None:
    cfg = build_config({"experiment": "sinusoid", "maml": {"inner_steps": 2}}, ["maml.inner_lr=0.3"])
    assert (cfg.maml.inner_steps, cfg.maml.inner_lr) == (2, 0.3)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("maml.nope=1", "maml.nope"),
        ("nope=1", "nope"),
        ("run.iterations=abc", "run.iterations"),
        ("run.iterations=1.5", "run.iterations"),
        ("maml.inner_lr=abc", "maml.inner_lr"),
        ("maml.first_order=maybe", "maml.first_order"),
        ("sinusoid.hidden=[a,b]", "sinusoid.hidden"),
        ("maml.inner_lr", "maml.inner_lr"),  # no '='
        ("=3", "=3"),
    ],
)
def test_bad_overrides_raise_one_line_config_errors_naming_the_key(override: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config("sinusoid", [override])
    message = str(info.value)
    assert named in message
    assert "\n" not in message


def test_conflicting_nested_overrides_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="inner_lr"):
        build_config("sinusoid", ["maml.inner_lr=0.1", "maml.inner_lr.x=1"])


def test_config_is_frozen() -> None:
    cfg = build_config("sinusoid")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.iterations = 5  # type: ignore[misc]


# ---- round trips ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["sinusoid", "sinusoid-pretrained"])
def test_to_yaml_then_build_config_round_trips(preset: str) -> None:
    cfg = build_config(preset, ["sinusoid.hidden=[7,5,3]", "optim.meta_lr=3e-4", "run.dir=/tmp/x",
                                "maml.learn_inner_lr=true", "eval.shots=[1,2]"])
    data = yaml.safe_load(to_yaml(cfg))
    assert build_config(data) == cfg
    assert config_from_dict(data) == cfg
    assert config_from_dict(to_dict(cfg)) == cfg


def test_to_dict_is_plain_data() -> None:
    data = to_dict(build_config("sinusoid"))

    def plain(x) -> bool:
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        if isinstance(x, list):
            return all(plain(v) for v in x)
        return x is None or isinstance(x, str | int | float | bool)

    assert plain(data)
    assert data["sinusoid"]["hidden"] == [40, 40]


# ---- validation ----------------------------------------------------------------------------------------------------

VALIDATION_CASES = [
    ("experiment=chess", "experiment"),
    ("run.iterations=0", "run.iterations"),
    ("run.iterations=-1", "run.iterations"),
    ("run.checkpoint_every=0", "run.checkpoint_every"),
    ("run.keep_checkpoints=0", "run.keep_checkpoints"),
    ("run.log_every=0", "run.log_every"),
    ("run.max_consecutive_failures=0", "run.max_consecutive_failures"),
    ("run.device=tpu", "run.device"),
    ("maml.inner_lr=0", "maml.inner_lr"),
    ("maml.inner_lr=-0.1", "maml.inner_lr"),
    ("maml.inner_lr=.nan", "maml.inner_lr"),
    ("maml.inner_lr=inf", "maml.inner_lr"),
    ("maml.inner_steps=-1", "maml.inner_steps"),
    ("maml.first_order_until=1.5", "maml.first_order_until"),
    ("maml.first_order_until=-0.1", "maml.first_order_until"),
    ("maml.msl_anneal_fraction=2", "maml.msl_anneal_fraction"),
    ("maml.batching=threads", "maml.batching"),
    ("optim.meta_lr=0", "optim.meta_lr"),
    ("optim.meta_lr=-1", "optim.meta_lr"),
    ("optim.meta_batch=0", "optim.meta_batch"),
    ("optim.min_meta_lr=1", "optim.min_meta_lr"),
    ("optim.min_meta_lr=-1e-5", "optim.min_meta_lr"),
    ("optim.grad_clip=-1", "optim.grad_clip"),
    ("sinusoid.k_shot=0", "sinusoid.k_shot"),
    ("sinusoid.k_query=0", "sinusoid.k_query"),
    ("sinusoid.amplitude=[3,1]", "sinusoid.amplitude"),
    ("sinusoid.phase=[2,1]", "sinusoid.phase"),
    ("sinusoid.x_range=[5,-5]", "sinusoid.x_range"),
    ("sinusoid.hidden=[20,0]", "sinusoid.hidden"),
    ("omniglot.ways=0", "omniglot.ways"),
    ("omniglot.shots=0", "omniglot.shots"),
    ("omniglot.queries=0", "omniglot.queries"),
    ("omniglot.train_characters=0", "omniglot.train_characters"),
    ("omniglot.test_steps=0", "omniglot.test_steps"),
    ("omniglot.queries=20", "omniglot.queries"),  # shots + queries > 20 drawings
    ("omniglot.split=random", "omniglot.split"),
    ("omniglot.model=resnet", "omniglot.model"),
    ("rl.env=", "rl.env"),
    ("rl.horizon=0", "rl.horizon"),
    ("rl.trajectories=0", "rl.trajectories"),
    ("rl.cg_iters=0", "rl.cg_iters"),
    ("rl.ls_steps=0", "rl.ls_steps"),
    ("rl.ppo_epochs=0", "rl.ppo_epochs"),
    ("rl.max_task_retries=0", "rl.max_task_retries"),
    ("rl.max_kl=0", "rl.max_kl"),
    ("rl.cg_damping=0", "rl.cg_damping"),
    ("rl.task_timeout_s=0", "rl.task_timeout_s"),
    ("rl.init_std=0", "rl.init_std"),
    ("rl.min_std=0", "rl.min_std"),
    ("rl.ppo_clip=0", "rl.ppo_clip"),
    ("rl.gamma=0", "rl.gamma"),
    ("rl.gamma=1.5", "rl.gamma"),
    ("rl.gae_lambda=-0.1", "rl.gae_lambda"),
    ("rl.ls_ratio=1", "rl.ls_ratio"),
    ("rl.num_workers=-1", "rl.num_workers"),
    ("rl.hidden=[0]", "rl.hidden"),
    ("rl.inner_loss=ppo", "rl.inner_loss"),
    ("rl.outer=sgd", "rl.outer"),
    ("rl.backend=dask", "rl.backend"),
    ("eval.test_tasks=0", "eval.test_tasks"),
    ("eval.goals=0", "eval.goals"),
    ("eval.query_points=0", "eval.query_points"),
    ("eval.shots=[]", "eval.shots"),
    ("eval.shots=[5,0]", "eval.shots"),
    ("eval.steps=[-1]", "eval.steps"),
    ("eval.rl_steps=-1", "eval.rl_steps"),
    ("eval.trajectories=-1", "eval.trajectories"),
    ("eval.step_decay=0", "eval.step_decay"),
]


@pytest.mark.parametrize(("override", "key"), VALIDATION_CASES, ids=[c[0] for c in VALIDATION_CASES])
def test_every_validation_rule_raises_a_config_error_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config("sinusoid", [override])
    message = str(info.value)
    assert key in message
    assert "\n" not in message


def test_boundary_values_are_accepted() -> None:
    cfg = build_config("sinusoid", [
        "maml.inner_steps=0", "maml.first_order_until=1", "maml.msl_anneal_fraction=0", "optim.min_meta_lr=0",
        "optim.grad_clip=0", "eval.steps=[0]",
        "sinusoid.amplitude=[1,1]", "omniglot.shots=5", "omniglot.queries=15",
    ])
    assert cfg.maml.inner_steps == 0
    rl = build_config("nav2d", ["rl.gamma=1", "rl.gae_lambda=0", "rl.num_workers=0"])  # the RL keys on an RL run
    assert (rl.rl.gamma, rl.rl.gae_lambda) == (1, 0)


def test_validate_checks_a_config_built_in_code() -> None:
    cfg = build_config("sinusoid")
    validate(cfg)
    bad = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, meta_batch=0))
    with pytest.raises(ConfigError, match="optim.meta_batch"):
        validate(bad)
    bad = dataclasses.replace(cfg, maml=dataclasses.replace(cfg.maml, inner_lr=math.nan))
    with pytest.raises(ConfigError, match="maml.inner_lr"):
        validate(bad)


# ---- field help ----------------------------------------------------------------------------------------------------


def test_field_help_documents_every_leaf_key_with_its_default() -> None:
    rows = field_help()
    keys = [key for key, _, _ in rows]
    assert keys == _leaf_keys()
    assert len(keys) == len(set(keys))
    assert all(doc.strip() for _, _, doc in rows), [key for key, _, doc in rows if not doc.strip()]
    defaults = {key: default for key, default, _ in rows}
    assert defaults["maml.inner_lr"] == "0.01"
    assert defaults["sinusoid.hidden"] == "[40, 40]"


def test_string_fields_keep_the_override_text_as_typed() -> None:
    cfg = build_config("sinusoid", ["run.name=yes", "run.dir=007"])
    assert (cfg.run.name, cfg.run.dir) == ("yes", "007")
