"""MGDA: the min-norm point of the convex hull (scipy reference), a common descent direction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from mtljax.optim.mgda import mgda


def _solve(jac, **kw):
    g = jnp.asarray(jac @ jac.T, jnp.float32)
    w, _ = jax.jit(mgda(**kw).weights)(jnp.asarray([1.0] * len(jac)), (), jax.random.PRNGKey(0), gramian=g)
    return np.asarray(w)


@pytest.mark.parametrize("t", [2, 3, 5])
def test_min_norm_point_and_descent(t):
    rng = np.random.default_rng(t)
    jac = rng.standard_normal((t, 10))
    jac[1] = -0.7 * jac[0] + 0.3 * jac[1]  # a conflicting pair
    w = _solve(jac)
    d = jac.T @ w
    ref = minimize(lambda v: np.sum((jac.T @ v) ** 2), np.ones(t) / t, method="SLSQP", bounds=[(0, None)] * t,
                   constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1}], options=dict(ftol=1e-14))
    assert abs(w.sum() - 1) < 1e-5 and w.min() >= -1e-7
    assert d @ d <= ref.fun * (1 + 1e-3) + 1e-7
    assert np.linalg.norm(d) <= np.linalg.norm(jac, axis=1).min() + 1e-6
    assert np.all(jac @ d >= d @ d - 1e-4)  # every task decreases at least as fast as ‖d‖²


def test_two_task_closed_form():
    jac = np.asarray([[1.0, 0.0], [0.0, 2.0]])
    # min over γ of |γ g1 + (1-γ) g2|²: γ = 4/5
    np.testing.assert_allclose(_solve(jac), [0.8, 0.2], rtol=1e-6)


def test_l2_normalisation_acts_on_unit_gradients():
    jac = np.asarray([[10.0, 0.0], [0.0, 1.0]])
    w = _solve(jac, normalization="l2")
    d = jac.T @ w
    # on unit gradients (1,0), (0,1) the min-norm point is (½, ½): equal weight per unit gradient
    np.testing.assert_allclose(d / np.linalg.norm(d), [1 / np.sqrt(2), 1 / np.sqrt(2)], rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="normalization"):
        mgda(normalization="max")
