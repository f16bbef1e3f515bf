"""STCH: w = ∂/∂L of T·μ·log Σ exp(λ(ℓ − z)/μ); μ → 0 concentrates on the worst task."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.optim import get_method
from mtljax.optim.stch import smooth_tchebycheff


def _stch_np(L, nadir, lam, mu, log_losses):
    ell = np.log(L + 1e-8) - np.log(nadir + 1e-8) if log_losses else L
    return len(L) * mu * np.log(np.sum(np.exp(lam * ell / mu)))


def _fd_grad(f, x, h=1e-6):
    return np.array([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(len(x))])


@pytest.mark.parametrize("log_losses", [True, False])
@pytest.mark.parametrize("mu", [0.3, 1.0, 5.0])
def test_weights_are_the_gradient_of_the_objective(log_losses, mu):
    lam = np.array([1.0, 2.0, 0.5])
    nadir = np.array([2.0, 0.5, 1.0])
    L = np.array([1.5, 0.7, 3.0])
    m = smooth_tchebycheff(mu=mu, preference=list(lam), log_losses=log_losses)
    f = jax.jit(m.weights)
    state = m.init(3)
    _, state = f(jnp.asarray(nadir, jnp.float32), state, None)  # warmup_steps=0: nadir = first losses
    if log_losses:
        np.testing.assert_allclose(state["nadir"], nadir, rtol=1e-6)
    w, _ = f(jnp.asarray(L, jnp.float32), state, None)
    ref = _fd_grad(lambda x: _stch_np(x, nadir, lam, mu, log_losses), L)
    np.testing.assert_allclose(w, ref, rtol=1e-4)


def test_small_mu_concentrates_on_worst_task_large_mu_is_equal():
    L = jnp.asarray([1.0, 3.0, 2.0])
    w, _ = smooth_tchebycheff(mu=1e-3, log_losses=False).weights(L, (), None)
    np.testing.assert_allclose(w, [0.0, 3.0, 0.0], atol=1e-6)  # all weight (T) on max L
    w, _ = smooth_tchebycheff(mu=1e6, log_losses=False).weights(L, (), None)
    np.testing.assert_allclose(w, 1.0, rtol=1e-4)  # equal weighting
    # log mode: the worst task is the one with the largest L/N, not the largest L
    m = smooth_tchebycheff(mu=1e-3)
    _, state = m.weights(jnp.asarray([10.0, 1.0, 1.0]), m.init(3), None)
    w, _ = m.weights(jnp.asarray([5.0, 2.0, 1.0]), state, None)  # L/N = [0.5, 2, 1]
    np.testing.assert_allclose(w, [0.0, 3.0 / 2.0, 0.0], atol=1e-5)


def test_warmup_uses_log_losses_then_mean_nadir():
    m = smooth_tchebycheff(warmup_steps=3)
    f, state = jax.jit(m.weights), m.init(2)
    seq = np.asarray([[1.0, 4.0], [2.0, 2.0], [3.0, 6.0]], np.float32)
    for losses in seq:
        w, state = f(jnp.asarray(losses), state, None)
        np.testing.assert_allclose(w, 1.0 / losses, rtol=1e-5)  # ∇ Σ log L
    w, state = f(jnp.asarray([2.0, 4.0]), state, None)
    np.testing.assert_allclose(state["nadir"], seq.mean(0), rtol=1e-6)
    np.testing.assert_allclose(w, [0.5, 0.25], rtol=1e-5)  # L = N: uniform softmax, w = T·½/L
    for _ in range(3):  # the nadir is fixed once set
        _, state = f(jnp.asarray([0.1, 0.1]), state, None)
    np.testing.assert_allclose(state["nadir"], seq.mean(0), rtol=1e-6)


def test_single_task_degenerate_and_purity():
    w, _ = smooth_tchebycheff(log_losses=False).weights(jnp.asarray([5.0]), (), None)
    np.testing.assert_allclose(w, [1.0])  # plain mode: the single gradient unchanged
    m = get_method("stch")
    w, _ = m.weights(jnp.asarray([4.0]), m.init(1), None)
    np.testing.assert_allclose(w, [0.25], rtol=1e-6)  # log mode rescales by definition: ∇log L = ∇L/L
    f, state = jax.jit(m.weights), m.init(2)
    for losses in ([0.0, 1.0], [0.0, 0.0], [1e30, 0.0]):
        w, state = f(jnp.asarray(losses), state, None)
        assert np.isfinite(w).all()
    a = f(jnp.asarray([1.0, 2.0]), m.init(2), jax.random.PRNGKey(0))
    b = f(jnp.asarray([1.0, 2.0]), m.init(2), jax.random.PRNGKey(1))
    chex.assert_trees_all_equal(a, b)
    chex.assert_trees_all_equal_dtypes(a[1], m.init(2))  # structure and dtypes


@pytest.mark.parametrize("kw", [{"mu": 0.0}, {"mu": float("inf")}, {"warmup_steps": -1}, {"warmup_steps": 2.0},
                                {"preference": [1.0, -1.0]}, {"preference": []}, {"log_losses": "yes"}])
def test_validation(kw):
    with pytest.raises(ValueError, match="stch: "):
        smooth_tchebycheff(**kw)


def test_preference_length_checked_at_init():
    with pytest.raises(ValueError, match="stch: preference has 2 entries but there are 3 tasks"):
        smooth_tchebycheff(preference=[1.0, 2.0]).init(3)
