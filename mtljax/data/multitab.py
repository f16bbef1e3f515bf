"""MultiTab-Bench: synthetic multi-task regression with controlled task correlation and complexity.

Following Sinodinos et al. (2025, "MultiTab"): inputs ``x ~ N(0, I_D)``. Task vectors ``w_t`` (rows of
``W``, ``T × D``) have unit norm and pairwise cosine ``ρ``: with ``P`` the ``T × T`` matrix with ones on
the diagonal and ``ρ`` elsewhere, ``S`` its symmetric square root and ``U`` ``T`` orthonormal rows in
``R^D``, ``W = S U`` gives ``W Wᵀ = P``. ``P`` is positive semi-definite only for ``ρ ≥ −1/(T−1)`` and
``U`` needs ``T ≤ D``; both are checked. ``S`` is taken in closed form, not from an eigendecomposition:
``P``'s eigenvalue ``1 − ρ`` is repeated ``T − 1`` times, so an eigensolver may return any basis of that
eigenspace, and LAPACK's kernels for different CPUs do (AVX2 and AVX-512 gave different task vectors
for the same seed until 2026-11-28). Any root gives the same distribution of the data, since ``x`` is
isotropic; the symmetric one makes the sample itself the same on every machine.

Targets: ``y_t = Σ_{k=1..d_t} (w_t·x)^k + N(0, σ_t²)`` where ``d_t`` is task ``t``'s complexity
(polynomial degree). The test split draws fresh ``x`` (the reference code copies its training set into
its test set; we do not).
"""

from __future__ import annotations

import numpy as np

from mtljax.config import ConfigError
from mtljax.data.base import ArraySource, Dataset
from mtljax.tasks import Task


def task_vectors(num_tasks: int, num_features: int, rho: float, rng: np.random.Generator) -> np.ndarray:
    """``T × D`` matrix of unit vectors with pairwise cosine ``rho``."""
    if num_tasks > num_features:
        raise ConfigError(f"{num_tasks} exceeds config.data.num_features={num_features}", "num_tasks")
    if num_tasks > 1 and rho < -1.0 / (num_tasks - 1) - 1e-12:
        raise ConfigError(f"{rho} is below -1/(T-1) = {-1.0 / (num_tasks - 1):.4f}: no unit vectors have that "
                          "pairwise cosine", "rho")
    if rho > 1:
        raise ConfigError(f"must be <= 1, got {rho}", "rho")
    u, _ = np.linalg.qr(rng.standard_normal((num_features, num_tasks)))  # D × T, orthonormal columns
    return symmetric_root(num_tasks, rho) @ u.T


def symmetric_root(num_tasks: int, rho: float) -> np.ndarray:
    """The symmetric square root of ``P = (1 − ρ) I + ρ 11ᵀ`` (``T × T``), in closed form.

    ``P`` has the eigenvalue ``b² = 1 + (T − 1) ρ`` on ``1`` and ``a² = 1 − ρ`` on its orthogonal
    complement, so ``S = a I + ((b − a) / T) 11ᵀ``: ``S² = a² I + ((b² − a²) / T) 11ᵀ = P``.
    """
    a = np.sqrt(max(1.0 - rho, 0.0))
    b = np.sqrt(max(1.0 + (num_tasks - 1) * rho, 0.0))
    return a * np.eye(num_tasks) + (b - a) / num_tasks * np.ones((num_tasks, num_tasks))


def targets(x: np.ndarray, w: np.ndarray, degrees, noise, rng: np.random.Generator) -> np.ndarray:
    z = x @ w.T  # N × T
    y = np.zeros_like(z)
    for t, d in enumerate(degrees):
        y[:, t] = sum(z[:, t] ** k for k in range(1, d + 1))
    return y + rng.standard_normal(z.shape) * np.asarray(noise)[None, :]


def default_task_names(cfg) -> list[str]:
    """The tasks of ``cfg = config.data`` (a config or its JSON dict), without building the dataset."""
    return [f"t{t}" for t in range(int(cfg.get("num_tasks", 7)))]


def build(cfg) -> Dataset:
    """Config keys: num_tasks, num_features, rho, degrees, noise (scalar or per task), num_train,
    num_test, seed."""
    T, D = int(cfg.num_tasks), int(cfg.num_features)
    degrees = list(cfg.degrees)
    if len(degrees) != T or min(degrees) < 1:
        raise ConfigError(f"must list {T} degrees >= 1, got {degrees}", "degrees")
    noise = np.broadcast_to(np.asarray(cfg.noise, np.float64), (T,))
    rng = np.random.default_rng(cfg.seed)
    w = task_vectors(T, D, float(cfg.rho), rng)
    names = default_task_names(cfg)
    splits = {}
    for split, n in (("train", cfg.num_train), ("test", cfg.num_test)):
        x = rng.standard_normal((n, D))
        y = targets(x, w, degrees, noise, rng)
        splits[split] = ArraySource(
            x.astype(np.float32), {name: y[:, t].astype(np.float32) for t, name in enumerate(names)}
        )
    tasks = tuple(Task(name, "regression") for name in names)
    return Dataset("multitab", tasks, (D,), splits, info={"task_vectors": w, "degrees": degrees})
