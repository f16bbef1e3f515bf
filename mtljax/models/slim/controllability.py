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
NaN when every task is. Both correlations are SciPy's (``scipy.stats.spearmanr``, ``kendalltau`` with
its default τ-b variant).
"""

from __future__ import annotations

import numpy as np
import scipy.stats


def _constant(x: np.ndarray) -> bool:
    """No correlation is defined when one side does not vary (SciPy would warn and return NaN)."""
    return bool(np.all(x == x[0])) if len(x) else True


def spearman(x, y) -> float:
    """Spearman's ρ of two samples ``[K]`` (Pearson correlation of average ranks); NaN if either is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if _constant(x) or _constant(y):
        return float("nan")
    return float(scipy.stats.spearmanr(x, y).statistic)


def kendall(x, y) -> float:
    """Kendall's τ-b of two samples ``[K]`` (tie-corrected); NaN if either is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if _constant(x) or _constant(y):
        return float("nan")
    return float(scipy.stats.kendalltau(x, y).statistic)  # tau-b, SciPy's default


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
