"""The configuration's schema: one frozen dataclass per section, each field with a one-line docstring.

The docstrings are the ``rlmaml train --help`` text (:func:`field_help`). Building, parsing and validating a
:class:`Config` is :mod:`rlmaml.config`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A user's configuration mistake: the message is one line naming the bad key or value."""

    def __init__(self, message: str) -> None:
        text = " ".join(str(message).splitlines())  # one line, and never a whole 10 MB value
        super().__init__(text if len(text) <= 1000 else text[:997] + "...")


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
    """Learner device: auto (CUDA when available), cpu, cuda or cuda:N."""
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
    frame_skip: int = 0
    """MuJoCo steps per action (the env's frame_skip); 0 keeps the env's own: 5 (Gymnasium v5) for HalfCheetah, 1
    (rllab's dt = 0.01 s, the paper's) for Ant."""
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
    """Fraction of the meta-batch's tasks whose exact KL curvature CG uses (1.0: all, as the paper); at least 5 tasks
    (or all, if fewer), as one or two tasks' curvature underestimates the meta-batch's."""
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
    env_threads: int = 1
    """Threads each rollout worker steps its MuJoCo simulations on (mujoco.batch; results do not depend on it). A Ray
    actor then reserves that many CPUs, so one actor per node with env_threads = its cores is a layout."""
    tasks_per_call: int = 0
    """Tasks per Ray actor call, sampled together (one policy forward per step for all of them); 0 means
    ceil(meta_batch / (2 * actors)): two calls per actor."""
    task_timeout_s: float = 300.0
    """Seconds per task before a rollout call is given up (a call of n tasks gets n times it): Ray kills and
    resubmits it, the local backend ends it. 0 derives it from the measured time: 300 s until one iteration has
    been sampled, then max(60 s, 10 x the slowest task seen so far)."""
    on_task_error: str = "skip_task"
    """A task whose rollout fails (an env exception, a timeout past its retries) or gives a non-finite number:
    'skip_task' drops it from the meta-batch and updates on the rest if at least rl.min_task_fraction of the
    tasks remain (else the update is skipped, counting towards run.max_consecutive_failures); 'fail' ends the
    run with one line naming the task and its seeds (the traceback goes to RUN/error.log)."""
    min_task_fraction: float = 0.75
    """With rl.on_task_error=skip_task: the fraction of the meta-batch's tasks that must remain for the update
    to go on without the dropped ones (e.g. 15 of 20)."""
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


def field_help(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, docstring) for every leaf field, read from the attribute docstrings."""

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
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[node.target.id] = nxt.value.value.strip()
    return docs
