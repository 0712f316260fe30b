"""The ``rlmaml`` command: train, eval, plot, report, presets.

Every user mistake (an unknown preset or key, a bad value, a missing run directory or checkpoint) ends in
one line on stderr and exit code 2, before any work starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from rlmaml.config import Config, ConfigError, build_config, field_help, preset_names
from rlmaml.devices import resolve_device
from rlmaml.loop import Interrupted
from rlmaml.runs import CheckpointError, RunDir, RunError, TrainingStopped

EXIT_USAGE = 2


def _config_epilog() -> str:
    rows = field_help()
    width = max(len(key) for key, _, _ in rows)
    lines = ["configuration keys (override any of them as key=value, e.g. maml.inner_lr=0.02):"]
    for key, default, doc in rows:
        lines.append(f"  {key:<{width}}  {doc} [default: {default}]")
    return "\n".join(lines)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line (and exit code 2), like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"rlmaml: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = OneLineParser(
        prog="rlmaml",
        description="Model-Agnostic Meta-Learning: meta-RL on Ray (TRPO outer step), sinusoid regression "
                    "and few-shot Omniglot, from one shared meta-update core.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="presets: " + ", ".join(preset_names()) + "\nRun 'rlmaml train --help' for every config key.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    train = sub.add_parser(
        "train", help="meta-train from a preset", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Meta-train from a shipped preset or a YAML file, with dotted overrides.",
        epilog=_config_epilog())
    train.add_argument("preset", nargs="?", help=f"preset name ({', '.join(preset_names())}) or a .yaml file")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. run.iterations=100")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last good checkpoint")
    train.add_argument("--address", help="Ray cluster to join ('auto' or host:port); default starts a local Ray")
    train.add_argument("--backend", choices=("ray", "local"), help="rollout backend for meta-RL (default: ray)")
    train.add_argument("--runs-dir", default="runs", help="parent folder of new run directories (default: runs)")

    ev = sub.add_parser("eval", help="evaluate adaptation of a trained run",
                        description="Load a run's checkpoint and evaluate few-shot / few-episode adaptation; "
                                    "writes eval.json, eval.csv and eval.png into the run directory.")
    ev.add_argument("run_dir", help="run directory")
    ev.add_argument("overrides", nargs="*", help="dotted overrides, e.g. eval.goals=10 eval.rl_steps=3")
    ev.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                    help="which checkpoint to evaluate (default: best, falling back to latest)")
    ev.add_argument("--compare", nargs="+", metavar="RUN", default=None,
                    help="also draw return against gradient steps for these evaluated runs (paper Fig. 4/5)")
    ev.add_argument("--video", action="store_true", help="record a video before and after adaptation (MuJoCo)")
    ev.add_argument("--backend", choices=("ray", "local"), help="rollout backend for meta-RL evaluation")
    ev.add_argument("--address", help="Ray cluster to join for evaluation sampling")

    plot = sub.add_parser("plot", help="learning curves from runs' metrics.jsonl",
                          description="Learning curves (mean ± std over the given runs) as a PNG.")
    plot.add_argument("runs", nargs="+", help="run directories (several seeds are averaged)")
    plot.add_argument("--out", default="", help="output PNG (default: learning_curves.png in the run, or in the "
                                                  "runs' common parent folder for several)")

    report = sub.add_parser("report", help="markdown reproduction table beside the paper's numbers",
                            description="Render a markdown table of evaluated runs against the paper.")
    report.add_argument("runs", nargs="+", help="evaluated run directories")
    report.add_argument("--out", default="", help="write the markdown here as well as to stdout")

    sub.add_parser("presets", help="list the shipped presets")
    return parser


def _train_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.backend:
        overrides.append(f"rl.backend={args.backend}")
    if args.address:
        overrides.append(f"rl.address={args.address}")
    if args.preset and "=" in args.preset:  # argparse took the first override for the preset
        overrides.insert(0, args.preset)
        args.preset = None
    return overrides


def _check_ready(cfg: Config) -> None:
    """Fail before any training work: the env, its module and spaces (RL), and the device."""
    if cfg.experiment == "rl":
        from rlmaml.rl.build import check_rl_config

        check_rl_config(cfg)
    resolve_device(cfg.run.device)  # run.device=cuda without a GPU is a usage error before the run dir exists


def check_resume_seed(cfg: Config, checkpoint: dict, overrides: list[str], run: RunDir) -> None:
    """A resume continues the checkpoint's random streams, which derive from its seed: refuse another seed."""
    seed = (checkpoint.get("rng") or {}).get("seed") if isinstance(checkpoint.get("rng"), dict) else None
    if seed is None or int(seed) == cfg.run.seed:
        return
    given = any(o.split("=", 1)[0].strip() == "run.seed" for o in overrides)
    source = "given on the command line" if given else f"in {run.path / 'config.yaml'}"
    raise RunError(f"run.seed={cfg.run.seed} ({source}) does not match seed {seed} of the checkpoint of iteration "
                   f"{checkpoint.get('iteration')} in {run.checkpoint_dir}: a resume continues that run's random "
                   "streams; leave run.seed out, or start a new run (run.dir=...) for another seed")


def cmd_train(args: argparse.Namespace) -> int:
    overrides = _train_overrides(args)
    if args.resume:
        if args.preset:
            raise ConfigError("give either a preset or --resume RUN_DIR, not both")
        run = RunDir.open(args.resume)
        with run.exclusive():  # before anything is read or written: one trainer per run directory
            cfg = run.config(overrides)
            checkpoint = run.load_checkpoint("latest")
            check_resume_seed(cfg, checkpoint, overrides, run)
            _check_ready(cfg)
            run.check_metrics()  # a damaged line is refused before anything is changed
            domain = _supervised_domain(cfg)
            checkpoint = _matching_model(cfg, domain, run, checkpoint)
            run.record_resume(cfg, overrides, checkpoint)
            args.run_path = run.path
            print(f"rlmaml: run directory {run.path}", file=sys.stderr, flush=True)
            _train(cfg, run, checkpoint, domain)
    else:
        if not args.preset:
            raise ConfigError("name a preset (rlmaml presets lists them) or --resume RUN_DIR")
        if args.preset == "custom" and not any(o.split("=", 1)[0].strip() == "rl.env" for o in overrides):
            raise ConfigError("preset custom trains your own env: name it with rl.env=ID (and rl.env_module=MODULE, "
                              "rl.task_distribution=MODULE:OBJECT where needed)")
        cfg = build_config(args.preset, overrides)
        _check_ready(cfg)
        run = RunDir.new(cfg, args.runs_dir)
        print(f"rlmaml: run directory {run.path}", file=sys.stderr, flush=True)
        with run.exclusive():  # taken before config.yaml is written: a refused trainer changes nothing here
            run.start(cfg)
            args.run_path = run.path
            _train(cfg, run, None)
    print(f"rlmaml: done; evaluate with: rlmaml eval {run.path}", file=sys.stderr)
    return 0


def _supervised_domain(cfg: Config) -> object | None:
    """The supervised domain of ``cfg`` (None for meta-RL)."""
    if cfg.experiment == "rl":
        return None
    from rlmaml.supervised import make_domain

    return make_domain(cfg)


def _train(cfg: Config, run: RunDir, checkpoint: dict | None, domain: object | None = None) -> None:
    if cfg.experiment == "rl":
        from rlmaml.rl.trainer import train_rl

        train_rl(cfg, run, checkpoint)
    else:
        from rlmaml.supervised.trainer import train_supervised

        train_supervised(cfg, domain or _supervised_domain(cfg), run, checkpoint)  # type: ignore[arg-type]


def _matching_model(cfg: Config, domain: object | None, run: RunDir, checkpoint: dict) -> dict:
    """The checkpoint if its θ has the names and shapes of the config's model, else the newest one that has
    (with a warning for each that does not); a one-line CheckpointError if none has."""
    from rlmaml.checkpoints import expect_shapes, param_shapes

    if domain is None:
        from rlmaml.rl.trainer import policy_shapes

        expected, path = policy_shapes(cfg), ("learner", "params")
    else:
        expected = param_shapes(dict(domain.build_model(cfg.run.seed).named_parameters()))  # type: ignore[attr-defined]
        path = ("params",)
    check = expect_shapes(expected, *path)
    try:
        check(checkpoint, "")
    except CheckpointError:
        return run.load_checkpoint("latest", expect=check)
    return checkpoint


def cmd_eval(args: argparse.Namespace) -> int:
    from rlmaml.evaluate import evaluate_run

    run = RunDir.open(args.run_dir)
    overrides = list(args.overrides)
    if args.backend:
        overrides.append(f"rl.backend={args.backend}")
    if args.address:
        overrides.append(f"rl.address={args.address}")
    result = evaluate_run(run, overrides, checkpoint=args.checkpoint, video=args.video, compare=args.compare)
    print(json.dumps(result["summary"], indent=2, ensure_ascii=False))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from rlmaml.plots import plot_learning_curves

    runs = [RunDir.open(p) for p in args.runs]
    out = Path(args.out) if args.out else _common_folder([r.path for r in runs]) / "learning_curves.png"
    out = plot_learning_curves(runs, out)
    print(out)
    return 0


def _common_folder(paths: list[Path]) -> Path:
    """The one run's directory, or the deepest folder that holds every run."""
    import os

    if len(paths) == 1:
        return paths[0]
    return Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))


def cmd_report(args: argparse.Namespace) -> int:
    from rlmaml.report import render_report

    text = render_report([RunDir.open(p) for p in args.runs])
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def _resume_hint(args: argparse.Namespace) -> str:
    """'; the last checkpoint is kept: rlmaml train --resume RUN' for a training run whose directory exists."""
    path = getattr(args, "run_path", None)
    return f"; the last checkpoint is kept: rlmaml train --resume {path}" if path else ""


def _kept_traceback(args: argparse.Namespace, exc: BaseException) -> str:
    """Append the traceback of ``exc`` to RUN/error.log when it asks for that (``keep_traceback``, e.g. a failed
    rollout task) and a run directory exists; '; the traceback is in PATH' then, else ''."""
    path = getattr(args, "run_path", None)
    if not path or not getattr(exc, "keep_traceback", False):
        return ""
    import traceback

    log = RunDir(path).write_error_log("".join(traceback.format_exception(exc)))
    return f"; the traceback is in {log}" if log else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlmaml`` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may follow options (``train nav2d --backend local run.iterations=5``): argparse leaves the ones
    # after an option unparsed; anything else unknown is still a one-line usage error.
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.command == "presets":
        print("\n".join(preset_names()))
        return 0
    commands = {"train": cmd_train, "eval": cmd_eval, "plot": cmd_plot, "report": cmd_report}
    try:
        return commands[args.command](args)
    except (ConfigError, RunError) as exc:
        print(f"rlmaml: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingStopped as exc:
        hint = _resume_hint(args) if getattr(exc, "keep_traceback", False) else ""
        print(f"rlmaml: stopped: {exc}{_kept_traceback(args, exc)}{hint}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"rlmaml: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"rlmaml: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
