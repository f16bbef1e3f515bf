"""MultiTab-Bench: task vectors with the asked correlation, polynomial targets, fresh test set."""

import ml_collections as mlc
import numpy as np
import pytest

from mtljax.data import build_dataset
from mtljax.data.multitab import symmetric_root, task_vectors


def _cfg(**kw):
    c = dict(name="multitab", num_tasks=7, num_features=32, rho=0.4, degrees=[1, 3, 2, 3, 4, 2, 3], noise=0.01,
             num_train=500, num_test=200, seed=0)
    c.update(kw)
    return mlc.ConfigDict(c)


@pytest.mark.parametrize("T,D,rho", [(7, 32, 0.4), (3, 8, -0.5), (5, 5, -0.25), (4, 16, 0.0), (2, 4, 1.0)])
def test_task_vectors_gram(T, D, rho):
    w = task_vectors(T, D, rho, np.random.default_rng(0))
    assert w.shape == (T, D)
    expected = np.full((T, T), rho) + (1 - rho) * np.eye(T)
    np.testing.assert_allclose(w @ w.T, expected, atol=1e-10)


def test_task_vectors_do_not_depend_on_an_eigenbasis():
    """P = (1-ρ)I + ρ11ᵀ has a (T-1)-fold eigenvalue, so an eigensolver's basis (and with it W = Q√ΛU)
    depended on the CPU's LAPACK kernels; W = S U with S the symmetric root is the same sample on every
    machine. Reference: Q√ΛQᵀ, which is the same for every eigenbasis Q."""

    def root(p):
        lam, q = np.linalg.eigh(p)
        return q @ np.diag(np.sqrt(np.maximum(lam, 0))) @ q.T

    for T, rho in [(7, 0.4), (7, -0.15), (3, -0.5), (4, 0.0), (2, 1.0), (5, 0.9)]:
        p = np.full((T, T), rho) + (1 - rho) * np.eye(T)
        s = symmetric_root(T, rho)
        np.testing.assert_allclose(s, s.T, atol=0)
        np.testing.assert_allclose(s, root(p), atol=1e-7)
    u, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((32, 7)))
    np.testing.assert_allclose(task_vectors(7, 32, -0.15, np.random.default_rng(3)),
                               root(np.full((7, 7), -0.15) + 1.15 * np.eye(7)) @ u.T,
                               atol=1e-7)


def test_invalid_correlation_and_sizes():
    with pytest.raises(ValueError, match=r"rho: .*-1/\(T-1\)"):
        task_vectors(4, 8, -0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_tasks"):
        task_vectors(9, 8, 0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="config.data.degrees"):
        build_dataset(_cfg(degrees=[1, 2]))


def test_targets_are_noisy_polynomials_of_projections():
    d = build_dataset(_cfg(noise=0.0))
    w, degrees = d.info["task_vectors"], d.info["degrees"]
    b = d.splits["train"].get_batch(np.arange(50))
    z = b["inputs"].astype(np.float64) @ w.T
    for t, deg in enumerate(degrees):
        expected = sum(z[:, t] ** k for k in range(1, deg + 1))
        np.testing.assert_allclose(b["targets"][f"t{t}"], expected, rtol=1e-4, atol=1e-4)
    noisy = build_dataset(_cfg(noise=0.5)).splits["train"].get_batch(np.arange(500))
    z = noisy["inputs"].astype(np.float64) @ w.T
    resid = noisy["targets"]["t0"] - z[:, 0]
    assert 0.4 < resid.std() < 0.6


def test_test_split_is_fresh():
    d = build_dataset(_cfg())
    tr, te = d.splits["train"].inputs, d.splits["test"].inputs
    assert len(te) == 200
    assert not (set(map(bytes, tr.round(5))) & set(map(bytes, te.round(5))))
