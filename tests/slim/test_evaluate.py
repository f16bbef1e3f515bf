"""Evaluation: rank correlations (against SciPy), hypervolume (exact vs brute force, Monte Carlo vs
exact), and controllability / hypervolume of a sweep over a synthetic super-network."""

import itertools

import numpy as np
import pytest

from mtljax.models.slim.controllability import controllability, kendall, spearman
from mtljax.models.slim.evaluate import MetricTable, sweep
from mtljax.models.slim.flops import FlopsTable
from mtljax.models.slim.hypervolume import hypervolume, hypervolume_mc, pareto_front
from mtljax.tasks import Task


def test_rank_correlations_with_ties_by_hand():
    # x ranks (average ranks for the tie) 1, 2.5, 2.5, 4; y ranks 1, 3, 2, 4: Pearson of the ranks is
    # 4.5 / sqrt(4.5 * 5) = 3/sqrt(10). Kendall: 5 concordant pairs, 0 discordant, one pair tied in x,
    # tau-b = 5 / sqrt((6 - 1) * 6).
    x, y = [1, 2, 2, 3], [1, 3, 2, 4]
    assert spearman(x, y) == pytest.approx(3 / np.sqrt(10), abs=1e-12)
    assert kendall(x, y) == pytest.approx(5 / np.sqrt(30), abs=1e-12)
    assert spearman(x, [-v for v in y]) == pytest.approx(-3 / np.sqrt(10), abs=1e-12)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3])) and np.isnan(kendall([1, 2, 3], [4, 4, 4]))
    c, per_task = controllability([[1, 0], [0.5, 0.5], [0, 1]], [[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]])
    assert c == pytest.approx(1.0) and per_task.tolist() == pytest.approx([1.0, 1.0])
    c, per_task = controllability([[1, 0], [0.5, 0.5], [0, 1]], [[0.5, 0.1], [0.5, 0.5], [0.5, 0.9]])
    assert np.isnan(per_task[0]) and c == pytest.approx(1.0)  # a constant task is left out


def _union_volume_on_grid(points, ref, n=200):
    """Brute force: fraction of a fine grid of cell centres covered by the union of boxes."""
    hi = points.max(axis=0)
    axes = [ref[i] + (np.arange(n) + 0.5) * (hi[i] - ref[i]) / n for i in range(points.shape[1])]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, points.shape[1])
    covered = np.zeros(len(grid), bool)
    for p in points:
        covered |= np.all(grid <= p, axis=1)
    return covered.mean() * np.prod(hi - ref)


def _inclusion_exclusion(points, ref):
    total = 0.0
    for k in range(1, len(points) + 1):
        for subset in itertools.combinations(points, k):
            total += (-1) ** (k + 1) * np.prod(np.min(subset, axis=0) - ref)
    return total


def test_hypervolume_exact_in_two_and_three_dimensions():
    assert hypervolume([[1, 2], [2, 1]], [0, 0]) == pytest.approx(3.0)
    assert hypervolume([[1, 1, 1]], [0, 0, 0]) == pytest.approx(1.0)
    assert hypervolume([[-1, 5]], [0, 0]) == 0.0  # not better than the reference in every objective
    rng = np.random.default_rng(1)
    for d in (2, 3):
        pts = rng.uniform(0.1, 1, (7, d))
        assert hypervolume(pts, np.zeros(d)) == pytest.approx(_inclusion_exclusion(pts, np.zeros(d)), rel=1e-9)
    pts = rng.uniform(0.1, 1, (5, 2))
    assert hypervolume(pts, np.zeros(2)) == pytest.approx(_union_volume_on_grid(pts, np.zeros(2), 400), rel=1e-2)
    front = pareto_front([[1, 0.2], [0.5, 0.5], [0.4, 0.4], [1, 0.2]])
    assert sorted(map(tuple, front)) == [(0.5, 0.5), (1.0, 0.2)]


def test_monte_carlo_hypervolume_agrees_with_exact_in_many_dimensions():
    rng = np.random.default_rng(2)
    for d in (3, 6):
        pts = rng.uniform(0.2, 1, (6, d))
        exact = _inclusion_exclusion(pareto_front(pts), np.zeros(d))
        est, se = hypervolume_mc(pts, np.zeros(d), samples=50_000, seed=0)
        assert abs(est - exact) < 4 * se + 1e-12 and se < 0.02 * exact
    pts = rng.uniform(0.3, 1, (10, 20))  # 20 tasks: the union is ~1e-5 of the box; still estimated
    est, se = hypervolume_mc(pts, np.zeros(20), samples=20_000)
    assert est > 0 and se < 0.05 * est and hypervolume(pts, np.zeros(20), samples=20_000) == est


def _synthetic(num_tasks=3):
    """A super-network whose task accuracy grows with its encoder and decoder widths."""
    W = (0.25, 0.5, 1.0)
    tasks = tuple(Task(f"t{i}", "multiclass", num_classes=3) for i in range(num_tasks))
    values = {t.name: {(we, wd): {"accuracy": 0.3 + 0.3 * we + 0.3 * wd + 0.01 * i}
                       for we in W for wd in W} for i, t in enumerate(tasks)}
    flops = FlopsTable({w: 1000 * w for w in W}, {t.name: {w: 300 * w for w in W} for t in tasks})
    return MetricTable(tasks, values), flops


def test_sweep_reports_controllability_and_hypervolume():
    table, flops = _synthetic()
    report = sweep(table, flops, num_budgets=4, num_preferences=16, seed=0)
    assert len(report["budgets"]) == 4 and report["budgets"][-1]["budget_fraction"] == pytest.approx(1.0)
    first, last = report["budgets"][0], report["budgets"][-1]
    assert first["distinct_configs"] == 1 and np.isnan(first["controllability_spearman"])  # nothing to control
    assert last["controllability_spearman"] > 0.5 and 0 < last["controllability_kendall"] <= 1
    assert 0 < last["hypervolume"] <= 1 and first["hypervolume"] == 0.0  # smallest budget: the worst point
    assert report["controllability_spearman"] > 0.5
    only = last["named"]["only_t0"]
    assert only["config"]["decoders"]["t0"] == 1.0 and only["config"]["decoders"]["t1"] == 0.25
    assert [r["width"] for r in report["uniform_widths"]] == [0.25, 0.5, 1.0]
    with pytest.raises(ValueError, match="budgets: .* below the smallest"):
        sweep(table, flops, budgets=[0.01])
