"""Aligned-MTL: B J has orthogonal rows of equal norm (condition number 1); the update is their sum."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtljax.optim import as_optax, combine
from mtljax.optim.aligned_mtl import aligned_mtl, balance_matrix

METHOD = aligned_mtl()
WEIGHTS = jax.jit(METHOD.weights)
BALANCE = jax.jit(balance_matrix, static_argnums=1)


def _weights(jac, fn=WEIGHTS):
    jac = np.asarray(jac, np.float64)
    t = jac.shape[0]
    w, _ = fn(jnp.ones(t), (), jax.random.PRNGKey(0), gramian=jnp.asarray(jac @ jac.T, jnp.float32))
    return np.asarray(w, np.float64)


def svd_reference(jac, scale="min"):
    """Independent reference from the SVD J = U S Vᵀ: aligned rows √σ · U_R V_Rᵀ, update their sum."""
    u, s, vt = np.linalg.svd(jac, full_matrices=False)
    keep = s > s.max() * 1e-6
    lam = np.sort(s[keep] ** 2)
    sigma = {"min": lam[0], "median": lam[(len(lam) - 1) // 2], "rmse": lam.mean()}[scale]
    aligned = np.sqrt(sigma) * u[:, keep] @ vt[keep]
    return aligned, aligned.sum(axis=0)


def test_torchjd_documented_example_times_t():
    # TorchJD, docstring of torchjd.aggregation.AlignedMTL: J = [[-4, 1, 1], [6, 1, 1]] → [0.2133, 0.9673, 0.9673];
    # TorchJD averages the aligned gradients, the official code (followed here) sums them: × T = 2
    jac = np.array([[-4.0, 1, 1], [6, 1, 1]])
    np.testing.assert_allclose(jac.T @ _weights(jac), 2 * np.array([0.2133, 0.9673, 0.9673]), atol=3e-4)


def test_aligned_gradients_have_condition_number_one():
    rng = np.random.default_rng(0)
    for scale in ("min", "median", "rmse"):
        jac = rng.standard_normal((3, 7)) * np.array([[0.3], [1.0], [4.0]])
        b = np.asarray(BALANCE(jnp.asarray(jac @ jac.T, jnp.float32), scale), np.float64)
        aligned = b @ jac
        gram_aligned = aligned @ aligned.T
        ref_aligned, ref_update = svd_reference(jac, scale)
        np.testing.assert_allclose(gram_aligned, np.diag(np.diag(gram_aligned)), atol=1e-4 * gram_aligned.max())
        assert np.linalg.cond(gram_aligned) < 1 + 1e-3
        np.testing.assert_allclose(aligned, ref_aligned, atol=1e-4 * np.abs(ref_aligned).max())
        w = np.sum(b, axis=1) if scale != "min" else _weights(jac)
        np.testing.assert_allclose(jac.T @ w, ref_update, atol=1e-4 * np.abs(ref_update).max())


def test_rank_deficient_and_degenerate():
    rng = np.random.default_rng(1)
    g1, g2 = rng.standard_normal((2, 7))
    jac = np.stack([g1, g2, g1 + 2 * g2])  # rank 2: the null direction of G is dropped
    aligned = np.asarray(BALANCE(jnp.asarray(jac @ jac.T, jnp.float32), "min"), np.float64) @ jac
    eig = np.linalg.eigvalsh(aligned @ aligned.T)
    s = np.linalg.svd(jac, compute_uv=False)
    np.testing.assert_allclose(eig, [0.0, s[1] ** 2, s[1] ** 2], atol=1e-3 * s[1] ** 2)
    np.testing.assert_allclose(jac.T @ _weights(jac), svd_reference(jac)[1], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(_weights(np.stack([g1, g1, g1])), np.ones(3), rtol=1e-5)  # w = B·1 = 1
    np.testing.assert_allclose(_weights(np.zeros((3, 7))), np.ones(3))  # nothing kept: w = 1
    assert np.all(np.isfinite(_weights(np.stack([g1, np.zeros(7), -g1]))))
    np.testing.assert_allclose(_weights(g1[None]), [1.0], rtol=1e-6)


def test_validation():
    with pytest.raises(ValueError, match="scale"):
        aligned_mtl(scale="max")


def test_optax_face_under_jit():
    rng = np.random.default_rng(7)
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    jac = {"a": jnp.asarray(rng.standard_normal((2, 3)), jnp.float32),
           "b": jnp.asarray(rng.standard_normal((2, 2, 2)), jnp.float32)}
    tx = optax.chain(as_optax(METHOD, 2), optax.adam(1e-2))
    updates, state = jax.jit(lambda j, s: tx.update(j, s, params, losses=jnp.ones(2)))(jac, tx.init(params))
    chex.assert_tree_all_finite(updates)
    # Adam's first moment after one step is 0.1 × its input, the combined update Jᵀw
    out = jax.tree.map(lambda m: m / 0.1, optax.tree_utils.tree_get(state, "mu"))
    flat = np.concatenate([np.asarray(jac["a"]), np.asarray(jac["b"]).reshape(2, -1)], axis=1)
    expected = combine(jac, jnp.asarray(_weights(flat), jnp.float32))
    chex.assert_trees_all_close(out, expected, rtol=1e-4, atol=1e-6)
