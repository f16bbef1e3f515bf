"""Statistics for comparing runs over seeds: Student-t confidence intervals and the paired t-test.

For ``n`` runs ``x_1..x_n`` of one quantity (a metric, Δm) with mean ``x̄`` and sample standard
deviation ``s`` (denominator ``n − 1``), the two-sided ``(1 − α)`` confidence interval of the mean is

    x̄ ± t_{1 − α/2, n − 1} · s / √n

with ``t_{q, ν}`` the ``q``-quantile of Student's t distribution with ``ν`` degrees of freedom.

Two methods trained with the same seeds give paired samples ``a_i, b_i``. The paired t-test is the
one-sample t-test of the differences ``d_i = a_i − b_i`` against 0: ``t = d̄ / (s_d / √n)`` on
``n − 1`` degrees of freedom, two-sided ``p = 2 · (1 − F_t(|t|))``. Pairing removes the part of the
seed-to-seed spread the two methods share (same initialisation, same data order).

With one run there is no spread to estimate: interval and test are undefined and come back as ``None``
(not as a number). When the differences do not vary at all the test is undefined too if they are all
zero (``p`` is NaN; the two methods agreed on every seed) and ``p = 0`` if they are a nonzero constant.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Sequence

import numpy as np
import scipy.stats


class Summary(NamedTuple):
    """Mean of ``n`` values with their sample std and a confidence interval (``None`` when ``n < 2``)."""

    n: int
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None


class PairedTest(NamedTuple):
    statistic: float
    df: int
    pvalue: float


def t_quantile(q: float, df: int) -> float:
    """The ``q``-quantile of Student's t distribution with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"t_quantile: df must be >= 1, got {df}")
    return float(scipy.stats.t.ppf(q, df))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sample std and the Student-t ``confidence`` interval of the mean of ``values``."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"mean_ci: expected a non-empty 1-d sequence, got shape {x.shape}")
    n, mean = len(x), float(x.mean())
    if n < 2:
        return Summary(n, mean, None, None, None)
    std = float(x.std(ddof=1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest | None:
    """Two-sided paired t-test of ``a`` against ``b`` (same seeds, same order); ``None`` for one pair."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_t_test: samples must be paired 1-d sequences, got {a.shape} and {b.shape}")
    if len(a) < 2:
        return None
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # zero-spread differences: t = ±inf or NaN
        result = scipy.stats.ttest_rel(a, b)
    return PairedTest(float(result.statistic), len(a) - 1, float(result.pvalue))


__all__ = ["PairedTest", "Summary", "mean_ci", "paired_t_test", "t_quantile"]
