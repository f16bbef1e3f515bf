"""Hypervolume of a set of per-task performance vectors (all objectives maximised).

``HV(P; r)`` is the Lebesgue measure of the region dominated by the points ``P`` and dominating the
reference point ``r``: ``vol( ∪_{p ∈ P} [r, p] )``. It is the standard single-number summary of a
multi-objective front (larger = better front), reported next to controllability in the
controllable multi-task literature; here it is taken over the task performances of the sub-networks
the search chooses for sampled preferences at one budget (:mod:`mtljax.models.slim.evaluate`).

Algorithms:

* **Exact, 1–3 objectives** (the default for T ≤ 3): 2-D by a sweep over the points sorted on the
  first objective; 3-D by slicing along the third objective (for each distinct level, the 2-D
  hypervolume of the points at or above it times the slab's height), ``O(n² log n)``.
* **Many objectives** (T > 3, e.g. CIFAR100-MTL's 20 tasks): exact algorithms are exponential in T,
  and plain Monte Carlo over the bounding box fails in high dimension (the union is a vanishing
  fraction of the box: 0.5²⁰ ≈ 10⁻⁶). We use the **union (Karp–Luby) estimator**: draw a box ``i``
  with probability ∝ its volume ``V_i``, a point ``x`` uniformly in it, and count the boxes ``c(x)``
  that contain it; ``Σ_i V_i · E[1/c(x)]`` is the union's volume *unbiased*, with relative standard
  error at most ``√(n/N)`` for ``n`` boxes and ``N`` samples, whatever the dimension. The estimate
  and its standard error are returned by :func:`hypervolume_mc`; :func:`hypervolume` uses it with a
  fixed seed, so a report is reproducible.

Points not strictly better than the reference in every objective add nothing and are dropped.
"""

from __future__ import annotations

import numpy as np


def pareto_front(points) -> np.ndarray:
    """The non-dominated points (maximisation), duplicates kept once."""
    pts = np.unique(np.asarray(points, np.float64), axis=0)
    keep = [i for i, p in enumerate(pts)
            if not np.any(np.all(pts >= p, axis=1) & np.any(pts > p, axis=1))]
    return pts[keep]


def _hv2(pts: np.ndarray, ref: np.ndarray) -> float:
    pts = pts[np.argsort(-pts[:, 0])]
    area, best_y = 0.0, ref[1]
    for x, y in pts:
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return float(area)


def _hv3(pts: np.ndarray, ref: np.ndarray) -> float:
    levels = np.unique(pts[:, 2])[::-1]
    vol = 0.0
    for i, z in enumerate(levels):
        below = levels[i + 1] if i + 1 < len(levels) else ref[2]
        vol += _hv2(pts[pts[:, 2] >= z][:, :2], ref[:2]) * (z - below)
    return float(vol)


def hypervolume_mc(points, reference, samples: int = 200_000, seed: int = 0) -> tuple[float, float]:
    """``(estimate, standard error)`` of the hypervolume by the union (Karp–Luby) estimator."""
    pts, ref = _clean(points, reference)
    if len(pts) == 0:
        return 0.0, 0.0
    pts = pareto_front(pts)
    vols = np.prod(pts - ref, axis=1)
    total = float(vols.sum())
    rng = np.random.default_rng(seed)
    which = rng.choice(len(pts), size=samples, p=vols / total)
    inv = np.empty(samples)
    for start in range(0, samples, 4096):  # chunks keep the [chunk, n, d] comparison small
        sl = slice(start, start + 4096)
        x = ref + rng.random((len(which[sl]), pts.shape[1])) * (pts[which[sl]] - ref)
        covered = np.all(x[:, None, :] <= pts[None, :, :], axis=2).sum(axis=1)
        inv[sl] = 1.0 / covered
    return total * float(inv.mean()), total * float(inv.std(ddof=1) / np.sqrt(samples))


def hypervolume(points, reference, samples: int = 200_000, seed: int = 0) -> float:
    """Exact for 1–3 objectives, the union Monte-Carlo estimate (fixed seed) beyond."""
    pts, ref = _clean(points, reference)
    if len(pts) == 0:
        return 0.0
    d = pts.shape[1]
    if d == 1:
        return float(pts[:, 0].max() - ref[0])
    if d == 2:
        return _hv2(pts, ref)
    if d == 3:
        return _hv3(pts, ref)
    return hypervolume_mc(pts, ref, samples, seed)[0]


def _clean(points, reference):
    pts = np.atleast_2d(np.asarray(points, np.float64))
    ref = np.asarray(reference, np.float64).reshape(-1)
    if pts.size == 0:
        return np.zeros((0, len(ref))), ref
    if pts.shape[1] != len(ref):
        raise ValueError(f"reference has {len(ref)} objectives, points have {pts.shape[1]}")
    return pts[np.all(pts > ref, axis=1)], ref
