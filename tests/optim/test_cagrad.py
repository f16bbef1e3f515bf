"""CAGrad: c = 0 is the mean gradient; the dual solution matches scipy; worst-task improvement grows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from mtljax.optim.cagrad import cagrad, cagrad_dual


def _jac():
    rng = np.random.default_rng(0)
    jac = rng.standard_normal((3, 8))
    jac[1] = -0.8 * jac[0] + 0.2 * jac[1]
    return jac


def _update(jac, **kw):
    w, _ = jax.jit(cagrad(**kw).weights)(jnp.ones(len(jac)), (), jax.random.PRNGKey(0),
                                        gramian=jnp.asarray(jac @ jac.T, jnp.float32))
    return jac.T @ np.asarray(w)


def test_c_zero_is_mean_gradient():
    jac = _jac()
    np.testing.assert_allclose(_update(jac, c=0.0), jac.mean(0), rtol=1e-5, atol=1e-6)


def test_dual_matches_scipy():
    jac = _jac()
    t, c = 3, 0.4
    g0 = jac.mean(0)
    phi = c ** 2 * g0 @ g0

    def dual(w):
        gw = jac.T @ w
        return gw @ g0 + np.sqrt(phi) * np.linalg.norm(gw)

    ref = minimize(dual, np.ones(t) / t, method="SLSQP", bounds=[(0, None)] * t,
                   constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1}], options=dict(ftol=1e-12))
    w, _ = cagrad_dual(jnp.asarray(jac @ jac.T, jnp.float32), c, 500)
    assert dual(np.asarray(w, np.float64)) <= ref.fun + 1e-4 * abs(ref.fun)


def test_worst_task_improves_over_mean_and_stays_in_the_ball():
    jac = _jac()
    g0 = jac.mean(0)
    d = _update(jac, c=0.4, rescale=False)
    assert np.min(jac @ d) > np.min(jac @ g0)
    assert np.linalg.norm(d - g0) <= 0.4 * np.linalg.norm(g0) * (1 + 1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="c must be"):
        cagrad(c=-1)
