"""Per-task metrics over a whole split, and the multitask gain Δm.

Δm (Maninis et al. 2019; Vandenhende et al. 2021), in percent::

    Δm = 100/T · Σ_t 1/M_t · Σ_m s_{t,m} · (N_{t,m} − B_{t,m}) / B_{t,m}

with ``s = +1`` when higher is better and ``−1`` otherwise, ``B`` the single-task baseline and ``N``
the multi-task model. Positive Δm means the multi-task model beats its single-task baselines.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np

from mtljax.tasks import Task


def add_stats(total, batch):
    """Add one batch's summed statistics into a running total (``None`` starts a new total)."""
    batch = jax.tree.map(np.asarray, jax.device_get(batch))
    if total is None:
        return batch
    return jax.tree.map(np.add, total, batch)


def finalize(tasks: Sequence[Task], stats) -> dict[str, dict[str, float]]:
    """Summed statistics -> ``{task: {metric: value}}``."""
    return {t.name: t.finalize(stats[t.name]) for t in tasks}


def delta_m(
    tasks: Sequence[Task],
    results: Mapping[str, Mapping[str, float]],
    baselines: Mapping[str, Mapping[str, float]],
) -> float:
    """Multitask gain Δm in percent of ``results`` over single-task ``baselines``."""
    per_task = []
    for task in tasks:
        directions = task.directions()
        if task.name not in baselines:
            raise KeyError(f"no single-task baseline for task {task.name!r}")
        terms = []
        for metric, higher in directions.items():
            base = float(baselines[task.name][metric])
            new = float(results[task.name][metric])
            if base == 0 or math.isnan(base) or math.isnan(new):
                raise ValueError(
                    f"delta_m: baseline {task.name}/{metric} = {base} cannot serve as a reference"
                )
            sign = 1.0 if higher else -1.0
            terms.append(sign * (new - base) / abs(base))
        per_task.append(sum(terms) / len(terms))
    return 100.0 * sum(per_task) / len(per_task)


def format_table(
    tasks: Sequence[Task],
    results: Mapping[str, Mapping[str, float]],
    baselines: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """A plain-text table of per-task metrics (and baselines and Δm when given)."""
    rows = [("task", "metric", "multi-task", "single-task", "rel. %")]
    for task in tasks:
        for metric, higher in task.directions().items():
            value = results[task.name][metric]
            arrow = "↑" if higher else "↓"
            if baselines and task.name in baselines:
                base = baselines[task.name][metric]
                rel = (1 if higher else -1) * (value - base) / abs(base) * 100 if base else float("nan")
                rows.append((task.name, f"{metric} {arrow}", f"{value:.4f}", f"{base:.4f}", f"{rel:+.2f}"))
            else:
                rows.append((task.name, f"{metric} {arrow}", f"{value:.4f}", "-", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if baselines and all(t.name in baselines for t in tasks):
        lines.append(f"Δm = {delta_m(tasks, results, baselines):+.2f} %")
    return "\n".join(lines)
