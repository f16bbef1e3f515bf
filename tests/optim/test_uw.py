"""Uncertainty weighting: w = ½e^{-s}, s learned by Adam on Σ ½e^{-s}L + ½s, so s → log L."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.optim import get_method
from mtljax.optim.uw import uncertainty_weighting


def _adam_np(p, g, m, v, k, lr, b1=0.9, b2=0.999, eps=1e-8):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return p - lr * (m / (1 - b1 ** k)) / (np.sqrt(v / (1 - b2 ** k)) + eps), m, v


def test_matches_numpy_reference_over_steps():
    # reference: joint gradient step on the paper's objective, ∂/∂s_t = ½ − ½e^{−s_t} L_t, Adam(lr)
    lr, s0 = 0.01, -0.5
    m = uncertainty_weighting(lr=lr, init_log_var=s0)
    step = jax.jit(m.weights)
    state = m.init(3)
    s, mom, vel = np.full(3, s0), np.zeros(3), np.zeros(3)
    rng = np.random.default_rng(0)
    for k in range(1, 6):
        losses = rng.uniform(0.1, 5.0, 3).astype(np.float32)
        w, state = step(jnp.asarray(losses), state, jax.random.PRNGKey(0))
        np.testing.assert_allclose(w, 0.5 * np.exp(-s), rtol=1e-5)  # weights at the current s
        s, mom, vel = _adam_np(s, 0.5 - 0.5 * np.exp(-s) * losses, mom, vel, k, lr)
        np.testing.assert_allclose(state["log_var"], s, rtol=1e-5, atol=1e-6)


def test_log_variances_move_to_log_loss_scales():
    m = uncertainty_weighting(lr=0.05)
    losses = jnp.asarray([0.1, 1.0, 10.0])

    def body(state, _):
        w, state = m.weights(losses, state, None)
        return state, w

    state, ws = jax.jit(lambda s: jax.lax.scan(body, s, None, length=1500))(m.init(3))
    np.testing.assert_allclose(state["log_var"], np.log(losses), atol=0.05)
    np.testing.assert_allclose(ws[-1] * losses, 0.5, rtol=0.06)  # every weighted term → ½
    assert ws[-1][0] > ws[-1][1] > ws[-1][2]  # small loss → large weight


def test_single_task_rescales_by_definition():
    m = uncertainty_weighting()
    w, _ = m.weights(jnp.asarray([3.0]), m.init(1), None)
    np.testing.assert_allclose(w, [0.5])  # ½e^{−s} with s = 0, not 1: UW rescales the single loss


def test_pure_and_fixed_state_structure():
    m = get_method("uw", lr=1e-2)
    state = m.init(2)
    f = jax.jit(m.weights)
    a = f(jnp.asarray([1.0, 2.0]), state, jax.random.PRNGKey(1))
    b = f(jnp.asarray([1.0, 2.0]), state, jax.random.PRNGKey(2))
    chex.assert_trees_all_equal(a, b)
    chex.assert_trees_all_equal_dtypes(a[1], state)  # structure and dtypes
    w, _ = f(jnp.asarray([0.0, 1e30]), state, None)  # extreme losses stay finite
    assert np.isfinite(w).all()


@pytest.mark.parametrize("kw", [{"lr": 0.0}, {"lr": -1.0}, {"lr": float("nan")}, {"init_log_var": float("inf")}])
def test_validation(kw):
    with pytest.raises(ValueError, match="uw: "):
        uncertainty_weighting(**kw)
