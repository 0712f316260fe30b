"""The limits that :mod:`rlmaml.config` enforces, and the checks that apply them.

The tables (data): file and YAML sizes, string lengths, the upper bound of every count, bounds on the work of
one iteration, and which keys each experiment reads. Every bound is far above any real run (the shipped
presets use at most 1/100 of each) and low enough that a typo such as ``rl.horizon=100000000000`` is refused
in one line before any work, instead of an out-of-memory error or a week-long first iteration after the run
directory exists. The checks raise :class:`LimitError`, which :mod:`rlmaml.config` turns into a ConfigError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import yaml

MAX_FILE_BYTES = 1_000_000
"""A config or preset file larger than this is refused unread (a resolved config.yaml is about 3 kB)."""
MAX_ALIASES = 100
"""YAML aliases (``*name``) one document may use; the presets use none."""
MAX_NODES = 10_000
"""Values (scalars, lists, mappings) one config may hold once aliases are expanded (a full config has ~150)."""
MAX_OVERRIDE_CHARS = 8_192
"""Characters of one ``key=value`` override (a 4096-character path fits)."""
MAX_DEPTH = 32
"""Nesting levels of lists and mappings (a config has 3)."""

MAX_STRING = 256
"""Characters of any string setting not in :data:`STRING_LIMITS`."""
STRING_LIMITS: dict[str, int] = {
    "run.name": 200,  # run.name-YYYYmmdd-HHMMSS-N must fit a 255-byte file name
    "run.dir": 4096,
    "omniglot.root": 4096,
    "omniglot.cache_dir": 4096,
    "eval.goals_file": 4096,
    "rl.task_distribution": 512,
}

MAX_WIDTH = 16_384
"""Units of one hidden layer."""
TUPLE_LIMITS: dict[str, int] = {"sinusoid.hidden": 32, "rl.hidden": 32, "eval.shots": 32, "eval.steps": 32}
"""Entries of each list setting (hidden layers; evaluated shots and steps)."""

INT_BOUNDS: dict[str, int] = {
    "run.iterations": 10_000_000,
    "run.checkpoint_every": 10_000_000,
    "run.keep_checkpoints": 1_000,
    "run.log_every": 10_000_000,
    "run.max_consecutive_failures": 100_000,
    "maml.inner_steps": 1_000,
    "optim.meta_batch": 100_000,
    "sinusoid.k_shot": 100_000,
    "sinusoid.k_query": 100_000,
    "sinusoid.hidden": MAX_WIDTH,
    "omniglot.ways": 10_000,
    "omniglot.train_characters": 1_000_000,
    "omniglot.test_steps": 1_000,
    "rl.horizon": 100_000,
    "rl.trajectories": 100_000,
    "rl.hidden": MAX_WIDTH,
    "rl.cg_iters": 10_000,
    "rl.ls_steps": 10_000,
    "rl.ppo_epochs": 10_000,
    "rl.num_workers": 10_000,
    "rl.tasks_per_call": 100_000,
    "rl.env_threads": 1024,
    "rl.frame_skip": 1_000,
    "rl.max_task_retries": 1_000,
    "eval.test_tasks": 1_000_000,
    "eval.shots": 100_000,
    "eval.steps": 1_000,
    "eval.query_points": 1_000_000,
    "eval.goals": 100_000,
    "eval.rl_steps": 1_000,
    "eval.trajectories": 100_000,
}
"""Inclusive upper bound of every count (for a tuple setting: of each entry). Seeds have their own rule."""

FLOAT_BOUNDS: dict[str, float] = {
    "run.time_limit_min": 10_000_000.0,  # 19 years
    "rl.task_timeout_s": 1_000_000.0,  # 11.6 days per task; times tasks_per_call must stay a usable timeout
}

MAX_RL_STEPS_PER_ITERATION = 1_000_000_000
"""Env steps of one RL meta-iteration: meta_batch x trajectories x horizon x (inner_steps + 1)."""
MAX_RL_EVAL_STEPS = 1_000_000_000
"""Env steps of an RL evaluation: goals x trajectories x horizon x (rl_steps + 1)."""
MAX_SINUSOID_POINTS = 100_000_000
"""Points of one sinusoid meta-batch: meta_batch x (k_shot + k_query)."""
MAX_OMNIGLOT_IMAGES = 1_000_000
"""Images of one Omniglot meta-batch: meta_batch x ways x (shots + queries)."""

SUPERVISED_ONLY = (
    "maml.first_order_until", "maml.learn_inner_lr", "maml.multi_step_loss", "maml.msl_anneal_fraction",
    "maml.batching", "optim.cosine", "optim.min_meta_lr", "optim.grad_clip", "sinusoid", "omniglot",
    "eval.test_tasks", "eval.shots", "eval.steps", "eval.query_points",
)
"""Keys (or whole sections) that only the supervised trainers and evaluation read."""
RL_ONLY = (
    "rl", "eval.goals", "eval.goals_file", "eval.rl_steps", "eval.trajectories", "eval.step_decay", "eval.batch",
    "eval.init",
)
"""Keys (or whole sections) that only meta-RL reads."""
LAUNCH_KEYS = ("rl.backend", "rl.address")
"""RL-only keys accepted on any run: the command line's --backend and --address set them whatever the experiment."""

RECURSIVE = "a value that contains itself (a recursive YAML alias)"
TOO_MANY = f"more than {MAX_NODES:,} values, counting every use of a YAML alias (an alias bomb?)"


class LimitError(Exception):
    """A value beyond one of these limits; :mod:`rlmaml.config` turns it into a one-line ConfigError."""


def show(value: Any) -> str:
    """repr of a value, shortened to 60 characters (with the length of a long string)."""
    try:
        text = repr(list(value) if isinstance(value, tuple) else value)
    except ValueError:  # an int of more than 4300 digits
        return f"an integer of {value.bit_length():,} bits" if isinstance(value, int) else "a value without a repr"
    if len(text) <= 60:
        return text
    return text[:50] + "..." + (f" ({len(value):,} characters)" if isinstance(value, str) else "")


# ---- bounded YAML ----------------------------------------------------------------------------------------------


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that stops composing past :data:`MAX_ALIASES` aliases or :data:`MAX_NODES` values."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = self.nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise LimitError(TOO_MANY)
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise LimitError(f"more than {MAX_ALIASES} YAML aliases (*name); a config needs none")
        return super().compose_node(parent, index)


def _node_children(node: Any) -> list[Any]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else []


def _data_children(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    return list(value) if isinstance(value, list | tuple) else []


def _check_tree(root: Any, children: Callable[[Any], list[Any]]) -> None:
    """Refuse a tree that contains itself, nests deeper than MAX_DEPTH or expands past MAX_NODES values."""
    sizes: dict[int, int] = {}  # a shared subtree (an alias) is walked once and counted once per use
    active: set[int] = set()

    def size(node: Any, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise LimitError(RECURSIVE)
        if depth > MAX_DEPTH:
            raise LimitError(f"values nested more than {MAX_DEPTH} levels deep")
        active.add(key)
        total = 1
        for child in children(node):
            total += size(child, depth + 1)
            if total > MAX_NODES:
                raise LimitError(TOO_MANY)
        active.discard(key)
        sizes[key] = total
        return total

    size(root, 0)


def check_data(data: Any) -> None:
    """Plain data (e.g. a config.yaml read elsewhere) within MAX_DEPTH and MAX_NODES; LimitError otherwise."""
    _check_tree(data, _data_children)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` within MAX_ALIASES, MAX_NODES and MAX_DEPTH: raises yaml.YAMLError or LimitError.

    The aliases are counted, and the expanded size measured, on the composed node graph, before any Python
    object is built, so a billion-laughs document is refused in milliseconds.
    """
    loader = _BoundedLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:  # PyYAML composes recursively: '[[[[...' a million deep
            raise LimitError(f"values nested more than {MAX_DEPTH} levels deep") from None
        if node is None:
            return None
        _check_tree(node, _node_children)
        try:
            return loader.construct_document(node)
        except ValueError as exc:  # e.g. an integer of more than 4300 digits, or the date 2001-13-45
            raise LimitError(f"a value YAML cannot build ({str(exc).splitlines()[0].split(';')[0]})") from None
    finally:
        loader.dispose()


# ---- bounds of a built config ----------------------------------------------------------------------------------


def leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf field of a config dataclass."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def check_leaves(items: Iterable[tuple[str, Any]]) -> None:
    """String lengths, count bounds, list lengths and the two float limits of (dotted key, value) items."""
    for key, value in items:
        if isinstance(value, str):
            limit = STRING_LIMITS.get(key, MAX_STRING)
            if len(value) > limit:
                raise LimitError(f"{key} is {len(value):,} characters long; the most is {limit} (got {show(value)})")
            if "\x00" in value:
                raise LimitError(f"{key} must not contain a NUL character, got {show(value)}")
        if key in TUPLE_LIMITS and len(value) > TUPLE_LIMITS[key]:
            raise LimitError(f"{key} has {len(value)} entries; the most is {TUPLE_LIMITS[key]}")
        for v in (value if isinstance(value, tuple) else (value,)) if key in INT_BOUNDS else ():
            if type(v) is not int or v > INT_BOUNDS[key]:
                raise LimitError(f"{key} must be an integer of at most {INT_BOUNDS[key]:,}, got {show(v)}")
        if key in FLOAT_BOUNDS and value > FLOAT_BOUNDS[key]:
            raise LimitError(f"{key} must be at most {FLOAT_BOUNDS[key]:g}, got {value!r}")


def _product(names: str, values: tuple[int, ...], unit: str, most: int) -> None:
    total = 1
    for v in values:
        total *= v
    if total > most:
        raise LimitError(f"{names} = {' x '.join(map(str, values))} = {total:,} {unit}; the most is {most:,} "
                         "(lower one of them)")


def check_work(cfg: Any) -> None:
    """Bounds on the work of one iteration (and of an RL evaluation) of the configured experiment."""
    r, e, o, batch = cfg.rl, cfg.eval, cfg.omniglot, cfg.optim.meta_batch
    if cfg.experiment == "rl":
        _product("optim.meta_batch x rl.trajectories x rl.horizon x (maml.inner_steps + 1)",
                 (batch, r.trajectories, r.horizon, cfg.maml.inner_steps + 1), "env steps per iteration",
                 MAX_RL_STEPS_PER_ITERATION)
        _product("eval.goals x eval.trajectories (or rl.trajectories) x rl.horizon x (eval.rl_steps + 1)",
                 (e.goals, e.trajectories or r.trajectories, r.horizon, e.rl_steps + 1), "env steps of evaluation",
                 MAX_RL_EVAL_STEPS)
    elif cfg.experiment == "sinusoid":
        _product("optim.meta_batch x (sinusoid.k_shot + sinusoid.k_query)",
                 (batch, cfg.sinusoid.k_shot + cfg.sinusoid.k_query), "points per iteration", MAX_SINUSOID_POINTS)
    else:
        _product("optim.meta_batch x omniglot.ways x (omniglot.shots + omniglot.queries)",
                 (batch, o.ways, o.shots + o.queries), "images per iteration", MAX_OMNIGLOT_IMAGES)


def check_applies(experiment: str, items: Iterable[tuple[str, Any]], defaults: dict[str, Any]) -> None:
    """Refuse a non-default value of a key that ``experiment`` does not read (so that every setting means something)."""
    if experiment == "rl":
        refused, why = SUPERVISED_ONLY, "applies only to supervised runs (experiment=sinusoid or omniglot)"
    else:
        refused, why = RL_ONLY, "applies only to meta-RL runs (experiment=rl)"
    for key, value in items:
        if key in LAUNCH_KEYS or not any(key == p or key.startswith(p + ".") for p in refused):
            continue
        if value != defaults[key]:
            raise LimitError(f"{key}={show(value)} {why}; experiment={experiment} does not read it (leave it out, "
                             f"or at its default {show(defaults[key])})")
