"""GradNorm: learned weights move w_t‖g_t‖ toward mean(w‖g‖)·r_t^α and always sum to T."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.optim import get_method
from mtljax.optim.gradnorm import gradnorm


def _ref_gradnorm(norms_seq, losses_seq, alpha, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Algorithm 1 of the paper: gradient of Σ|G_t − Ḡ r_t^α| (target constant), Adam step, Σw = T."""
    t = len(norms_seq[0])
    w, m, v, l0, out = np.ones(t), np.zeros(t), np.zeros(t), None, []
    for k, (n, losses) in enumerate(zip(norms_seq, losses_seq), start=1):
        out.append(w.copy())
        l0 = losses if l0 is None else l0
        rate = losses / l0
        r = rate / rate.mean()
        gw = w * n
        grad = np.sign(gw - gw.mean() * r ** alpha) * n
        m, v = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad * grad
        w = w - lr * (m / (1 - b1 ** k)) / (np.sqrt(v / (1 - b2 ** k)) + eps)
        w = np.maximum(w, 1e-4)
        w = t * w / w.sum()
    return np.stack(out)


def _scan(m, norms, losses_seq):
    G = jnp.diag(jnp.asarray(norms, jnp.float32) ** 2)

    def body(state, losses):
        w, state = m.weights(losses, state, None, gramian=G)
        return state, w

    return jax.jit(lambda s, x: jax.lax.scan(body, s, x))(m.init(len(norms)), jnp.asarray(losses_seq, jnp.float32))


def test_matches_reference_over_steps():
    rng = np.random.default_rng(0)
    norms_seq = rng.uniform(0.1, 3.0, (6, 3))
    losses_seq = rng.uniform(0.5, 2.0, (6, 3))
    m = gradnorm(alpha=1.5, lr=0.05)
    f, state, ws = jax.jit(m.weights), m.init(3), []
    for n, losses in zip(norms_seq, losses_seq):
        J = np.diag(n) @ np.linalg.qr(rng.normal(size=(3, 3)))[0]  # rows of norm n, random directions
        w, state = f(jnp.asarray(losses, jnp.float32), state, None, gramian=jnp.asarray(J @ J.T, jnp.float32))
        ws.append(w)
    np.testing.assert_allclose(np.stack(ws), _ref_gradnorm(norms_seq, losses_seq, 1.5, 0.05), rtol=1e-4)
    np.testing.assert_allclose(state["initial_losses"], losses_seq[0], rtol=1e-6)  # L(0) kept


def test_weighted_norms_equalise_when_rates_are_equal():
    norms = np.array([1.0, 4.0, 0.5])
    state, ws = _scan(gradnorm(lr=0.01), norms, np.ones((600, 3)))
    np.testing.assert_array_equal(ws[0], 1.0)  # the first call uses w = 1
    np.testing.assert_allclose(np.asarray(ws).sum(1), 3.0, rtol=1e-5)
    gw = np.asarray(state["w"]) * norms
    np.testing.assert_allclose(gw / gw.mean(), 1.0, atol=0.05)  # target ratio r^α = 1


def test_weighted_norms_follow_training_rates():
    # L(0) = [1, 1], then L = [1, 0.5]: r = [4/3, 2/3], targets Ḡ·r^α = [1.540, 0.544]·Ḡ (ratio 2^α).
    # The targets sum to 1.042·ΣG, so both cannot be met exactly: the weights settle where both tasks
    # sit (just) below target, i.e. G_0 ≤ 1.540·Ḡ and G_1 ≤ 0.544·Ḡ ⇔ G_0/G_1 ∈ [2.67, 3.34] ∋ 2^α.
    alpha, norms = 1.5, np.array([0.5, 2.0])
    losses = np.concatenate([np.ones((1, 2)), np.tile([[1.0, 0.5]], (599, 1))])
    state, _ = _scan(gradnorm(alpha=alpha, lr=0.01), norms, losses)
    w = np.asarray(state["w"])
    gw = w * norms
    r = np.array([4 / 3, 2 / 3])
    assert 2.6 < gw[0] / gw[1] < 3.4
    np.testing.assert_allclose(gw, gw.mean() * r ** alpha, atol=0.1 * gw.mean())
    np.testing.assert_allclose(w.sum(), 2.0, rtol=1e-6)


def test_single_task_and_degenerate_gramians():
    m = get_method("gradnorm")
    state, ws = _scan(m, np.array([2.0]), np.linspace(1.0, 0.1, 5)[:, None])
    np.testing.assert_allclose(ws, 1.0)  # T = 1: the single gradient unchanged
    g = np.asarray([1.0, 2.0, 0.0])
    f = jax.jit(m.weights)
    for J in (np.stack([g, np.zeros(3)]), np.stack([g, g]), np.zeros((2, 3))):
        state = m.init(2)
        for losses in ([1.0, 0.0], [0.5, 0.0]):
            w, state = f(jnp.asarray(losses), state, None, gramian=jnp.asarray(J @ J.T, jnp.float32))
            assert np.isfinite(w).all() and np.isfinite(state["w"]).all()
            np.testing.assert_allclose(np.sum(state["w"]), 2.0, rtol=1e-6)
    with pytest.raises(ValueError, match="gradnorm: needs the Gramian"):
        m.weights(jnp.ones(2), m.init(2), None)


def test_pure_and_fixed_state_structure():
    m = gradnorm()
    f, state, G = jax.jit(m.weights), m.init(2), jnp.asarray([[1.0, 0.5], [0.5, 2.0]])
    a = f(jnp.asarray([1.0, 2.0]), state, jax.random.PRNGKey(0), gramian=G)
    b = f(jnp.asarray([1.0, 2.0]), state, jax.random.PRNGKey(1), gramian=G)
    chex.assert_trees_all_equal(a, b)
    chex.assert_trees_all_equal_dtypes(a[1], state)  # structure and dtypes


@pytest.mark.parametrize("kw", [{"alpha": -1.0}, {"alpha": float("nan")}, {"lr": 0.0}, {"lr": float("inf")}])
def test_validation(kw):
    with pytest.raises(ValueError, match="gradnorm: "):
        gradnorm(**kw)
