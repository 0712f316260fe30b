"""``rlmaml report``: a markdown reproduction table of evaluated runs beside the paper's numbers.

The paper's numbers live here once (:data:`PAPER_RL`, :data:`PAPER_SINUSOID`, :data:`PAPER_OMNIGLOT`, from
``REFERENCE.md``) and are reused by :func:`rlmaml.plots.plot_compare`. A run is classified as MAML, pretrained,
random initialisation or oracle by :func:`method_kind` from its config and name.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

# ---- the paper's numbers -----------------------------------------------------------------------------------

RL_STEPS = (0, 1, 2, 3)
"""The paper reports meta-RL returns after 0, 1, 2 and 3 policy-gradient steps."""

PAPER_RL: dict[str, dict[str, tuple[float | None, ...]]] = {
    # family -> method kind -> mean return over 40 test goals after 0 / 1 / 2 / 3 steps (None: not reported).
    # The oracle has one number: it needs no adaptation.
    "Navigation2D": {"MAML": (-40.4, -11.7, -3.3, -3.2), "pretrained": (-40.8, -19.7, -11.7, -8.5),
                     "random": (-82.7, -58.0, -53.8, -46.8), "oracle": (-2.3,)},
    "HalfCheetahVel": {"MAML": (-129.5, -78.6, -66.6, -60.8), "pretrained": (-158.0, -135.4, -128.5, -133.6),
                       "random": (-254.8, None, None, -230.8), "oracle": (-54.5,)},
    "HalfCheetahDir": {"MAML": (-50.7, 293.2, 313.5, 315.7), "pretrained": (-43.0, -24.8, -12.9, 19.6),
                       "random": (-35.7, 21.8, 62.3, 86.2), "oracle": (442.7,)},
    "AntVel": {"MAML": (30.6, 96.7, 100.1, 101.4), "pretrained": (-1.8, 6.1, 8.5, 9.5),
               "random": (-78.6, None, None, -35.6), "oracle": (107.9,)},
    "AntDir": {"MAML": (8.7, 499.2, 500.7, 499.1), "pretrained": (3.2, 1.3, 6.5, 6.9),
               "random": (3.1, 9.3, 16.0, 26.1), "oracle": (524.8,)},
}

ENV_TITLES = {"Navigation2D": "2D navigation", "HalfCheetahVel": "HalfCheetah, goal velocity",
              "HalfCheetahDir": "HalfCheetah, direction", "AntVel": "Ant, goal velocity",
              "AntDir": "Ant, direction", "AntGoal": "Ant, goal position"}

METHOD_ORDER = ("MAML", "pretrained", "random", "oracle")
METHOD_LABELS = {"MAML": "MAML", "pretrained": "pretrained", "random": "random init", "oracle": "oracle"}

SINUSOID_STEPS = (1, 5, 10)
PAPER_SINUSOID: dict[str, dict[int, float]] = {
    # K = 5 support points: mean squared error after 1 / 5 / 10 gradient steps (paper section 5.1).
    "MAML": {1: 0.67, 5: 0.38, 10: 0.35},
    "pretrained": {1: 2.41, 5: 2.23, 10: 2.19},
}

PAPER_OMNIGLOT: dict[str, dict[str, tuple[float, float | None]]] = {
    # setting (N-way K-shot) -> method -> (accuracy %, 95% CI or None)
    "5w1s": {"MAML (paper)": (98.7, 0.4), "first-order MAML": (98.3, 0.5), "MAML++": (99.47, None)},
    "5w5s": {"MAML (paper)": (99.9, 0.1), "first-order MAML": (99.2, 0.2), "MAML++": (99.85, None)},
    "20w1s": {"MAML (paper)": (95.8, 0.3), "first-order MAML": (89.4, 0.5), "MAML++": (97.65, None)},
    "20w5s": {"MAML (paper)": (98.9, 0.2), "first-order MAML": (97.9, 0.1), "MAML++": (99.33, None)},
}


def env_family(env_id: str) -> tuple[str, bool]:
    """``'rlmaml/HalfCheetahVelOracle-v0'`` -> ``('HalfCheetahVel', True)``; unknown ids pass through."""
    name = env_id.split("/")[-1].split(":")[-1]
    if name.endswith("-v0"):
        name = name[:-3]
    oracle = name.endswith("Oracle")
    return (name[: -len("Oracle")] if oracle else name), oracle


def paper_rl(env_id: str) -> dict[str, tuple[float | None, ...]]:
    """The paper's returns for this env's family ({} when the paper has none)."""
    return PAPER_RL.get(env_family(env_id)[0], {})


def method_kind(config: dict[str, Any], name: str = "") -> str:
    """'oracle', 'random', 'pretrained' or 'MAML' for a run, from its (plain) config and name.

    Oracle: the env puts the task in the observation. Random: the run's name says so (``*-random`` presets).
    Pretrained: no inner step during training (``maml.inner_steps=0``).
    """
    rl = config.get("rl", {})
    if config.get("experiment") == "rl" and env_family(str(rl.get("env", "")))[1]:
        return "oracle"
    name = name or str(config.get("run", {}).get("name", ""))
    if "random" in name.lower():
        return "random"
    if int(config.get("maml", {}).get("inner_steps", 1)) == 0:
        return "pretrained"
    return "MAML"


# ---- hardware and commands ----------------------------------------------------------------------------------

def hardware_info() -> dict[str, Any]:
    """Platform, CPU model and count, GPU (if CUDA is visible), Python and torch versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
                            "python": platform.python_version(), "gpu": "none"}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _override(key: str, value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | tuple | bool) or value is None else str(value)
    return shlex.quote(f"{key}={text}")


def config_overrides(base: dict[str, Any], config: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    """Dotted ``key=value`` overrides that turn ``base`` into ``config`` (both plain nested dicts)."""
    flat_base, flat = _flatten(base), _flatten(config)
    return [_override(k, v) for k, v in flat.items()
            if k not in skip and (k not in flat_base or flat_base[k] != v)]


def train_command(config: dict[str, Any]) -> str:
    """The ``rlmaml train`` command line that rebuilds ``config``: its preset plus the differing keys."""
    from rlmaml.config import ConfigError, build_config, preset_names, to_dict

    run = config.get("run")
    name = str(run.get("name", "")) if isinstance(run, dict) else ""
    if name in preset_names():
        try:
            base = to_dict(build_config(name))
        except ConfigError:
            base = {}
        extra = config_overrides(base, config, skip=("run.name", "run.dir"))
        return " ".join(["rlmaml train", name, *extra])
    return "rlmaml train CONFIG.yaml  # the run's config.yaml"


def eval_command(run_path: str, train_config: dict[str, Any], eval_config: dict[str, Any]) -> str:
    """The ``rlmaml eval`` command line: the run directory plus keys changed from its training config."""
    return " ".join(["rlmaml eval", shlex.quote(run_path), *config_overrides(train_config, eval_config)])


# ---- reading evaluated runs -----------------------------------------------------------------------------------

def load_eval(path: Any) -> dict[str, Any]:
    """A run's eval.json (``path`` is a run directory, a RunDir or the file); a clear error if missing."""
    from rlmaml.runs import RunError

    p = Path(getattr(path, "path", path))
    file = p if p.suffix == ".json" else p / "eval.json"
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise RunError(f"{str(p)!r} has no eval.json; evaluate it first: rlmaml eval {p}") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot read {file}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or "rows" not in data:
        raise RunError(f"{file} is not an rlmaml eval.json (no rows)")
    data.setdefault("run", str(file.parent))
    data["training"] = training_summary(file.parent, data.get("checkpoint_iteration"))
    return data


def training_summary(run_dir: Path, checkpoint_iteration: Any = None) -> str:
    """``'291 it, 2.3 h; #165'``: iterations trained, their summed wall time (``iteration_time_s`` in the
    run's ``metrics.jsonl``, restarts excluded) and the evaluated checkpoint; ``'–'`` without metrics."""
    iterations: dict[int, float] = {}
    try:
        with open(run_dir / "metrics.jsonl") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if isinstance(row, dict) and isinstance(row.get("iteration"), int):
                    iterations[row["iteration"]] = float(row.get("iteration_time_s") or 0.0)  # a resume's rerun wins
    except OSError:
        return "–"
    if not iterations:
        return "–"
    seconds = sum(iterations.values())
    wall = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
    text = f"{len(iterations)} it, {wall}"
    return text + (f"; #{checkpoint_iteration}" if isinstance(checkpoint_iteration, int) else "")


def result_method(result: dict[str, Any]) -> str:
    """The display name of an evaluated run: its rows' method, else its run name, else its directory."""
    rows = result.get("rows") or [{}]
    return str(rows[0].get("method") or result.get("method") or result.get("config", {}).get("run", {}).get("name")
               or Path(result.get("run", "")).name)


def result_kind(result: dict[str, Any]) -> str:
    """MAML / pretrained / random / oracle of an evaluated run."""
    return str(result.get("kind") or method_kind(result.get("config", {}), result_method(result)))


def _fmt(mean: float | None, ci: float | None = None, digits: int = 1) -> str:
    if mean is None:
        return "–"
    text = f"{mean:.{digits}f}"
    return f"{text} ± {ci:.{digits}f}" if ci is not None else text


def _protocol(result: dict[str, Any]) -> str:
    p = result.get("protocol") or {}
    goals = p.get("goals") or max((int(r.get("goals", 0)) for r in result["rows"]), default=0)
    text = f"{goals} goals"
    if p.get("trajectories"):
        text += f", K={p['trajectories']}"
    if p.get("horizon"):
        text += f", H={p['horizon']}"
    if p.get("batch") == "steps":
        text += ", rllab batches (K·H steps of episodes)"
    return text


def _rl_section(family: str, results: list[dict[str, Any]]) -> list[str]:
    paper = PAPER_RL.get(family, {})
    lines = [f"## Meta-RL: {ENV_TITLES.get(family, family)}",
             "",
             "Mean return after 0–3 policy-gradient steps, ± 95% CI over test goals (paper: 40 goals; "
             "K trajectories per step, horizon H).",
             "",
             "| method | source | training (iterations, wall time; checkpoint) | 0 steps | 1 step | 2 steps | 3 steps "
             "| protocol |",
             "|---|---|---|---|---|---|---|---|"]
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for res in results:
        by_kind[result_kind(res)].append(res)
    for kind in METHOD_ORDER:
        for res in by_kind.get(kind, []):
            steps = {int(r["steps"]): r for r in res["rows"]}
            cells = [_fmt(steps[s]["mean"], steps[s]["ci95"]) if s in steps else "–" for s in RL_STEPS]
            lines.append(f"| {METHOD_LABELS[kind]} | ours: {result_method(res)} | {res.get('training', '–')} | "
                         + " | ".join(cells) + f" | {_protocol(res)} |")
        if kind in paper:
            values = list(paper[kind]) + [None] * (len(RL_STEPS) - len(paper[kind]))
            trained = "none" if kind == "random" else "≤ 500 it"
            lines.append(f"| {METHOD_LABELS[kind]} | paper | {trained} | " + " | ".join(_fmt(v) for v in values)
                         + " | 40 goals |")
    return lines


def _sinusoid_section(results: list[dict[str, Any]]) -> list[str]:
    lines = ["## Sinusoid regression (K = 5)",
             "",
             "Mean squared error on query points after 1 / 5 / 10 gradient steps, ± 95% CI over test tasks.",
             "",
             "| method | source | 1 step | 5 steps | 10 steps |",
             "|---|---|---|---|---|"]
    for kind in ("MAML", "pretrained"):
        for res in [r for r in results if result_kind(r) == kind]:
            rows = {int(r["steps"]): r for r in res["rows"] if r.get("metric") == "mse" and int(r.get("shots", 0)) == 5}
            cells = [_fmt(rows[s]["mean"], rows[s]["ci95"], 2) if s in rows else "–" for s in SINUSOID_STEPS]
            lines.append(f"| {kind} | ours: {result_method(res)} | " + " | ".join(cells) + " |")
        lines.append(f"| {kind} | paper | " + " | ".join(_fmt(PAPER_SINUSOID[kind][s], None, 2)
                                                        for s in SINUSOID_STEPS) + " |")
    return lines


def _omniglot_section(results: list[dict[str, Any]]) -> list[str]:
    lines = ["## Omniglot few-shot classification",
             "",
             "Accuracy (%) on query images of test tasks after the test-time steps, ± 95% CI.",
             "",
             "| setting | source | accuracy (%) |",
             "|---|---|---|"]
    settings: list[str] = []
    for res in results:
        o = res.get("config", {}).get("omniglot", {})
        setting = f"{o.get('ways', '?')}w{o.get('shots', '?')}s"
        test_steps = int(o.get("test_steps", 0))
        acc = [r for r in res["rows"] if "acc" in str(r.get("metric", ""))]
        row = max((r for r in acc if int(r["steps"]) == test_steps), default=None, key=lambda r: r["mean"])
        row = row or max(acc, default=None, key=lambda r: int(r["steps"]))
        if row is None:
            continue
        scale = 100.0 if row["mean"] <= 1.0 else 1.0
        lines.append(f"| {setting} | ours: {result_method(res)} ({row['steps']} steps) | "
                     f"{_fmt(row['mean'] * scale, row['ci95'] * scale, 2)} |")
        if setting not in settings:
            settings.append(setting)
    for setting in settings:
        for name, (acc_, ci) in PAPER_OMNIGLOT.get(setting, {}).items():
            lines.append(f"| {setting} | {name} | {_fmt(acc_, ci, 2 if ci is None else 1)} |")
    return lines


def _hardware_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = ["## Hardware", ""]
    seen: list[str] = []
    for res in results:
        hw = res.get("hardware")
        if hw:
            text = (f"{hw.get('platform', '?')}; CPU {hw.get('cpu', '?')} × {hw.get('cpu_count', '?')}; "
                    f"GPU {hw.get('gpu', 'none')}; torch {hw.get('torch', '?')}")
            entry = f"- evaluated on: {text}"
            if entry not in seen:
                seen.append(entry)
    hw = hardware_info()
    seen.append(f"- report rendered on: {hw['platform']}; CPU {hw['cpu']} × {hw['cpu_count']}; GPU {hw['gpu']}; "
                f"torch {hw.get('torch', '?')}")
    return lines + seen


def _command_lines(runs: list[Any], results: list[dict[str, Any]]) -> list[str]:
    from rlmaml.config import ConfigError, read_config_file

    lines = ["## Commands", "", "```"]
    for run, res in zip(runs, results, strict=True):
        path = Path(getattr(run, "path", run))
        try:  # read within the config limits; a damaged config.yaml: the config eval.json recorded
            train_cfg = read_config_file(path / "config.yaml")
        except ConfigError:
            train_cfg = res.get("config", {})
        train_cfg = train_cfg if isinstance(train_cfg, dict) else {}
        lines.append(f"# {result_method(res)}")
        lines.append(train_command(train_cfg))
        lines.append(eval_command(str(path), train_cfg, res.get("config", train_cfg)))
    lines.append("rlmaml report " + " ".join(shlex.quote(str(Path(getattr(r, "path", r)))) for r in runs))
    lines.append("```")
    return lines


def render_report(runs: list[Any]) -> str:
    """Markdown: each environment's 0–3-step returns and each supervised figure beside the paper's numbers,
    the hardware and the command lines. ``runs`` are RunDirs or run-directory paths holding eval.json."""
    results = [load_eval(run) for run in runs]
    rl: dict[str, list[dict[str, Any]]] = defaultdict(list)
    sinusoid, omniglot = [], []
    for res in results:
        experiment = res.get("experiment") or res.get("config", {}).get("experiment")
        if experiment == "rl":
            rl[env_family(str(res.get("config", {}).get("rl", {}).get("env", "")))[0]].append(res)
        elif experiment == "sinusoid":
            sinusoid.append(res)
        elif experiment == "omniglot":
            omniglot.append(res)
    lines = ["# rlmaml reproduction report", "",
             "Our evaluated runs beside the numbers of Finn, Abbeel & Levine (ICML 2017).", ""]
    for family in sorted(rl, key=lambda f: list(PAPER_RL).index(f) if f in PAPER_RL else len(PAPER_RL)):
        lines += _rl_section(family, rl[family]) + [""]
    if sinusoid:
        lines += _sinusoid_section(sinusoid) + [""]
    if omniglot:
        lines += _omniglot_section(omniglot) + [""]
    lines += _hardware_lines(results) + [""]
    lines += _command_lines(list(runs), results)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render_report(sys.argv[1:]))
