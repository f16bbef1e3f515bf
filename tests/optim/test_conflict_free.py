"""ConFIG: the update has the same positive cosine to every task gradient and length Σ_t g_tᵀd̂."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtljax.optim import as_optax, combine
from mtljax.optim.conflict_free import config

METHOD = config()
WEIGHTS = jax.jit(METHOD.weights)


def _weights(jac):
    jac = np.asarray(jac, np.float64)
    t = jac.shape[0]
    w, _ = WEIGHTS(jnp.ones(t), (), jax.random.PRNGKey(0), gramian=jnp.asarray(jac @ jac.T, jnp.float32))
    return np.asarray(w, np.float64)


def pinv_reference(jac):
    """Independent reference, the paper's formula on the vectors: U⁺1 normalised, times Σ_t g_tᵀĝ (float64)."""
    norms = np.linalg.norm(jac, axis=1, keepdims=True)
    units = np.divide(jac, norms, out=np.zeros_like(jac), where=norms > 0)
    direction = np.linalg.pinv(units, rcond=1e-6) @ np.ones(len(jac))
    unit = direction / np.linalg.norm(direction)
    return np.sum(jac @ unit) * unit


def test_torchjd_documented_example():
    # TorchJD, docstring of torchjd.aggregation.ConFIG: J = [[-4, 1, 1], [6, 1, 1]] → [0.1588, 2.0706, 2.0706]
    jac = np.array([[-4.0, 1, 1], [6, 1, 1]])
    np.testing.assert_allclose(jac.T @ _weights(jac), [0.1588, 2.0706, 2.0706], atol=2e-4)


def test_equal_cosines_projection_length_and_reference():
    rng = np.random.default_rng(0)
    for _ in range(3):
        jac = rng.standard_normal((3, 7)) * rng.uniform(0.2, 5.0, size=(3, 1))
        jac[1] = -0.7 * jac[0] + 0.5 * jac[1]
        d = jac.T @ _weights(jac)
        cos = jac @ d / (np.linalg.norm(jac, axis=1) * np.linalg.norm(d))
        assert cos.min() > 0
        np.testing.assert_allclose(cos, np.full(3, cos.mean()), rtol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(d), np.sum(jac @ d) / np.linalg.norm(d), rtol=1e-4)
        np.testing.assert_allclose(d, pinv_reference(jac), atol=1e-4 * np.linalg.norm(d))


def test_single_task_and_degenerate():
    rng = np.random.default_rng(1)
    g, h = rng.standard_normal((2, 7))
    np.testing.assert_allclose(_weights(g[None]), [1.0], rtol=1e-5)  # update = g
    np.testing.assert_allclose(_weights(np.stack([g, g, g])), np.ones(3), rtol=1e-4)  # d = 3g
    jac = np.stack([g, np.zeros(7), h])  # the zero gradient gets weight 0, the others equal cosines
    w = _weights(jac)
    assert w[1] == 0.0
    np.testing.assert_allclose(jac.T @ w, pinv_reference(jac), atol=1e-4 * np.linalg.norm(jac.T @ w))
    np.testing.assert_allclose(_weights(np.zeros((3, 7))), np.zeros(3))
    assert np.all(np.isfinite(_weights(np.stack([g, -g, h]))))


def test_validation():
    with pytest.raises(ValueError, match="rcond"):
        config(rcond=-1.0)


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
