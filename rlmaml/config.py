"""Frozen dataclass configs, YAML presets, dotted command-line overrides and validation.

A run's configuration is one :class:`Config`. It is built from a shipped preset (``rlmaml/presets/*.yaml``)
or a user YAML file, then dotted overrides such as ``maml.inner_lr=0.02``. OmegaConf structured configs do
the merging and the type checks; :func:`validate` checks ranges, the upper bounds of
:mod:`rlmaml.config_bounds` and that no key is set that the experiment does not read. Config files are read
with bounded size, aliases and depth. Every mistake becomes a :class:`ConfigError` with one line naming the
bad key or value.

Each field's docstring (the string under it) is the help text that ``rlmaml train --help-config`` prints.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlmaml import config_bounds as B
from rlmaml.config_bounds import show as _show
from rlmaml.config_schema import (  # noqa: F401  (re-exported: the config's public names)
    Config,
    ConfigError,
    EvalConfig,
    MamlConfig,
    OmniglotConfig,
    OptimConfig,
    RLConfig,
    RunConfig,
    SinusoidConfig,
    field_help,
)

PRESET_DIR = Path(__file__).parent / "presets"
EXPERIMENTS = ("sinusoid", "omniglot", "rl")
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]{1,3})?")


def preset_names() -> list[str]:
    """The shipped presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load`` of ``text`` with bounded aliases, size and depth; ConfigError naming ``what`` else."""
    if len(text) > B.MAX_FILE_BYTES:
        raise ConfigError(f"{what} is {len(text):,} characters long; the most is {B.MAX_FILE_BYTES:,}")
    try:
        return B.load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot read {what}: {str(exc).splitlines()[0]}") from None
    except B.LimitError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML config file (a preset, a user file or a run's config.yaml), read within the limits.

    An unreadable, oversize, non-UTF-8, empty, non-YAML or non-mapping file is a one-line ConfigError naming it.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(B.MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {str(exc).splitlines()[0]}") from None
    if len(raw) > B.MAX_FILE_BYTES:
        raise ConfigError(f"config {path} is larger than {B.MAX_FILE_BYTES:,} bytes; a config file is a few kB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {raw[exc.start:exc.start + 1]!r} at offset "
                          f"{exc.start}); a config file is YAML text") from None
    data = load_yaml(text, f"config {path}")
    if data is None:
        raise ConfigError(f"config {path} is empty; it needs a mapping of settings, e.g. 'experiment: rl'")
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping, got {type(data).__name__}")
    return data


def preset_dict(preset: str) -> dict[str, Any]:
    """The raw mapping of a shipped preset name or a YAML file path."""
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return read_config_file(path)
    shipped = PRESET_DIR / f"{preset}.yaml"
    if not shipped.is_file():
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(preset_names())} or a .yaml file")
    return read_config_file(shipped)


def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {_show(item)} is not of the form key=value")
    key, value = item.split("=", 1)
    if not key:
        raise ConfigError(f"override {_show(item)} has an empty key")
    if len(item) > B.MAX_OVERRIDE_CHARS:
        raise ConfigError(f"override of {_show(key.strip())} is {len(item):,} characters long; the most is "
                          f"{B.MAX_OVERRIDE_CHARS:,}")
    return key.strip(), value


def _parse_value(text: str, item: str) -> Any:
    """YAML scalar/list parsing as OmegaConf's dotlist does, so '1e-3' becomes a float."""
    try:
        return B.load_yaml(text) if text != "" else ""
    except B.LimitError as exc:
        raise ConfigError(f"bad value in override {_show(item)}: {exc}") from None
    except yaml.YAMLError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text


def _friendly(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "a value that contains itself (a recursive YAML alias)"
    key = getattr(exc, "full_key", None)
    msg = str(exc).splitlines()[0]
    msg = msg.replace("of type 'str' ", "").replace("'Config'", "the config")
    if "not in" in msg and key:
        return f"unknown config key {key!r}"
    return f"bad value for {key!r}: {msg}" if key else msg


def _field_type(key: str) -> Any:
    """The declared type of a dotted config key, or None if it is not a leaf field."""
    cls: Any = Config
    for part in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if part not in fields:
            return None
        cls = fields[part].type
        if isinstance(cls, str):  # postponed annotations
            cls = eval(cls, globals())  # noqa: S307 - our own annotations only
    return cls


def _nested(items: list[tuple[str, str, Any]]) -> dict[str, Any]:
    """{'a.b': v} overrides as a nested mapping."""
    dotted: dict[str, Any] = {}
    for item, key, value in items:
        node = dotted
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {_show(item)} conflicts with an earlier override of {part!r}")
            node = child
        node[leaf] = value
    return dotted


def build_config(preset: str | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Merge defaults, a preset and dotted overrides into a validated :class:`Config`."""
    base = OmegaConf.structured(Config)
    OmegaConf.set_readonly(base, False)
    layer = preset_dict(preset) if isinstance(preset, str) else preset
    if not isinstance(layer, dict):
        raise ConfigError("config is empty" if layer is None else f"config must be a mapping, got {type(layer).__name__}")
    try:
        B.check_data(layer)  # e.g. a run's config.yaml read elsewhere with yaml.safe_load
    except B.LimitError as exc:
        raise ConfigError(f"config: {exc}") from None
    items = []
    for item in overrides:
        key, text = _split_override(item)
        # A str field keeps the text as typed (YAML would turn 'yes' into True and '007' into 7).
        items.append((item, key, text if _field_type(key) is str else _parse_value(text, item)))
    try:
        merged = OmegaConf.merge(base, OmegaConf.create(layer))
    except (OmegaConfBaseException, TypeError, RecursionError) as exc:
        raise ConfigError(f"preset {preset if isinstance(preset, str) else ''}: {_friendly(exc)}") from None
    for item, key, value in items:  # one at a time, so an error can always name its override
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(_nested([(item, key, value)])))
        except (OmegaConfBaseException, TypeError, RecursionError) as exc:  # e.g. rl.hidden.0=1, rl.hidden=&a [*a]
            message = _friendly(exc)
            if isinstance(exc, RecursionError):
                message = f"bad value in override {_show(item)}: {message}"
            elif getattr(exc, "full_key", None) is None or "$VALUE" in message:
                message = f"bad value in override {_show(item)}: {str(exc).splitlines()[0].split(':')[0]}"
                message = message.replace("'$VALUE' of type '$VALUE_TYPE' ", "")
            raise ConfigError(message) from None
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_friendly(exc)) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    if isinstance(preset, str) and not cfg.run.name:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=_run_name(preset, cfg)))
    validate(cfg)
    return cfg


def _run_name(preset: str, cfg: Config) -> str:
    """The preset's name; for ``custom``, the env's (``mytasks/PointLine-v0`` -> ``PointLine-v0``)."""
    name = Path(preset).stem
    if name != "custom":
        return name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", cfg.rl.env.rsplit("/", 1)[-1])[:100]


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a saved, resolved config (e.g. from a checkpoint or config.yaml)."""
    return build_config(data)


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain data (lists, not tuples), for YAML and checkpoints."""
    data = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    return yaml.safe_load(yaml.safe_dump(data, sort_keys=False))  # tuples become lists


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _positive(value: float, key: str) -> None:
    _require(isinstance(value, int | float) and math.isfinite(value) and value > 0,
             f"{key} must be positive, got {value!r}")


def _choice(value: str, key: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _range(pair: tuple[float, float], key: str) -> None:
    _require(len(pair) == 2 and all(math.isfinite(v) for v in pair) and pair[0] <= pair[1],
             f"{key} must be [low, high] with low <= high, got {list(pair)!r}")


def validate(cfg: Config) -> None:
    """Range checks that the type system cannot express; raises ConfigError naming the key."""
    _choice(cfg.experiment, "experiment", EXPERIMENTS)
    for key in ("iterations", "checkpoint_every", "keep_checkpoints", "log_every", "max_consecutive_failures"):
        _positive(getattr(cfg.run, key), f"run.{key}")
    _require(isinstance(cfg.run.device, str) and _DEVICE.fullmatch(cfg.run.device) is not None,
             f"run.device must be auto, cpu, cuda or cuda:N (N a GPU index); got {_show(cfg.run.device)}")
    _require(math.isfinite(cfg.run.time_limit_min) and cfg.run.time_limit_min >= 0,
             f"run.time_limit_min must be >= 0, got {cfg.run.time_limit_min}")
    _positive(cfg.maml.inner_lr, "maml.inner_lr")
    _require(cfg.maml.inner_steps >= 0, f"maml.inner_steps must be >= 0, got {cfg.maml.inner_steps}")
    _require(0.0 <= cfg.maml.first_order_until <= 1.0,
             f"maml.first_order_until must be in [0, 1], got {cfg.maml.first_order_until}")
    _require(0.0 <= cfg.maml.msl_anneal_fraction <= 1.0,
             f"maml.msl_anneal_fraction must be in [0, 1], got {cfg.maml.msl_anneal_fraction}")
    _choice(cfg.maml.batching, "maml.batching", ("auto", "vmap", "loop"))
    _positive(cfg.optim.meta_lr, "optim.meta_lr")
    _positive(cfg.optim.meta_batch, "optim.meta_batch")
    _require(0 <= cfg.optim.min_meta_lr <= cfg.optim.meta_lr,
             f"optim.min_meta_lr must be in [0, optim.meta_lr], got {cfg.optim.min_meta_lr}")
    _require(cfg.optim.grad_clip >= 0, f"optim.grad_clip must be >= 0, got {cfg.optim.grad_clip}")

    s = cfg.sinusoid
    _positive(s.k_shot, "sinusoid.k_shot")
    _positive(s.k_query, "sinusoid.k_query")
    _range(s.amplitude, "sinusoid.amplitude")
    _range(s.phase, "sinusoid.phase")
    _range(s.x_range, "sinusoid.x_range")
    for width in s.hidden:
        _positive(width, "sinusoid.hidden")

    o = cfg.omniglot
    for key in ("ways", "shots", "queries", "train_characters", "test_steps"):
        _positive(getattr(o, key), f"omniglot.{key}")
    _require(o.shots + o.queries <= 20,
             f"omniglot.shots + omniglot.queries must be <= 20 drawings per character, got {o.shots + o.queries}")
    _choice(o.split, "omniglot.split", ("paper", "alphabet"))
    _choice(o.model, "omniglot.model", ("conv", "mlp"))

    r = cfg.rl
    _require(bool(r.env), "rl.env must name a Gymnasium id")
    for key in ("horizon", "trajectories", "cg_iters", "ls_steps", "ppo_epochs", "max_task_retries"):
        _positive(getattr(r, key), f"rl.{key}")
    for key in ("max_kl", "cg_damping", "init_std", "min_std", "ppo_clip"):
        _positive(getattr(r, key), f"rl.{key}")
    _require(math.isfinite(r.task_timeout_s) and r.task_timeout_s >= 0,
             f"rl.task_timeout_s must be > 0 seconds per task, or 0 to derive it from the measured task time; "
             f"got {r.task_timeout_s!r}")
    _choice(r.on_task_error, "rl.on_task_error", ("skip_task", "fail"))
    _require(0 < r.min_task_fraction <= 1, f"rl.min_task_fraction must be in (0, 1], got {r.min_task_fraction!r}")
    _require(0 < r.gamma <= 1, f"rl.gamma must be in (0, 1], got {r.gamma}")
    _require(0 <= r.gae_lambda <= 1, f"rl.gae_lambda must be in [0, 1], got {r.gae_lambda}")
    _require(0 < r.ls_ratio < 1, f"rl.ls_ratio must be in (0, 1), got {r.ls_ratio}")
    _require(0 < r.cg_task_fraction <= 1, f"rl.cg_task_fraction must be in (0, 1], got {r.cg_task_fraction}")
    _require(r.num_workers >= 0, f"rl.num_workers must be >= 0, got {r.num_workers}")
    _require(r.tasks_per_call >= 0, f"rl.tasks_per_call must be >= 0, got {r.tasks_per_call}")
    _require(r.env_threads >= 1, f"rl.env_threads must be >= 1, got {r.env_threads}")
    _require(r.frame_skip >= 0, f"rl.frame_skip must be >= 1, or 0 for the env's own, got {r.frame_skip}")
    _choice(r.batch, "rl.batch", ("trajectories", "steps"))
    _require(not (r.compile and r.outer == "ppo"), "rl.compile=true compiles the TRPO step; rl.outer=ppo has none to "
             "compile (set rl.compile=false)")
    _require(not (r.compile and r.batch == "steps"), "rl.compile=true needs rl.batch=trajectories: with "
             "rl.batch=steps the batch shapes change every iteration, and each new shape would compile again")
    for width in r.hidden:
        _positive(width, "rl.hidden")
    _choice(r.inner_loss, "rl.inner_loss", ("reinforce", "lvc"))
    _choice(r.outer, "rl.outer", ("trpo", "ppo"))
    _choice(r.backend, "rl.backend", ("ray", "local"))

    e = cfg.eval
    _positive(e.test_tasks, "eval.test_tasks")
    _positive(e.goals, "eval.goals")
    _positive(e.query_points, "eval.query_points")
    _require(len(e.shots) > 0 and all(k > 0 for k in e.shots), f"eval.shots must be positive, got {list(e.shots)}")
    _require(len(e.steps) > 0 and all(k >= 0 for k in e.steps), f"eval.steps must be >= 0, got {list(e.steps)}")
    _require(e.rl_steps >= 0, f"eval.rl_steps must be >= 0, got {e.rl_steps}")
    _require(e.trajectories >= 0, f"eval.trajectories must be >= 0, got {e.trajectories}")
    _positive(e.step_decay, "eval.step_decay")
    _choice(e.init, "eval.init", ("checkpoint", "random"))
    _choice(e.batch, "eval.batch", ("trajectories", "steps"))

    for key, seed in (("run.seed", cfg.run.seed), ("eval.seed", e.seed), ("omniglot.split_seed", o.split_seed)):
        _require(0 <= seed < 2**63, f"{key} must be in [0, 2**63), got {seed}")
    _require_finite(cfg)
    try:  # the upper bounds of rlmaml.config_bounds, then the keys that this experiment does not read
        B.check_leaves(B.leaves(cfg))
        B.check_work(cfg)
        B.check_applies(cfg.experiment, B.leaves(cfg), dict(B.leaves(Config())))
    except B.LimitError as exc:
        raise ConfigError(str(exc)) from None


def _require_finite(obj: Any, prefix: str = "") -> None:
    """Every float of the config (scalars and tuple items) must be finite, whatever its own range rule."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _require_finite(value, f"{prefix}{f.name}.")
            continue
        for v in value if isinstance(value, tuple) else (value,):
            _require(not isinstance(v, float) or math.isfinite(v), f"{prefix}{f.name} must be finite, got {v!r}")
