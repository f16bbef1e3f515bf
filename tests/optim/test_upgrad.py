"""UPGrad: the update is the mean of the projections of each g_i onto the dual cone {d : J d ≥ 0}."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import minimize

from mtljax.optim import as_optax, combine
from mtljax.optim.upgrad import upgrad

METHOD = upgrad()
WEIGHTS = jax.jit(METHOD.weights)  # one compilation per number of tasks, shared by the tests


def _weights(jac, fn=WEIGHTS):
    jac = np.asarray(jac, np.float64)
    t = jac.shape[0]
    w, _ = fn(jnp.ones(t), (), jax.random.PRNGKey(0), gramian=jnp.asarray(jac @ jac.T, jnp.float32))
    return np.asarray(w, np.float64)


def _conflicting(seed, t=3, d=5):
    rng = np.random.default_rng(seed)
    jac = rng.standard_normal((t, d))
    jac[1] = -0.8 * jac[0] + 0.3 * rng.standard_normal(d)  # a strongly conflicting pair
    return jac


def exact_box_qp(gram, lower):
    """Independent reference: enumerate the active sets of min vᵀGv s.t. v ≥ lower (KKT, float64)."""
    for fixed in itertools.product([True, False], repeat=len(lower)):
        fixed = np.array(fixed)
        free = ~fixed
        v = lower.astype(np.float64).copy()
        if free.any():
            v[free] = np.linalg.solve(gram[np.ix_(free, free)], -gram[np.ix_(free, fixed)] @ lower[fixed])
        if np.all(v[free] >= lower[free] - 1e-12) and np.all((gram @ v)[fixed] >= -1e-12):
            return v
    raise AssertionError("no KKT point found")


def dual_cone_projection(jac, x):
    """Independent primal reference: argmin_y ‖y − x‖² s.t. J y ≥ 0 (SLSQP, float64)."""
    res = minimize(lambda y: 0.5 * np.sum((y - x) ** 2), x, jac=lambda y: y - x, method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda y: jac @ y, "jac": lambda y: jac}],
                   options={"ftol": 1e-14, "maxiter": 500})
    assert res.success
    return res.x


def test_torchjd_documented_example():
    # TorchJD, docstring of torchjd.aggregation.UPGrad: J = [[-4, 1, 1], [6, 1, 1]] → [0.2929, 1.9004, 1.9004]
    jac = np.array([[-4.0, 1, 1], [6, 1, 1]])
    np.testing.assert_allclose(jac.T @ _weights(jac), [0.2929, 1.9004, 1.9004], atol=2e-4)


def test_mean_of_dual_cone_projections():
    # the defining equation, checked in the primal against SLSQP projections; the regulariser moves the
    # solution by O(reg_eps) (measured: 7e-3 relative at the default 1e-4, 7e-6 at 1e-7), so use 1e-7
    fn = jax.jit(upgrad(reg_eps=1e-7).weights)
    for seed in range(2):
        jac = _conflicting(seed)
        ref = np.mean([dual_cone_projection(jac, g) for g in jac], axis=0)
        np.testing.assert_allclose(jac.T @ _weights(jac, fn), ref, atol=1e-4 * np.linalg.norm(ref))


def test_weights_equal_exact_qp_solution_on_torchjd_gramian():
    # the same regularised problem as TorchJD (G / trace(G) + 1e-4·I), solved exactly in float64;
    # the second Jacobian has rank 1 (coordinate descent is far off there)
    rng = np.random.default_rng(3)
    for jac in (_conflicting(2), np.outer([1.0, -2.0, 0.5], rng.standard_normal(5)) + 1e-3 * rng.standard_normal((3, 5))):
        gram = jac @ jac.T
        reg = gram / np.trace(gram) + 1e-4 * np.eye(3)
        ref = sum(exact_box_qp(reg, np.eye(3)[i] / 3) for i in range(3))
        d_ref = jac.T @ ref
        np.testing.assert_allclose(jac.T @ _weights(jac), d_ref, atol=2e-3 * np.linalg.norm(d_ref))


def test_update_in_dual_cone_and_no_conflict_gives_mean():
    for seed in range(4):
        jac = _conflicting(seed)
        w = _weights(jac)
        d = jac.T @ w
        # KKT of the regularised QP: J d = G w ≥ −reg_eps·trace(G)·w (exactly ≥ 0 as reg_eps → 0)
        assert np.all(jac @ d >= -1e-4 * np.trace(jac @ jac.T) * w - 1e-5 * np.linalg.norm(d))
        assert np.all(w >= 1 / 3 - 1e-6)
    jac = np.abs(np.random.default_rng(5).standard_normal((3, 5)))  # pairwise non-negative inner products
    np.testing.assert_allclose(_weights(jac), np.full(3, 1 / 3), rtol=1e-5)


def test_single_task_and_degenerate_gramians():
    g = np.random.default_rng(6).standard_normal(5)
    np.testing.assert_allclose(_weights(g[None]), [1.0], rtol=1e-6)
    for jac in (np.stack([g, np.zeros(5), -g]), np.stack([g, g, g]), np.stack([g, g, -g])):
        w = _weights(jac)
        assert np.all(np.isfinite(w)) and np.all(w >= 1 / 3 - 1e-6)
    np.testing.assert_allclose(_weights(np.stack([g, g, g])), np.full(3, 1 / 3), rtol=1e-5)
    # all gradients zero (trace < norm_eps): TorchJD's convention gives the mean weighting
    np.testing.assert_allclose(_weights(np.zeros((3, 5))), np.full(3, 1 / 3), rtol=1e-6)


def test_validation():
    with pytest.raises(ValueError, match="norm_eps"):
        upgrad(norm_eps=-1.0)
    with pytest.raises(ValueError, match="reg_eps"):
        upgrad(reg_eps=0.0)


def test_optax_face_under_jit():
    rng = np.random.default_rng(7)
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    jac = {"a": jnp.asarray(rng.standard_normal((2, 3)), jnp.float32),
           "b": jnp.asarray(rng.standard_normal((2, 2, 2)), jnp.float32)}
    jac["a"] = jac["a"].at[1].set(-jac["a"][0])
    tx = optax.chain(as_optax(METHOD, 2), optax.adam(1e-2))
    updates, state = jax.jit(lambda j, s: tx.update(j, s, params, losses=jnp.ones(2)))(jac, tx.init(params))
    chex.assert_tree_all_finite(updates)
    # Adam's first moment after one step is 0.1 × its input, the combined update Jᵀw
    out = jax.tree.map(lambda m: m / 0.1, optax.tree_utils.tree_get(state, "mu"))
    flat = np.concatenate([np.asarray(jac["a"]), np.asarray(jac["b"]).reshape(2, -1)], axis=1)
    expected = combine(jac, jnp.asarray(_weights(flat), jnp.float32))
    chex.assert_trees_all_close(out, expected, rtol=1e-4, atol=1e-6)
