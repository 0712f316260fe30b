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
from rlmaml.runs import RunDir, RunError, TrainingStopped

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


def _resolve_train_config(args: argparse.Namespace) -> tuple[Config, RunDir | None, dict | None]:
    overrides = list(args.overrides)
    if args.backend:
        overrides.append(f"rl.backend={args.backend}")
    if args.address:
        overrides.append(f"rl.address={args.address}")
    if args.preset and "=" in args.preset:  # argparse took the first override for the preset
        overrides.insert(0, args.preset)
        args.preset = None
    if args.resume:
        if args.preset:
            raise ConfigError("give either a preset or --resume RUN_DIR, not both")
        run = RunDir.open(args.resume)
        checkpoint = run.load_checkpoint("latest")
        return run.config(overrides), run, checkpoint
    if not args.preset:
        raise ConfigError("name a preset (rlmaml presets lists them) or --resume RUN_DIR")
    if args.preset == "custom" and not any(o.split("=", 1)[0].strip() == "rl.env" for o in overrides):
        raise ConfigError("preset custom trains your own env: name it with rl.env=ID (and rl.env_module=MODULE, "
                          "rl.task_distribution=MODULE:OBJECT where needed)")
    return build_config(args.preset, overrides), None, None


def cmd_train(args: argparse.Namespace) -> int:
    cfg, run, checkpoint = _resolve_train_config(args)
    if cfg.experiment == "rl":
        from rlmaml.rl.build import check_rl_config

        check_rl_config(cfg)
    resolve_device(cfg.run.device)  # run.device=cuda without a GPU is a usage error before the run dir exists
    run = run or RunDir.create(cfg, args.runs_dir)
    args.run_path = run.path
    print(f"rlmaml: run directory {run.path}", file=sys.stderr, flush=True)
    with run.exclusive():  # one trainer per run directory (a resume started twice is refused)
        if cfg.experiment == "rl":
            from rlmaml.rl.trainer import train_rl

            train_rl(cfg, run, checkpoint)
        else:
            from rlmaml.supervised import make_domain
            from rlmaml.supervised.trainer import train_supervised

            train_supervised(cfg, make_domain(cfg), run, checkpoint)
    print(f"rlmaml: done; evaluate with: rlmaml eval {run.path}", file=sys.stderr)
    return 0


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
    """'; resume with: rlmaml train --resume RUN' for a training run whose directory exists, else ''."""
    path = getattr(args, "run_path", None)
    return f"; the last checkpoint is kept: rlmaml train --resume {path}" if path else ""


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
        print(f"rlmaml: stopped: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"rlmaml: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"rlmaml: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
