"""DualProj: the update is the projection of the mean gradient onto the dual cone {d : J d ≥ 0}."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import minimize

from mtljax.optim import as_optax, combine
from mtljax.optim.dualproj import dualproj

METHOD = dualproj()
WEIGHTS = jax.jit(METHOD.weights)


def _weights(jac, fn=WEIGHTS):
    jac = np.asarray(jac, np.float64)
    t = jac.shape[0]
    w, _ = fn(jnp.ones(t), (), jax.random.PRNGKey(0), gramian=jnp.asarray(jac @ jac.T, jnp.float32))
    return np.asarray(w, np.float64)


def _conflicting(seed, t=3, d=5):
    rng = np.random.default_rng(seed)
    jac = rng.standard_normal((t, d))
    jac[1] = -0.8 * jac[0] + 0.3 * rng.standard_normal(d)
    return jac


def dual_cone_projection(jac, x):
    """Independent primal reference: argmin_y ‖y − x‖² s.t. J y ≥ 0 (SLSQP, float64)."""
    res = minimize(lambda y: 0.5 * np.sum((y - x) ** 2), x, jac=lambda y: y - x, method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda y: jac @ y, "jac": lambda y: jac}],
                   options={"ftol": 1e-14, "maxiter": 500})
    assert res.success
    return res.x


def test_torchjd_documented_example():
    # TorchJD, docstring of torchjd.aggregation.DualProj: J = [[-4, 1, 1], [6, 1, 1]] → [0.5563, 1.1109, 1.1109]
    jac = np.array([[-4.0, 1, 1], [6, 1, 1]])
    np.testing.assert_allclose(jac.T @ _weights(jac), [0.5563, 1.1109, 1.1109], atol=2e-4)


def test_projection_of_the_mean_gradient():
    fn = jax.jit(dualproj(reg_eps=1e-7).weights)  # the regulariser moves d by O(reg_eps)
    for seed in range(3):
        jac = _conflicting(seed)
        ref = dual_cone_projection(jac, jac.mean(axis=0))
        np.testing.assert_allclose(jac.T @ _weights(jac, fn), ref, atol=1e-4 * np.linalg.norm(ref))
        w = _weights(jac)
        d = jac.T @ w
        # KKT of the regularised QP: J d = G w ≥ −reg_eps·trace(G)·w (exactly ≥ 0 as reg_eps → 0)
        assert np.all(jac @ d >= -1e-4 * np.trace(jac @ jac.T) * w - 1e-5 * np.linalg.norm(d))
        assert np.all(w >= 1 / 3 - 1e-6)


def test_mean_gradient_kept_when_it_conflicts_with_no_task():
    rng = np.random.default_rng(4)
    jac = rng.standard_normal((3, 5))
    jac[1] = -0.3 * jac[0] + rng.standard_normal(5)  # pairwise conflict is allowed, the mean must be in the cone
    jac = jac if np.all(jac @ jac.mean(0) >= 0) else np.abs(jac)
    assert np.all(jac @ jac.mean(0) >= 0)
    np.testing.assert_allclose(_weights(jac), np.full(3, 1 / 3), rtol=1e-5)


def test_single_task_and_degenerate_gramians():
    g = np.random.default_rng(6).standard_normal(5)
    np.testing.assert_allclose(_weights(g[None]), [1.0], rtol=1e-6)
    for jac in (np.stack([g, np.zeros(5), -g]), np.stack([g, g, g]), np.stack([g, g, -g]), np.zeros((3, 5))):
        w = _weights(jac)
        assert np.all(np.isfinite(w)) and np.all(w >= 1 / 3 - 1e-6)
    # g, g, −2g: the mean is 0, which is in the cone, so w stays 1/3 each and the update is 0
    np.testing.assert_allclose(jnp.asarray(np.stack([g, g, -2 * g])).T @ _weights(np.stack([g, g, -2 * g])),
                               np.zeros(5), atol=1e-5)


def test_validation():
    with pytest.raises(ValueError, match="norm_eps"):
        dualproj(norm_eps=-1.0)
    with pytest.raises(ValueError, match="reg_eps"):
        dualproj(reg_eps=-1e-3)


def test_optax_face_under_jit():
    rng = np.random.default_rng(7)
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    jac = {"a": jnp.asarray(rng.standard_normal((2, 3)), jnp.float32),
           "b": jnp.asarray(rng.standard_normal((2, 2, 2)), jnp.float32)}
    jac["a"] = jac["a"].at[1].set(-2 * jac["a"][0])
    tx = optax.chain(as_optax(METHOD, 2), optax.adam(1e-2))
    updates, state = jax.jit(lambda j, s: tx.update(j, s, params, losses=jnp.ones(2)))(jac, tx.init(params))
    chex.assert_tree_all_finite(updates)
    # Adam's first moment after one step is 0.1 × its input, the combined update Jᵀw
    out = jax.tree.map(lambda m: m / 0.1, optax.tree_utils.tree_get(state, "mu"))
    flat = np.concatenate([np.asarray(jac["a"]), np.asarray(jac["b"]).reshape(2, -1)], axis=1)
    expected = combine(jac, jnp.asarray(_weights(flat), jnp.float32))
    chex.assert_trees_all_close(out, expected, rtol=1e-4, atol=1e-6)
