"""Nash-MTL: the weights solve the bargaining equation α ⊙ (Gα) = 1, α > 0; the shared update is
clipped to max_norm, heads get α_t ∇L_t unclipped (as the official code's backward of Σ α_t L_t)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import fsolve

from mtljax.optim import as_optax, combine
from mtljax.optim.nash_mtl import nash_mtl

UNCLIPPED = nash_mtl(max_norm=0.0)
RAW = jax.jit(UNCLIPPED.weights)


@jax.jit
def _clipped_update(jac):
    """The default Nash-MTL update Jᵀα (clipped to norm 1) through its optax transform."""
    tx = as_optax(nash_mtl(), jac.shape[0])
    return tx.update({"x": jac}, tx.init({"x": jac[0]}), losses=jnp.ones(jac.shape[0]))[0]["x"]


def clipped_update(jac):
    return np.asarray(_clipped_update(jnp.asarray(jac, jnp.float32)), np.float64)


def _weights(jac, fn=RAW, state=None):
    jac = np.asarray(jac, np.float64)
    t = jac.shape[0]
    state = UNCLIPPED.init(t) if state is None else state
    w, state = fn(jnp.ones(t), state, jax.random.PRNGKey(0), gramian=jnp.asarray(jac @ jac.T, jnp.float32))
    return np.asarray(w, np.float64), state


def bargaining_root(gram):
    """Independent reference: solve α_i (Gα)_i = 1 with scipy's fsolve in log-space (float64)."""
    f = lambda b: np.exp(b) * (gram @ np.exp(b)) - 1.0
    b0 = -0.5 * np.log(np.diag(gram))
    b, info, ok, msg = fsolve(f, b0, full_output=True, xtol=1e-13)
    assert ok == 1, msg
    return np.exp(b)


def test_torchjd_documented_example():
    # TorchJD, docstring of torchjd.aggregation.NashMTL (cvxpy solver adapted from the official code):
    # J = [[-4, 1, 1], [6, 1, 1]] → [0.0542, 0.7061, 0.7061] (the bargaining direction clipped to norm 1)
    jac = np.array([[-4.0, 1, 1], [6, 1, 1]])
    np.testing.assert_allclose(clipped_update(jac), [0.0542, 0.7061, 0.7061], atol=2e-4)


def test_bargaining_equation_and_root_finding_reference():
    rng = np.random.default_rng(0)
    for seed in range(3):
        jac = rng.standard_normal((3, 6)) * rng.uniform(0.1, 5.0, size=(3, 1))
        gram = jac @ jac.T
        alpha, _ = _weights(jac)
        assert np.all(alpha > 0)
        np.testing.assert_allclose(alpha * (gram @ alpha), np.ones(3), rtol=1e-3)
        np.testing.assert_allclose(alpha, bargaining_root(gram), rtol=1e-3)
        np.testing.assert_allclose(np.linalg.norm(jac.T @ alpha) ** 2, 3.0, rtol=1e-3)  # ‖d‖² = αᵀGα = T
        # scale equivariance α(cG) = α(G)/√c, and the default clipping to norm max_norm = 1
        np.testing.assert_allclose(_weights(10.0 * jac)[0], alpha / 10.0, rtol=1e-3)
        clipped = clipped_update(jac)
        np.testing.assert_allclose(np.linalg.norm(clipped), 1.0, rtol=1e-4)
        np.testing.assert_allclose(clipped, jac.T @ alpha / np.linalg.norm(jac.T @ alpha), rtol=1e-4, atol=1e-6)


def test_single_task_gives_unit_gradient_by_definition():
    g = np.random.default_rng(1).standard_normal(6) * 3.0
    w, _ = _weights(g[None])
    np.testing.assert_allclose(w, [1.0 / np.linalg.norm(g)], rtol=1e-5)  # α = 1/‖g‖: update = g/‖g‖


def test_degenerate_gramians_stay_finite():
    g = np.random.default_rng(2).standard_normal(6)
    w, _ = _weights(np.stack([g, g, g]))  # identical: α = 1/(√3‖g‖) each (exact solution)
    np.testing.assert_allclose(w, np.full(3, 1 / (np.sqrt(3) * np.linalg.norm(g))), rtol=1e-4)
    for jac in (np.stack([g, np.zeros(6), g + 1.0]), np.stack([g, -g, g + 1.0]), np.zeros((3, 6))):
        w, _ = _weights(jac)
        assert np.all(np.isfinite(w)) and np.all(np.isfinite(jac.T @ w))
        assert np.all(np.isfinite(clipped_update(jac)))
    assert np.linalg.norm(clipped_update(np.stack([g, np.zeros(6), g + 1.0]))) <= 1.0 + 1e-5


def test_heads_get_unclipped_weighted_gradients():
    """Official code: backward of Σ α_t L_t, then clip_grad_norm_(shared parameters): heads get
    α_t ∇L_t at full scale, the shared update is clipped."""
    rng = np.random.default_rng(4)
    shared, h0, h1 = rng.standard_normal((2, 6)), rng.standard_normal(3), rng.standard_normal(3)
    jac = {"shared": jnp.asarray(shared, jnp.float32),
           "heads_a": jnp.asarray(np.stack([h0, np.zeros(3)]), jnp.float32),
           "heads_b": jnp.asarray(np.stack([np.zeros(3), h1]), jnp.float32)}
    from mtljax.optim.task_grads import TaskGradients

    grads = TaskGradients.from_rows(jac, jnp.ones(2), specific={"shared": False, "heads_a": True, "heads_b": True})
    tx = as_optax(nash_mtl(), 2)
    out, _ = tx.update(grads, tx.init({k: v[0] for k, v in jac.items()}))
    alpha = _weights(shared)[0]
    np.testing.assert_allclose(out["heads_a"], alpha[0] * h0, rtol=1e-4)
    np.testing.assert_allclose(out["heads_b"], alpha[1] * h1, rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(out["shared"]), 1.0, rtol=1e-4)


def test_update_weights_every_keeps_alpha_in_state():
    m = nash_mtl(max_norm=0.0, update_weights_every=2)
    fn = jax.jit(m.weights)
    rng = np.random.default_rng(3)
    jacs = [rng.standard_normal((3, 6)) for _ in range(3)]
    state = m.init(3)
    w0, state = _weights(jacs[0], fn, state)
    w1, state = _weights(jacs[1], fn, state)  # reused
    w2, state = _weights(jacs[2], fn, state)  # recomputed
    np.testing.assert_allclose(w1, w0)
    np.testing.assert_allclose(w2, _weights(jacs[2])[0], rtol=1e-6)
    assert int(state["step"]) == 3 and state["alpha"].shape == (3,)


def test_validation():
    for kwargs, arg in (({"max_norm": -1.0}, "max_norm"), ({"update_weights_every": 0}, "update_weights_every"),
                        ({"optim_niter": 0}, "optim_niter")):
        with pytest.raises(ValueError, match=arg):
            nash_mtl(**kwargs)


def test_optax_face_under_jit():
    rng = np.random.default_rng(7)
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    jac = {"a": jnp.asarray(rng.standard_normal((2, 3)), jnp.float32),
           "b": jnp.asarray(rng.standard_normal((2, 2, 2)), jnp.float32)}
    tx = optax.chain(as_optax(UNCLIPPED, 2), optax.adam(1e-2))
    updates, state = jax.jit(lambda j, s: tx.update(j, s, params, losses=jnp.ones(2)))(jac, tx.init(params))
    chex.assert_tree_all_finite(updates)
    # Adam's first moment after one step is 0.1 × its input, the combined update Jᵀw
    out = jax.tree.map(lambda m: m / 0.1, optax.tree_utils.tree_get(state, "mu"))
    flat = np.concatenate([np.asarray(jac["a"]), np.asarray(jac["b"]).reshape(2, -1)], axis=1)
    expected = combine(jac, jnp.asarray(_weights(flat)[0], jnp.float32))
    chex.assert_trees_all_close(out, expected, rtol=1e-4, atol=1e-6)
