"""GLS: Σ_t w_t ∇L_t is the gradient of the geometric mean (Π_t L_t)^{1/T}."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.optim import as_optax, get_method
from mtljax.optim.gls import geometric_loss


def test_update_is_gradient_of_geometric_mean():
    # toy model: L_t(θ) = ‖A_t θ − b_t‖² + 0.1; reference gradient of (Π L_t)^{1/T} by central differences
    rng = np.random.default_rng(0)
    t, d = 3, 5
    A, b, theta = rng.normal(size=(t, 4, d)), rng.normal(size=(t, 4)), rng.normal(size=d)

    def losses_np(th):
        return ((A @ th - b) ** 2).sum(1) + 0.1

    def gls_np(th):
        return np.prod(losses_np(th)) ** (1.0 / t)

    h = 1e-6
    ref = np.array([(gls_np(theta + h * e) - gls_np(theta - h * e)) / (2 * h) for e in np.eye(d)])
    J = 2 * np.einsum("tk,tkd->td", A @ theta - b, A)  # rows ∇L_t
    w, _ = jax.jit(geometric_loss().weights)(jnp.asarray(losses_np(theta), jnp.float32), (), None)
    np.testing.assert_allclose(J.T @ np.asarray(w, np.float64), ref, rtol=1e-4)


def test_closed_form_and_scale():
    losses = np.asarray([0.5, 2.0, 8.0])
    w, _ = geometric_loss().weights(jnp.asarray(losses, jnp.float32), (), None)
    gm = np.prod(losses) ** (1 / 3)  # = 2
    np.testing.assert_allclose(w, gm / (3 * losses), rtol=1e-6)
    np.testing.assert_allclose(np.dot(w, losses), gm, rtol=1e-6)  # Σ w_t L_t = GLS
    # many tasks with tiny losses: the product underflows float32, the log-space form does not
    w, _ = geometric_loss().weights(jnp.full(60, 1e-3), (), None)
    np.testing.assert_allclose(w, 1 / 60, rtol=1e-5)


def test_single_task_and_degenerate_losses():
    w, _ = geometric_loss().weights(jnp.asarray([7.0]), (), None)
    np.testing.assert_allclose(w, [1.0], rtol=1e-6)  # T = 1: the single gradient unchanged
    w, _ = geometric_loss().weights(jnp.asarray([0.0, 1.0, -1.0]), (), None)
    assert np.isfinite(w).all() and (w >= 0).all()


def test_jit_pure():
    m = get_method("gls")
    f = jax.jit(m.weights)
    a = f(jnp.asarray([1.0, 2.0]), m.init(2), jax.random.PRNGKey(0))
    b = f(jnp.asarray([1.0, 2.0]), m.init(2), jax.random.PRNGKey(1))
    chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize("eps", [0.0, -1.0, float("nan")])
def test_validation(eps):
    with pytest.raises(ValueError, match="gls: "):
        geometric_loss(eps=eps)


def test_optax_face_combines_with_weights():
    plain = as_optax(geometric_loss(), 2)  # w = GLS/(T L) = [1, 0.25] for L = [1, 4]
    jac = {"a": jnp.arange(6.0).reshape(2, 3)}
    out, _ = plain.update(jac, plain.init(None), losses=jnp.asarray([1.0, 4.0]))
    np.testing.assert_allclose(out["a"], jac["a"][0] + 0.25 * jac["a"][1], rtol=1e-6)
