"""DB-MTL from the Gramian: every task contributes its gradient direction at the norm
α = max_t EMA‖∇log L_t‖; with β = 0, or constant gradients, this is the paper's vector-EMA update."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.optim import get_method
from mtljax.optim.db_mtl import db_mtl


def _ref_db_mtl(Js, losses_seq, beta, sigma):
    """The paper / LibMTL rule with full gradient vectors: ĝ ← g + β_k(ĝ − g), g = ∇log L,
    update = Σ_t max_s‖ĝ_s‖ · ĝ_t/‖ĝ_t‖."""
    buf, out = np.zeros_like(Js[0], dtype=np.float64), []
    for k, (J, losses) in enumerate(zip(Js, losses_seq), start=1):
        g = J / (losses[:, None] + 1e-8)
        buf = g + beta / k ** sigma * (buf - g)
        n = np.linalg.norm(buf, axis=1)
        out.append(((n.max() / n)[:, None] * buf).sum(0))
    return out


def _run(m, Js, losses_seq):
    f, state, out = jax.jit(m.weights), m.init(Js[0].shape[0]), []
    for J, losses in zip(Js, losses_seq):
        J32 = jnp.asarray(J, jnp.float32)
        w, state = f(jnp.asarray(losses, jnp.float32), state, None, gramian=J32 @ J32.T)
        out.append(np.asarray(J32.T @ w, np.float64))
    return out, state


def test_beta_zero_is_the_paper_update_with_varying_gradients():
    rng = np.random.default_rng(0)
    Js = [rng.normal(size=(3, 6)) * np.array([[0.1], [1.0], [10.0]]) for _ in range(4)]
    ls = [rng.uniform(0.1, 5.0, 3) for _ in range(4)]
    for got, ref in zip(_run(db_mtl(beta=0.0), Js, ls)[0], _ref_db_mtl(Js, ls, 0.0, 0.0)):
        np.testing.assert_allclose(got, ref, rtol=1e-4)


@pytest.mark.parametrize("beta,sigma", [(0.9, 0.0), (0.5, 0.5)])
def test_ema_matches_vector_ema_when_directions_are_fixed(beta, sigma):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(3, 6))
    scales = rng.uniform(0.5, 2.0, (5, 3))  # gradient norms change, directions do not
    Js = [base * s[:, None] for s in scales]
    ls = [rng.uniform(0.1, 5.0, 3) for _ in range(5)]
    for got, ref in zip(_run(db_mtl(beta=beta, beta_sigma=sigma), Js, ls)[0], _ref_db_mtl(Js, ls, beta, sigma)):
        np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_every_task_contributes_the_max_log_gradient_norm():
    rng = np.random.default_rng(2)
    J = rng.normal(size=(3, 8)) * np.array([[0.01], [1.0], [100.0]])
    losses = np.array([0.01, 1.0, 100.0])
    m = db_mtl(beta=0.0)
    w, _ = m.weights(jnp.asarray(losses, jnp.float32), m.init(3), None, gramian=jnp.asarray(J @ J.T, jnp.float32))
    contrib = np.linalg.norm(np.asarray(w)[:, None] * J, axis=1)
    alpha = np.max(np.linalg.norm(J, axis=1) / losses)
    np.testing.assert_allclose(contrib, alpha, rtol=1e-4)


def test_single_task_rescales_and_degenerate_gramians():
    m = get_method("db_mtl")
    w, _ = m.weights(jnp.asarray([2.0]), m.init(1), None, gramian=jnp.asarray([[9.0]]))
    # T = 1 rescales by definition: α/‖g‖ with α = (1 − β)‖g‖/L at the first call → w = 0.1/2
    np.testing.assert_allclose(w, [0.05], rtol=1e-5)
    g = np.asarray([1.0, 2.0, 0.0])
    for J in (np.stack([g, np.zeros(3)]), np.stack([g, g]), np.zeros((2, 3))):
        w, _ = m.weights(jnp.asarray([1.0, 0.0]), m.init(2), None, gramian=jnp.asarray(J @ J.T, jnp.float32))
        assert np.isfinite(w).all()
    with pytest.raises(ValueError, match="db_mtl: needs the Gramian"):
        m.weights(jnp.ones(2), m.init(2), None)


def test_pure_and_fixed_state_structure():
    m = db_mtl()
    f, state, G = jax.jit(m.weights), m.init(2), jnp.asarray([[1.0, 0.5], [0.5, 2.0]])
    a = f(jnp.asarray([1.0, 2.0]), state, jax.random.PRNGKey(0), gramian=G)
    b = f(jnp.asarray([1.0, 2.0]), state, jax.random.PRNGKey(1), gramian=G)
    chex.assert_trees_all_equal(a, b)
    chex.assert_trees_all_equal_dtypes(a[1], state)  # structure and dtypes


@pytest.mark.parametrize("kw", [{"beta": 1.0}, {"beta": -0.1}, {"beta_sigma": -1.0}, {"beta_sigma": float("nan")}])
def test_validation(kw):
    with pytest.raises(ValueError, match="db_mtl: "):
        db_mtl(**kw)
