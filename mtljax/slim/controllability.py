"""Controllability: does a task's performance follow its preference?

Following the controllable multi-task literature (DYMU, Raychaudhuri et al., CVPR 2022, and Aich et
al., ICCV 2023, who report it for the slimmable model), controllability at a fixed compute budget is
the **rank correlation between a task's preference and that task's performance over sampled
preference vectors**, averaged over tasks:

    C = 1/T · Σ_t ρ( (p_t^(k))_k , (s_t^(k))_k ),   k = 1..K sampled preferences

with ``s_t^(k)`` the task's primary metric (sign-flipped when lower is better) of the sub-network the
search picks for preference ``p^(k)`` (normalised to sum 1: only ratios matter to the search), and
``ρ`` Spearman's rank correlation (default) or Kendall's τ-b. Ties get average ranks (sub-networks
are discrete, so many preferences share a configuration). A task whose preference or performance is
constant over the samples (e.g. at a budget so tight that every preference gets the same
sub-network) has no defined correlation: it is reported as NaN and left out of the mean; ``C`` is
NaN when every task is. Both correlations are written here (no SciPy at run time) and checked against
SciPy in the tests.
"""

from __future__ import annotations

import numpy as np


def rankdata(x) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    """Spearman's ρ (Pearson correlation of average ranks); NaN if either side is constant."""
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt(np.sum(rx * rx) * np.sum(ry * ry))
    return float(np.sum(rx * ry) / denom) if denom > 0 else float("nan")


def kendall(x, y) -> float:
    """Kendall's τ-b (tie-corrected); NaN if either side is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(len(x), 1)
    dx, dy = dx[iu], dy[iu]
    n_x, n_y = np.sum(dx != 0), np.sum(dy != 0)
    if n_x == 0 or n_y == 0:
        return float("nan")
    return float(np.sum(dx * dy) / np.sqrt(n_x * n_y))


CORRELATIONS = {"spearman": spearman, "kendall": kendall}


def controllability(preferences, scores, method: str = "spearman") -> tuple[float, np.ndarray]:
    """``(C, per_task)`` from preferences ``[K, T]`` and achieved scores ``[K, T]`` (higher = better)."""
    if method not in CORRELATIONS:
        raise ValueError(f"method: unknown {method!r}; choose from {sorted(CORRELATIONS)}")
    p = np.asarray(preferences, np.float64)
    s = np.asarray(scores, np.float64)
    if p.shape != s.shape or p.ndim != 2:
        raise ValueError(f"preferences {p.shape} and scores {s.shape} must both be [samples, tasks]")
    p = p / p.sum(axis=1, keepdims=True)
    per_task = np.array([CORRELATIONS[method](p[:, t], s[:, t]) for t in range(p.shape[1])])
    valid = per_task[~np.isnan(per_task)]
    return (float(valid.mean()) if valid.size else float("nan")), per_task
