"""Pictures people look at: adaptation curves, learning curves, comparisons (matplotlib, Agg backend)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_eval(result: dict[str, Any], out: Path) -> Path:
    """Metric (or return) against inner gradient steps with 95% CI bars, one line per group."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in result["rows"]:
        label = row.get("method") or f"{row.get('metric', 'return')} K={row.get('shots', '')}"
        groups[label].append(row)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, rows in groups.items():
        rows = sorted(rows, key=lambda r: r["steps"])
        ax.errorbar([r["steps"] for r in rows], [r["mean"] for r in rows], yerr=[r["ci95"] for r in rows],
                    marker="o", capsize=3, label=label)
    ax.set_xlabel("gradient steps")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("mean return (± 95% CI)" if result.get("experiment") == "rl" else "metric (± 95% CI)")
    ax.set_title(Path(result.get("run", "")).name, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# ---- meta-RL: comparison of methods (paper Fig. 4/5) ------------------------------------------------------

_KIND_COLORS = {"MAML": "tab:blue", "pretrained": "tab:orange", "random": "tab:green", "oracle": "tab:red"}


def _unique(label: str, used: set[str]) -> str:
    out, n = label, 2
    while out in used:
        out, n = f"{label} #{n}", n + 1
    used.add(out)
    return out


def plot_compare(paths: list[Any], out: Path) -> Path:
    """Return against number of gradient steps, one line per evaluated run (paper Fig. 4/5), with the paper's
    numbers for that environment in a table beside it. ``paths`` are run directories (or eval.json files)."""
    from rlmaml.report import (
        METHOD_LABELS,
        METHOD_ORDER,
        RL_STEPS,
        env_family,
        load_eval,
        paper_rl,
        result_kind,
        result_method,
    )

    results = [load_eval(p) for p in paths]
    rl = [r for r in results if (r.get("experiment") or r.get("config", {}).get("experiment")) == "rl"]
    if not rl:
        return _plot_compare_supervised(results, out)
    env = str(rl[0].get("env") or rl[0].get("config", {}).get("rl", {}).get("env", ""))
    family = env_family(env)[0]
    paper = paper_rl(env)
    fig, (ax, tab) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1.25, 1]})
    used: set[str] = set()
    max_steps = max([int(row["steps"]) for r in rl for row in r["rows"]] + [max(RL_STEPS)])
    for res in sorted(rl, key=lambda r: METHOD_ORDER.index(result_kind(r)) if result_kind(r) in METHOD_ORDER else 9):
        kind = result_kind(res)
        label = _unique(f"{result_method(res)} ({METHOD_LABELS.get(kind, kind)})", used)
        rows = sorted(res["rows"], key=lambda r: r["steps"])
        color = _KIND_COLORS.get(kind) if sum(result_kind(r) == kind for r in rl) == 1 else None
        if len(rows) == 1:  # no adaptation (the oracle): a level line with its CI band
            m, c = rows[0]["mean"], rows[0]["ci95"]
            line = ax.axhline(m, ls="--", color=color, label=label)
            ax.axhspan(m - c, m + c, color=line.get_color(), alpha=0.12, lw=0)
            continue
        steps = [r["steps"] for r in rows]
        means = np.array([r["mean"] for r in rows])
        cis = np.array([r["ci95"] for r in rows])
        (line,) = ax.plot(steps, means, marker="o", color=color, label=label)
        ax.fill_between(steps, means - cis, means + cis, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xticks(range(max_steps + 1))
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("average return")
    goals = sorted({int(row.get("goals", 0)) for r in rl for row in r["rows"]})
    from rlmaml.report import ENV_TITLES

    ax.set_title(f"{ENV_TITLES.get(family, family)}: ours (± 95% CI, {'/'.join(map(str, goals))} goals)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")

    tab.axis("off")
    cells, labels = [], []
    for kind in METHOD_ORDER:
        ours = [r for r in rl if result_kind(r) == kind]
        for res in ours:
            by_step = {int(r["steps"]): r["mean"] for r in res["rows"]}
            labels.append(f"{METHOD_LABELS[kind]} (ours)")
            cells.append([f"{by_step[s]:.1f}" if s in by_step else "" for s in RL_STEPS])
        if kind in paper:
            values = list(paper[kind]) + [None] * (len(RL_STEPS) - len(paper[kind]))
            labels.append(f"{METHOD_LABELS[kind]} (paper)")
            cells.append(["…" if v is None and kind != "oracle" else ("" if v is None else f"{v:.1f}") for v in values])
    if cells:
        table = tab.table(cellText=cells, rowLabels=labels,
                          colLabels=[f"{s} step{'s' if s != 1 else ''}" for s in RL_STEPS],
                          loc="upper center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(8.5)
        table.scale(1.0, 1.35)
        for (row, _), cell in table.get_celld().items():
            if row > 0 and labels[row - 1].endswith("(paper)"):
                cell.set_facecolor("#eeeeee")
        tab.set_title("mean return: ours vs. the paper (Finn et al. 2017)", fontsize=10)
        protocols = sorted({_protocol_text(r) for r in rl})
        tab.text(0.5, 0.02, "ours: " + "; ".join(protocols) + "\npaper: 40 goals, H = 100 (nav) / 200 (MuJoCo)",
                 ha="center", va="bottom", fontsize=8, color="dimgray", transform=tab.transAxes)
    else:
        tab.text(0.5, 0.5, f"no paper numbers for {env}", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def _protocol_text(result: dict[str, Any]) -> str:
    p = result.get("protocol") or {}
    if not p:
        return "protocol not recorded"
    return f"{p.get('goals')} goals, K = {p.get('trajectories')}, H = {p.get('horizon')}"


def _plot_compare_supervised(results: list[dict[str, Any]], out: Path) -> Path:
    """Supervised comparison: the metric against inner steps at the smallest K, one line per run."""
    from rlmaml.report import PAPER_SINUSOID, result_kind, result_method

    fig, ax = plt.subplots(figsize=(6, 4.2))
    used: set[str] = set()
    for res in results:
        shots = min(int(r.get("shots", 0)) for r in res["rows"])
        rows = sorted([r for r in res["rows"] if int(r.get("shots", 0)) == shots], key=lambda r: r["steps"])
        metric = rows[0].get("metric", "metric") if rows else "metric"
        rows = [r for r in rows if r.get("metric", metric) == metric]
        ax.errorbar([r["steps"] for r in rows], [r["mean"] for r in rows], yerr=[r["ci95"] for r in rows],
                    marker="o", capsize=3, label=_unique(f"{result_method(res)} K={shots}", used))
        if res.get("experiment") == "sinusoid" and shots == 5 and result_kind(res) in PAPER_SINUSOID:
            paper = PAPER_SINUSOID[result_kind(res)]
            ax.plot(list(paper), list(paper.values()), ls=":", marker="x", color="grey",
                    label=_unique(f"paper {result_kind(res)} K=5", used))
    ax.set_xlabel("gradient steps")
    ax.set_ylabel(str(results[0]["rows"][0].get("metric", "metric")) if results and results[0]["rows"] else "metric")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


# ---- 2D navigation trajectories (paper Fig. 5, left) -----------------------------------------------------------

_STEP_STYLES = {0: ("tab:gray", "pre-update"), 1: ("tab:blue", "1 grad step"), 2: ("tab:purple", "2 grad steps"),
                3: ("tab:green", "3 grad steps")}


def plot_nav_trajectories(goals: list[dict[str, Any]], out: Path, title: str = "") -> Path:
    """One panel per goal: a few trajectories before adaptation and after 1 and 3 steps, the goal starred.

    ``goals``: ``[{"goal": (x, y), "paths": {steps: [array [T, 2], ...]}}]``.
    """
    n = len(goals)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.4 * rows + 0.5), squeeze=False)
    for ax, data in zip(axes.ravel(), goals, strict=False):
        gx, gy = data["goal"][:2]
        for step in sorted(data["paths"]):
            color, name = _STEP_STYLES.get(step, (None, f"{step} grad steps"))
            for j, path in enumerate(data["paths"][step]):
                path = np.asarray(path)
                if len(path):
                    ax.plot(path[:, 0], path[:, 1], color=color, lw=1.1, alpha=0.75,
                            ls=":" if step == 0 else "-", label=name if j == 0 else None)
        ax.plot([0], [0], marker="o", color="black", ms=4, ls="none", label="start")
        ax.plot([gx], [gy], marker="*", color="gold", mec="black", ms=15, ls="none", label="goal")
        ax.set_xlim(-0.6, 0.6)
        ax.set_ylim(-0.6, 0.6)
        ax.set_aspect("equal")
        ax.grid(alpha=0.25)
        ax.set_title(f"goal ({gx:+.2f}, {gy:+.2f})", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


# ---- sinusoid fits (paper Fig. 2) ------------------------------------------------------------------------------

def plot_sinusoid_fits(cfg: Any, state: dict[str, Any], out: Path, tasks: int = 3) -> Path:
    """The true function, the K support points and the prediction before and after 1 and the most steps
    (paper Fig. 2), for a few seeded test tasks at the smallest ``eval.shots``."""
    import torch
    from torch.func import functional_call

    from rlmaml.meta import adapt_path
    from rlmaml.supervised import make_domain
    from rlmaml.supervised.sinusoid import sample_sinusoids, sinusoid_points

    if cfg.experiment != "sinusoid":
        raise ValueError(f"plot_sinusoid_fits needs a sinusoid run, got experiment {cfg.experiment!r}")
    domain = make_domain(cfg)
    model = domain.build_model(cfg.run.seed)
    params = {k: v.detach().float().cpu() for k, v in state["params"].items()}
    lr: Any = {k: v.detach().cpu() for k, v in state.get("inner_lr", {}).items()} or cfg.maml.inner_lr
    shots = min(cfg.eval.shots)
    last = max(max(cfg.eval.steps), 1)
    show = sorted({0, 1, last})
    rng = np.random.default_rng([cfg.eval.seed, 2])
    amplitude, phase = sample_sinusoids(cfg.sinusoid, tasks, rng)
    xs, ys = sinusoid_points(cfg.sinusoid, amplitude, phase, shots, rng)
    grid = np.linspace(*cfg.sinusoid.x_range, 200)
    grid_t = torch.as_tensor(grid, dtype=torch.float32)[:, None]
    loss_fn = domain.loss_fn(model)
    colors = {0: "tab:gray", 1: "tab:blue", last: "tab:green"}
    fig, axes = plt.subplots(1, tasks, figsize=(4.2 * tasks, 3.5), squeeze=False)
    for i, ax in enumerate(axes[0]):
        path = adapt_path(loss_fn, params, (xs[i], ys[i]), steps=last, lr=lr, first_order=True)
        ax.plot(grid, amplitude[i] * np.sin(grid - phase[i]), color="tab:red", lw=2, label="ground truth")
        for s in show:
            with torch.no_grad():
                pred = functional_call(model, path[s], (grid_t,)).squeeze(-1).numpy()
            name = "pre-update" if s == 0 else f"{s} grad step{'s' if s > 1 else ''}"
            ax.plot(grid, pred, color=colors[s], ls=":" if s == 0 else "--", lw=1.5, label=name)
        ax.plot(xs[i, :, 0].numpy(), ys[i, :, 0].numpy(), "^", color="purple", ms=7,
                label=f"{shots} points used for grad")
        ax.set_title(f"A={amplitude[i]:.2f}, phase={phase[i]:.2f}", fontsize=9)
        ax.set_xlim(*cfg.sinusoid.x_range)
        ax.grid(alpha=0.25)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"{cfg.run.name or 'sinusoid'}: K={shots} regression, before and after adaptation", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


# ---- learning curves -------------------------------------------------------------------------------------------

RL_CURVES = (("return", ("return_pre", "return_post")), ("KL (post-update)", ("kl",)),
             ("env steps / s", ("env_steps_per_s",)))
SUPERVISED_CURVES = (("meta-loss", ("meta_loss",)),)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window // 2, y[0]), y, np.full(window - 1 - window // 2, y[-1])])
    return np.convolve(padded, kernel, mode="valid")


def plot_learning_curves(runs: list[Any], out: Path) -> Path:
    """Learning curves from runs' metrics.jsonl, x = iteration: mean ± std over runs of the same name (seeds).

    Meta-RL runs: return before and after adaptation, post-update KL, env steps per second.
    Supervised runs: the meta-loss (smoothed when long). ``runs`` are RunDirs or run-directory paths.
    """
    from rlmaml.config import ConfigError, read_config_file
    from rlmaml.runs import RunDir, RunError

    groups: dict[str, list[dict[int, dict[str, Any]]]] = defaultdict(list)
    for run in runs:
        run = run if isinstance(run, RunDir) else RunDir.open(run)
        rows = run.metrics()
        if not rows:
            raise RunError(f"{str(run.path)!r} has no metrics yet (metrics.jsonl is missing or empty)")
        try:  # the run's name, read within the config limits; a damaged config.yaml: the folder's name
            section = read_config_file(run.path / "config.yaml").get("run")
            name = section.get("name") if isinstance(section, dict) else None
        except ConfigError:
            name = None
        name = name if isinstance(name, str) else None
        groups[name or run.path.name].append({int(r["iteration"]): r for r in rows if "iteration" in r})
    keys = {k for runs_ in groups.values() for rows in runs_ for r in rows.values() for k in r}
    panels = [p for p in (*RL_CURVES, *SUPERVISED_CURVES) if any(k in keys for k in p[1])]
    if not panels:
        raise RunError("no known metric (return_post, kl, env_steps_per_s, meta_loss) in the runs' metrics")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {name: cycle[i % len(cycle)] for i, name in enumerate(groups)}
    for ax, (title, metric_keys) in zip(axes[0], panels, strict=True):
        for name, seeds in groups.items():
            for key in metric_keys:
                its = sorted({i for rows in seeds for i, r in rows.items() if _finite(r.get(key))})
                if not its:
                    continue
                values = np.array([[float(rows[i][key]) if i in rows and _finite(rows[i].get(key)) else np.nan
                                    for i in its] for rows in seeds])
                window = max(1, len(its) // 100)
                mean = _smooth(np.nanmean(values, axis=0), window)
                std = _smooth(np.nanstd(values, axis=0), window)
                suffix = {"return_pre": " pre-update", "return_post": " post-update"}.get(key, "")
                seeds_txt = f" ({len(seeds)} runs)" if len(seeds) > 1 else ""
                ax.plot(its, mean, lw=1.4, ls="--" if key == "return_pre" else "-", color=colors[name],
                        label=f"{name}{suffix}{seeds_txt}")
                if len(seeds) > 1:
                    ax.fill_between(its, mean - std, mean + std, color=colors[name],
                                    alpha=0.08 if key == "return_pre" else 0.18, lw=0)
        longest = max(len({i for rows in seeds for i in rows}) for seeds in groups.values())
        smoothed = f", smoothed over {longest // 100} iterations" if longest // 100 > 1 else ""
        spread = " (mean ± std over runs" if any(len(s) > 1 for s in groups.values()) else " ("
        note = (spread + smoothed + ")").replace("(, ", "(").replace(" ()", "")
        ax.set_title(title + note, fontsize=9)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if metric_keys == ("meta_loss",):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
