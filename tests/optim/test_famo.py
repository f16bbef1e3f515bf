"""FAMO: w = c·z/L with z = softmax(ξ), c = 1/Σ(z/L); ξ descends J_softmaxᵀ δ + γξ (Adam), δ = the
decrease of log L between consecutive calls — so tasks whose loss falls least gain weight."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.optim import get_method
from mtljax.optim.famo import famo


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _ref_famo(seq, lr, gamma, b1=0.9, b2=0.999, eps=1e-8):
    """The official algorithm (Adam with L2 decay on ξ), δ from the next call's losses."""
    t = seq.shape[1]
    xi, m, v, k, prev, out = np.zeros(t), np.zeros(t), np.zeros(t), 0, None, []
    for losses in np.asarray(seq, np.float64):
        d = losses + 1e-8
        if prev is not None:
            delta = np.log(prev) - np.log(d)
            z = _softmax(xi)
            g = z * (delta - z @ delta) + gamma * xi
            k += 1
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            xi = xi - lr * (m / (1 - b1 ** k)) / (np.sqrt(v / (1 - b2 ** k)) + eps)
        z = _softmax(xi)
        out.append((z / d) / np.sum(z / d))
        prev = d
    return np.stack(out), xi


def _run(m, seq):
    f = jax.jit(m.weights)
    state, ws = m.init(seq.shape[1]), []
    for losses in seq:
        w, state = f(jnp.asarray(losses, jnp.float32), state, None)
        ws.append(w)
    return np.stack(ws), state


@pytest.mark.parametrize("lr,gamma", [(0.025, 1e-3), (0.1, 0.01)])
def test_matches_reference(lr, gamma):
    seq = np.random.default_rng(0).uniform(0.2, 3.0, (8, 3)).astype(np.float32)
    ws, state = _run(famo(lr=lr, gamma=gamma), seq)
    ref_w, ref_xi = _ref_famo(seq, lr, gamma)
    np.testing.assert_allclose(ws, ref_w, rtol=1e-4)
    np.testing.assert_allclose(state["logits"], ref_xi, rtol=1e-4, atol=1e-6)


def test_first_call_is_inverse_loss_and_sums_to_one():
    w, state = famo().weights(jnp.asarray([1.0, 4.0]), famo().init(2), None)
    np.testing.assert_allclose(w, [0.8, 0.2], rtol=1e-6)  # z uniform: w ∝ 1/L, Σw = 1
    np.testing.assert_array_equal(state["logits"], 0.0)


def test_favours_task_whose_loss_decreased_least():
    m = famo(lr=0.05)
    seq = np.stack([0.9 ** np.arange(60), np.ones(60)], 1)  # task 0 improves, task 1 is stuck

    def body(state, losses):
        w, state = m.weights(losses, state, None)
        return state, w

    state, ws = jax.jit(lambda s, x: jax.lax.scan(body, s, x))(m.init(2), jnp.asarray(seq, jnp.float32))
    z = jax.nn.softmax(state["logits"])
    assert z[1] > 0.6 > 0.4 > z[0]
    contrib = np.asarray(ws[-1]) * seq[-1]  # w_t L_t ∝ z_t: the share of each task's log-gradient
    assert contrib[1] > contrib[0]
    np.testing.assert_allclose(np.asarray(ws).sum(1), 1.0, rtol=1e-5)


def test_single_task_zero_losses_and_purity():
    m = get_method("famo")
    w, _ = m.weights(jnp.asarray([3.0]), m.init(1), None)
    np.testing.assert_allclose(w, [1.0])  # T = 1: the single gradient unchanged
    ws, _ = _run(m, np.asarray([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]], np.float32))
    assert np.isfinite(ws).all()
    f, state = jax.jit(m.weights), m.init(2)
    a = f(jnp.asarray([1.0, 2.0]), state, jax.random.PRNGKey(0))
    b = f(jnp.asarray([1.0, 2.0]), state, jax.random.PRNGKey(1))
    chex.assert_trees_all_equal(a, b)
    chex.assert_trees_all_equal_dtypes(a[1], state)  # structure and dtypes


@pytest.mark.parametrize("kw", [{"lr": 0.0}, {"lr": float("inf")}, {"gamma": -1e-3}, {"gamma": float("nan")}])
def test_validation(kw):
    with pytest.raises(ValueError, match="famo: "):
        famo(**kw)
