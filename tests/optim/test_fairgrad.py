"""FairGrad: the weights solve G w = w^(−1/α), w > 0; α = 1 is Nash-MTL's bargaining equation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import least_squares

from mtljax.optim import as_optax, combine
from mtljax.optim.fairgrad import fairgrad
from mtljax.optim.nash_mtl import nash_mtl

ALPHAS = (0.5, 1.0, 50.0)
RAW = {a: jax.jit(fairgrad(alpha=a, max_norm=0.0).weights) for a in ALPHAS}


def _weights(jac, fn, state=()):
    jac = np.asarray(jac, np.float64)
    t = jac.shape[0]
    w, _ = fn(jnp.ones(t), state, jax.random.PRNGKey(0), gramian=jnp.asarray(jac @ jac.T, jnp.float32))
    return np.asarray(w, np.float64)


def fixed_point_reference(gram, alpha):
    """Independent reference, as the official code: least squares on G w − w^(−1/α), w ≥ 0 (float64)."""
    res = least_squares(lambda w: gram @ w - w ** (-1.0 / alpha), np.ones(len(gram)) / len(gram),
                        bounds=(0, np.inf), xtol=1e-15, ftol=1e-15, gtol=1e-15)
    return res.x


def test_fixed_point_matches_least_squares_reference():
    rng = np.random.default_rng(0)
    for alpha in ALPHAS:
        for _ in range(2):
            jac = rng.standard_normal((3, 6)) * rng.uniform(0.2, 3.0, size=(3, 1))
            gram = jac @ jac.T
            w = _weights(jac, RAW[alpha]) / 3  # the official code multiplies the weights by T
            assert np.all(w > 0)
            np.testing.assert_allclose(gram @ w, w ** (-1.0 / alpha), rtol=1e-3)
            np.testing.assert_allclose(w, fixed_point_reference(gram, alpha), rtol=1e-3)
            # scale law w(cG) = c^(−α/(1+α)) w(G)
            np.testing.assert_allclose(_weights(2.0 * jac, RAW[alpha]) / 3, w * 4.0 ** (-alpha / (1 + alpha)),
                                       rtol=1e-3)


def test_alpha_one_is_nash_mtl_and_large_alpha_equalises_rates():
    rng = np.random.default_rng(1)
    nash = jax.jit(nash_mtl(max_norm=0.0).weights)
    for _ in range(2):
        jac = rng.standard_normal((3, 6))
        alpha_nash = _weights(jac, nash, nash_mtl().init(3))
        np.testing.assert_allclose(_weights(jac, RAW[1.0]) / 3, alpha_nash, rtol=1e-4)
        # α → ∞ (max-min fairness): every task improves at the same rate g_tᵀd = (Gw)_t = w_t^(−1/α) → 1
        w = _weights(jac, RAW[50.0]) / 3
        rates = jac @ (jac.T @ w)
        assert np.all(rates > 0) and rates.max() / rates.min() < 1.2


def test_clipping_single_task_and_degenerate():
    rng = np.random.default_rng(2)
    jac = rng.standard_normal((3, 6)) * 5.0
    clipped = jax.jit(fairgrad().weights)
    w = _weights(jac, clipped)
    np.testing.assert_allclose(np.linalg.norm(jac.T @ w), 1.0, rtol=1e-4)  # default max_norm = 1
    raw = _weights(jac, RAW[1.0])
    np.testing.assert_allclose(w / np.linalg.norm(w), raw / np.linalg.norm(raw), rtol=1e-5)
    g = jac[0]
    # T = 1 by definition: w = ‖g‖^(−2α/(1+α)), the update along g with norm ‖g‖^((1−α)/(1+α))
    np.testing.assert_allclose(_weights(g[None], RAW[0.5]), [np.linalg.norm(g) ** (-2.0 / 3.0)], rtol=1e-4)
    for bad in (np.stack([g, np.zeros(6), jac[1]]), np.stack([g, g, g]), np.stack([g, -g, jac[1]]), np.zeros((3, 6))):
        for fn in (clipped, RAW[0.5]):
            w = _weights(bad, fn)
            assert np.all(np.isfinite(w)) and np.all(w > 0) and np.all(np.isfinite(bad.T @ w))


def test_validation():
    for kwargs, arg in (({"alpha": 0.0}, "alpha"), ({"max_norm": -1.0}, "max_norm"), ({"iters": 0}, "iters"),
                        ({"reg": 0.0}, "reg")):
        with pytest.raises(ValueError, match=arg):
            fairgrad(**kwargs)


def test_optax_face_under_jit():
    rng = np.random.default_rng(7)
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    jac = {"a": jnp.asarray(rng.standard_normal((2, 3)), jnp.float32),
           "b": jnp.asarray(rng.standard_normal((2, 2, 2)), jnp.float32)}
    tx = optax.chain(as_optax(fairgrad(alpha=0.5, max_norm=0.0), 2), optax.adam(1e-2))
    updates, state = jax.jit(lambda j, s: tx.update(j, s, params, losses=jnp.ones(2)))(jac, tx.init(params))
    chex.assert_tree_all_finite(updates)
    # Adam's first moment after one step is 0.1 × its input, the combined update Jᵀw
    out = jax.tree.map(lambda m: m / 0.1, optax.tree_utils.tree_get(state, "mu"))
    flat = np.concatenate([np.asarray(jac["a"]), np.asarray(jac["b"]).reshape(2, -1)], axis=1)
    expected = combine(jac, jnp.asarray(_weights(flat, RAW[0.5]), jnp.float32))
    chex.assert_trees_all_close(out, expected, rtol=1e-4, atol=1e-6)
