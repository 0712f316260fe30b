"""Frozen dataclass configs, YAML presets, dotted command-line overrides and validation.

A run's configuration is one :class:`Config`. It is built from a shipped preset (``rlmaml/presets/*.yaml``)
or a user YAML file, then dotted overrides such as ``maml.inner_lr=0.02``. OmegaConf structured configs do
the merging and the type checks; :func:`validate` checks ranges. Every mistake becomes a
:class:`ConfigError` with one line naming the bad key or value.

Each field's docstring (the string under it) is the help text that ``rlmaml train --help-config`` prints.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

PRESET_DIR = Path(__file__).parent / "presets"
EXPERIMENTS = ("sinusoid", "omniglot", "rl")


class ConfigError(ValueError):
    """A user's configuration mistake: the message is one line naming the bad key or value."""


@dataclass(frozen=True)
class RunConfig:
    """Where and how a run records itself."""

    name: str = ""
    """Run name; defaults to the preset name."""
    dir: str = ""
    """Run directory; defaults to runs/<name>-<timestamp>."""
    seed: int = 0
    """Seed of every random number in the run (tasks, initialisation, sampling)."""
    iterations: int = 1000
    """Number of meta-iterations (outer steps)."""
    checkpoint_every: int = 100
    """Write a checkpoint every this many iterations (and at the end)."""
    keep_checkpoints: int = 3
    """How many of the newest checkpoints to keep."""
    log_every: int = 10
    """Print a progress line every this many iterations when not on a terminal."""
    tensorboard: bool = False
    """Mirror metrics to TensorBoard (needs the tensorboard extra)."""
    max_consecutive_failures: int = 5
    """Stop the run after this many consecutive skipped (non-finite) updates."""
    device: str = "auto"
    """Learner device: auto (CUDA when available), cpu or cuda."""
    time_limit_min: float = 0.0
    """Stop (with a checkpoint) after this many minutes of training; 0 means no limit."""


@dataclass(frozen=True)
class MamlConfig:
    """The inner adaptation and the meta-objective (shared by every domain)."""

    inner_lr: float = 0.01
    """Inner-loop step size alpha."""
    inner_steps: int = 1
    """Inner gradient steps during meta-training (0 trains the 'pretrained on all tasks' baseline)."""
    first_order: bool = False
    """Drop the second-order terms (first-order MAML)."""
    first_order_until: float = 0.0
    """Fraction of training run first order before switching to second order (MAML++ annealing)."""
    learn_inner_lr: bool = False
    """Learn one inner step size per parameter tensor and per step (MAML++ LSLR / Meta-SGD)."""
    multi_step_loss: bool = False
    """Weight the outer loss over every inner step, annealed toward the last (MAML++ MSL)."""
    msl_anneal_fraction: float = 0.1
    """Fraction of training over which the multi-step-loss weights anneal to the last step."""
    batching: str = "auto"
    """How tasks are batched in the meta-objective: auto, vmap or loop."""


@dataclass(frozen=True)
class OptimConfig:
    """The outer (meta) optimiser for the supervised experiments, and the meta-batch for all."""

    meta_lr: float = 1e-3
    """Adam learning rate of the meta-update (PPO outer step for RL)."""
    meta_batch: int = 25
    """Tasks per meta-iteration."""
    cosine: bool = False
    """Cosine-anneal the meta learning rate (MAML++)."""
    min_meta_lr: float = 1e-5
    """Floor of the cosine schedule."""
    grad_clip: float = 0.0
    """Clip the meta-gradient norm to this value (0 disables)."""


@dataclass(frozen=True)
class SinusoidConfig:
    """Sinusoid regression tasks y = A sin(x - phase) (paper section 5.1)."""

    k_shot: int = 10
    """Support points per task during training."""
    k_query: int = 10
    """Query points per task during training."""
    amplitude: tuple[float, float] = (0.1, 5.0)
    """Range of the amplitude A."""
    phase: tuple[float, float] = (0.0, math.pi)
    """Range of the phase."""
    x_range: tuple[float, float] = (-5.0, 5.0)
    """Range of the inputs x."""
    hidden: tuple[int, ...] = (40, 40)
    """Hidden layer widths of the ReLU MLP."""


@dataclass(frozen=True)
class OmniglotConfig:
    """Few-shot Omniglot classification (paper section 5.2)."""

    root: str = ""
    """Folder holding images_background.zip and images_evaluation.zip (or $RLMAML_DATA)."""
    cache_dir: str = ""
    """Where the resized 28x28 array is cached (default ~/.cache/rlmaml)."""
    ways: int = 5
    """Classes per task (N)."""
    shots: int = 1
    """Support images per class (K)."""
    queries: int = 15
    """Query images per class."""
    split: str = "paper"
    """'paper' (1200 train / 423 test characters, seeded) or 'alphabet' (background / evaluation)."""
    train_characters: int = 1200
    """Training characters in the paper split."""
    split_seed: int = 1
    """Seed of the paper split."""
    rotations: bool = True
    """Add 90/180/270 degree rotations as new training classes."""
    model: str = "conv"
    """'conv' (4 x conv64-BN-ReLU, stride 2) or 'mlp' (256-128-64-64)."""
    per_step_bn: bool = False
    """Separate batch-norm weights per inner step (MAML++ BNWB)."""
    test_steps: int = 3
    """Inner steps at test time."""


@dataclass(frozen=True)
class RLConfig:
    """Meta-reinforcement learning: tasks, sampling, policy and the TRPO outer step (paper section 5.3)."""

    env: str = "rlmaml/Navigation2D-v0"
    """Gymnasium id of the task family."""
    env_module: str = ""
    """Module to import before making the env (for user envs that register themselves)."""
    task_distribution: str = ""
    """'module:Class' of the task distribution; empty uses the one registered for the env id."""
    horizon: int = 100
    """Steps per trajectory (H)."""
    trajectories: int = 20
    """Trajectories per task for each of D_train and D_val (K)."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 1.0
    """GAE lambda."""
    hidden: tuple[int, ...] = (100, 100)
    """Hidden widths of the policy MLP."""
    init_std: float = 1.0
    """Initial policy standard deviation."""
    min_std: float = 1e-6
    """Lower bound on the policy standard deviation."""
    normalize_actions: bool = True
    """The policy acts in [-1, 1], rescaled to the env's (finite) Box bounds, as rllab's normalize() did for the
    paper; init_std is then relative to the action range. False: the policy's action goes to the env as is."""
    inner_loss: str = "reinforce"
    """Inner policy-gradient estimator: 'reinforce' (the paper's) or 'lvc' (unbiased, ProMP)."""
    outer: str = "trpo"
    """Outer optimiser: 'trpo' (the paper's) or 'ppo' (clipped surrogate with Adam, ProMP-style)."""
    max_kl: float = 0.01
    """TRPO trust region (mean KL of post-update policies)."""
    cg_iters: int = 10
    """Conjugate-gradient iterations."""
    cg_damping: float = 1e-5
    """Damping added to the KL Hessian."""
    cg_task_fraction: float = 1.0
    """Fraction of the meta-batch's tasks whose exact KL curvature CG uses (1.0: all, as the paper)."""
    compile: bool = False
    """Run the TRPO direction (meta-gradient and CG) and the line search's evaluations through torch.compile: the
    same numbers up to float rounding, faster after a one-off compile per run (1-2 minutes on a 2-core CPU with a
    cold cache). Needs rl.batch=trajectories. Falls back to eager, with a warning, if compiling fails."""
    ls_steps: int = 15
    """Backtracking line-search steps."""
    ls_ratio: float = 0.8
    """Backtracking ratio."""
    ls_kl_extrapolate: bool = False
    """After a line-search candidate rejected for its KL, skip the candidates whose KL, extrapolated as quadratic
    in the step length, is still over max_kl, less one (fewer evaluations; the paper's search is False)."""
    ppo_clip: float = 0.2
    """Clip range of the PPO outer objective."""
    ppo_epochs: int = 5
    """Adam epochs per iteration of the PPO outer objective."""
    backend: str = "ray"
    """'ray' (actors; a local Ray is started if no address) or 'local' (in-process, no Ray)."""
    address: str = ""
    """Ray address to join ('auto' or host:port); empty starts a local Ray."""
    num_workers: int = 0
    """Rollout actors; 0 means the cluster's CPUs minus what the learner needs."""
    batch: str = "trajectories"
    """What one batch of a task is. 'trajectories': rl.trajectories episodes. 'steps': rllab's batches, as the
    paper's code sampled them: the episodes that rl.trajectories auto-reset envs complete within
    trajectories x H steps (more, and shorter, episodes where episodes end early; see eval.batch). Every
    episode is a column of H steps and tasks are padded to the largest count, so the learner's work grows with
    the number of episodes, not of steps."""
    tasks_per_call: int = 0
    """Tasks per Ray actor call, sampled together (one policy forward per step for all of them); 0 means
    ceil(meta_batch / (2 * actors)): two calls per actor."""
    task_timeout_s: float = 300.0
    """Seconds per task before a rollout call is cancelled and resubmitted (a call of n tasks gets n times it)."""
    max_task_retries: int = 3
    """Resubmissions of one task before the iteration fails."""
    dashboard_host: str = "127.0.0.1"
    """Interface the embedded Ray dashboard binds to."""


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation of adaptation to new tasks."""

    seed: int = 1234
    """Seed of the test tasks (distinct from training)."""
    test_tasks: int = 600
    """Supervised test tasks."""
    shots: tuple[int, ...] = (5, 10, 20)
    """Supervised: support sizes K to evaluate."""
    steps: tuple[int, ...] = (1, 5, 10)
    """Supervised: report the loss after these inner steps."""
    query_points: int = 100
    """Sinusoid: query points per test task."""
    goals: int = 40
    """RL: number of test goals."""
    goals_file: str = ""
    """RL: a YAML/JSON list of task dicts to evaluate instead of sampled goals."""
    rl_steps: int = 3
    """RL: policy-gradient steps at test time (returns after 0..rl_steps)."""
    trajectories: int = 0
    """RL: trajectories per step (0 uses rl.trajectories)."""
    step_decay: float = 0.5
    """RL: step size alpha for the first step, alpha * step_decay after (the paper's alpha/2)."""
    batch: str = "trajectories"
    """RL: what one test-time batch is. 'trajectories': eval.trajectories episodes. 'steps': as rllab sampled
    for the paper's test scripts, the episodes that eval.trajectories auto-reset envs complete within
    trajectories x H steps (more, and shorter, episodes wherever episodes can end early, as in 2D navigation)."""
    init: str = "checkpoint"
    """RL: evaluate the checkpoint's θ, or 'random' for the untrained initialisation (the paper's baseline)."""


@dataclass(frozen=True)
class Config:
    """A whole rlmaml run."""

    experiment: str = "sinusoid"
    """Which experiment: sinusoid, omniglot or rl."""
    run: RunConfig = field(default_factory=RunConfig)
    maml: MamlConfig = field(default_factory=MamlConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sinusoid: SinusoidConfig = field(default_factory=SinusoidConfig)
    omniglot: OmniglotConfig = field(default_factory=OmniglotConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def preset_names() -> list[str]:
    """The shipped presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping, got {type(data).__name__}")
    return data


def preset_dict(preset: str) -> dict[str, Any]:
    """The raw mapping of a shipped preset name or a YAML file path."""
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return _read_yaml(path)
    shipped = PRESET_DIR / f"{preset}.yaml"
    if not shipped.is_file():
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(preset_names())} or a .yaml file")
    return _read_yaml(shipped)


def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, value = item.split("=", 1)
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    return key.strip(), value


def _parse_value(text: str) -> Any:
    """YAML scalar/list parsing as OmegaConf's dotlist does, so '1e-3' becomes a float."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
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
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
            node = child
        node[leaf] = value
    return dotted


def build_config(preset: str | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Merge defaults, a preset and dotted overrides into a validated :class:`Config`."""
    base = OmegaConf.structured(Config)
    OmegaConf.set_readonly(base, False)
    layer = preset_dict(preset) if isinstance(preset, str) else preset
    items = []
    for item in overrides:
        key, text = _split_override(item)
        # A str field keeps the text as typed (YAML would turn 'yes' into True and '007' into 7).
        items.append((item, key, text if _field_type(key) is str else _parse_value(text)))
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
                message = f"bad value in override {item!r}: {message}"
            elif getattr(exc, "full_key", None) is None or "$VALUE" in message:
                message = f"bad value in override {item!r}: {str(exc).splitlines()[0].split(':')[0]}"
                message = message.replace("'$VALUE' of type '$VALUE_TYPE' ", "")
            raise ConfigError(message) from None
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_friendly(exc)) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    if isinstance(preset, str) and not cfg.run.name:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=Path(preset).stem))
    validate(cfg)
    return cfg


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
    _choice(cfg.run.device, "run.device", ("auto", "cpu", "cuda"))
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
    for key in ("max_kl", "cg_damping", "task_timeout_s", "init_std", "min_std", "ppo_clip"):
        _positive(getattr(r, key), f"rl.{key}")
    _require(0 < r.gamma <= 1, f"rl.gamma must be in (0, 1], got {r.gamma}")
    _require(0 <= r.gae_lambda <= 1, f"rl.gae_lambda must be in [0, 1], got {r.gae_lambda}")
    _require(0 < r.ls_ratio < 1, f"rl.ls_ratio must be in (0, 1), got {r.ls_ratio}")
    _require(0 < r.cg_task_fraction <= 1, f"rl.cg_task_fraction must be in (0, 1], got {r.cg_task_fraction}")
    _require(r.num_workers >= 0, f"rl.num_workers must be >= 0, got {r.num_workers}")
    _require(r.tasks_per_call >= 0, f"rl.tasks_per_call must be >= 0, got {r.tasks_per_call}")
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


def _require_finite(obj: Any, prefix: str = "") -> None:
    """Every float of the config (scalars and tuple items) must be finite, whatever its own range rule."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _require_finite(value, f"{prefix}{f.name}.")
            continue
        for v in value if isinstance(value, tuple) else (value,):
            _require(not isinstance(v, float) or math.isfinite(v), f"{prefix}{f.name} must be finite, got {v!r}")


def field_help(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, docstring) for every leaf field, read from the attribute docstrings."""
    import inspect

    docs = _attribute_docs(cls)
    rows: list[tuple[str, str, str]] = []
    instance = cls()
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            rows.extend(field_help(type(value), key + "."))
        else:
            shown = list(value) if isinstance(value, tuple) else value
            rows.append((key, repr(shown), docs.get(f.name, inspect.getdoc(type(value)) or "")))
    return rows


def _attribute_docs(cls: type) -> dict[str, str]:
    """Map field name -> the string literal placed under it in the class body."""
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[node.target.id] = nxt.value.value.strip()
    return docs
