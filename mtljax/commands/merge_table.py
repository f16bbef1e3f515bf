"""The table and bar chart of ``mtljax merge``: every task's main metric per model, and the mean accuracy
over the classification tasks."""

from __future__ import annotations

import numpy as np


def _main_metric(task) -> str:
    return next(iter(task.directions()))


def format_rows(tasks, rows: dict[str, dict]) -> str:
    """One line per row: every task's main metric, and the mean accuracy over classification tasks."""
    cls = [t for t in tasks if "accuracy" in t.directions()]
    head = ["model"] + [f"{t.name} {_main_metric(t)}" for t in tasks] + ([f"mean acc ({len(cls)})"] if cls else [])
    lines = [head]
    for name, res in rows.items():
        vals = [f"{res[t.name][_main_metric(t)]:.4f}" if t.name in res else "-" for t in tasks]
        if cls:
            have = [res[t.name]["accuracy"] for t in cls if t.name in res]
            vals.append(f"{np.mean(have):.4f}" if len(have) == len(cls) else "-")
        lines.append([name] + vals)
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def mean_accuracy(tasks, res) -> float:
    cls = [t.name for t in tasks if "accuracy" in t.directions()]
    return float(np.mean([res[t]["accuracy"] for t in cls])) if cls else float("nan")


def plot_rows(path: str, tasks, rows: dict[str, dict]) -> None:
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend (a notebook's) alone

    cls = [t for t in tasks if "accuracy" in t.directions()]
    names = list(rows)
    fig = Figure(figsize=(14, 4.5))
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2.2]})
    means = [mean_accuracy(tasks, rows[n]) for n in names]
    axes[0].barh(names[::-1], means[::-1], color="tab:blue")
    axes[0].set_xlabel(f"mean accuracy over {len(cls)} classification tasks")
    for y, v in enumerate(means[::-1]):
        axes[0].text(v, y, f" {v:.3f}", va="center", fontsize=8)
    width = 0.8 / len(names)
    x = np.arange(len(cls))
    for i, n in enumerate(names):
        axes[1].bar(x + i * width, [rows[n][t.name]["accuracy"] for t in cls], width, label=n)
    axes[1].set_xticks(x + 0.4 - width / 2, [t.name for t in cls])
    axes[1].set_ylabel("test accuracy")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
