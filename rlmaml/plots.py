"""Pictures people look at: adaptation curves, learning curves, comparisons (matplotlib, Agg backend)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

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
    ax.set_ylabel("mean return" if result.get("experiment") == "rl" else "metric")
    ax.set_title(Path(result.get("run", "")).name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
