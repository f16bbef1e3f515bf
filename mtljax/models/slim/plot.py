"""Trade-off plot: per-task performance against compute budget, for several task preferences.

x: the chosen sub-network's FLOPs as % of the full network's; y: each task's primary metric.
With up to 4 tasks every task gets its own panel with one line per preference (uniform, and "only t"
for each task: the one-hot preference that gives t the widest decoder and the others the narrowest):
the gap between a task's "only itself" line and the others' lines is the control the preference
buys at that budget. With more tasks (CIFAR100-MTL) one panel shows, per one-hot preference, the
favoured task's metric and the mean of the others, averaged over tasks, plus the uniform
preference's task mean. matplotlib is imported only here (``pip install matplotlib``).
"""

from __future__ import annotations

import numpy as np


def plot_tradeoff(report: dict, tasks, path: str, title: str = "") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [t.name for t in tasks]
    metric = {t.name: next(iter(t.directions())) for t in tasks}
    rows = report["budgets"]

    def series(pref, task):
        xs = [100 * r["named"][pref]["fraction"] for r in rows]
        ys = [r["named"][pref]["metrics"][task][metric[task]] for r in rows]
        return xs, ys

    if len(names) <= 4:
        prefs = ["uniform"] + [f"only_{n}" for n in names]
        colors = {p: f"C{i}" for i, p in enumerate(prefs)}
        fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
        for ax, task in zip(axes[0], names):
            for pref in prefs:
                xs, ys = series(pref, task)
                own = pref == f"only_{task}"
                style = "-o" if own else ("--s" if pref == "uniform" else ":^")
                label = pref.replace("_", " ") + (" (favours this task)" if own else "")
                ax.plot(xs, ys, style, color=colors[pref], ms=4, label=label)
            ax.set_title(f"task {task}")
            ax.set_xlabel("FLOPs (% of full)")
            ax.set_ylabel(metric[task])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    else:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        favoured, others, xs = [], [], None
        for i, task in enumerate(names):
            x, own = series(f"only_{task}", task)
            rest = np.mean([series(f"only_{task}", o)[1] for o in names if o != task], axis=0)
            favoured.append(own)
            others.append(rest)
            xs = x if xs is None else np.mean([xs, x], axis=0)
        ax.plot(xs, np.mean(favoured, axis=0), "-o", ms=4, label="preferred task (one-hot)")
        ax.plot(xs, np.mean(others, axis=0), ":^", ms=4, label="other tasks (one-hot)")
        uni_x = [100 * r["named"]["uniform"]["fraction"] for r in rows]
        uni_y = [np.mean([r["named"]["uniform"]["metrics"][t][metric[t]] for t in names]) for r in rows]
        ax.plot(uni_x, uni_y, "--s", ms=4, label="uniform preference (task mean)")
        ax.set_xlabel("FLOPs (% of full)")
        ax.set_ylabel(f"mean {metric[names[0]]} over {len(names)} tasks")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or (f"controllability {report['controllability_spearman']:.2f} (Spearman), "
                           f"hypervolume {report['hypervolume']:.3f}"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
