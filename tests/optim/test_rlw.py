"""RLW: weights are T·softmax of fresh N(0, I) draws (key-driven), independent of the losses."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtljax.optim import as_optax, get_method
from mtljax.optim.rlw import DISTRIBUTIONS, random_loss_weighting


def test_softmax_of_normal_draws_scaled_to_T():
    m = random_loss_weighting()
    assert m.stochastic and m.needs == "losses"
    key = jax.random.PRNGKey(3)
    w, state = jax.jit(m.weights)(jnp.asarray([1.0, 5.0, 0.1, 2.0]), m.init(4), key)
    z = np.asarray(jax.random.normal(key, (4,)), np.float64)
    np.testing.assert_allclose(w, 4 * np.exp(z) / np.exp(z).sum(), rtol=1e-5)
    assert state == ()
    w1, _ = random_loss_weighting(sum_to_one=True).weights(jnp.ones(4), (), key)
    np.testing.assert_allclose(w1, w / 4, rtol=1e-6)  # the paper's (LibMTL's) scale: Σw = 1


def test_differs_across_keys_and_ignores_losses():
    m = random_loss_weighting()
    f = jax.jit(m.weights)
    a, _ = f(jnp.asarray([1.0, 2.0, 3.0]), (), jax.random.PRNGKey(0))
    b, _ = f(jnp.asarray([1.0, 2.0, 3.0]), (), jax.random.PRNGKey(1))
    c, _ = f(jnp.asarray([9.0, 0.0, 3.0]), (), jax.random.PRNGKey(0))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, c)  # pure function of the key


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_distributions(dist):
    m = random_loss_weighting(distribution=dist)
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    ws, _ = jax.jit(jax.vmap(m.weights, in_axes=(None, None, 0)))(jnp.ones(3), (), keys)
    ws = np.asarray(ws)
    assert np.isfinite(ws).all() and (ws >= 0).all()
    if dist == "bernoulli":
        assert set(np.unique(ws)) <= {0.0, 1.0} and (ws.sum(1) > 0).all()
        np.testing.assert_allclose(ws.mean(0), 4 / 7, atol=0.04)  # P(w_t=1 | not all 0) = 4/7 for T=3
    else:
        np.testing.assert_allclose(ws.sum(1), 3.0, rtol=1e-5)
        np.testing.assert_allclose(ws.mean(0), 1.0, atol=0.05)  # exchangeable: E[w_t] = 1


def test_single_task():
    w, _ = random_loss_weighting().weights(jnp.asarray([2.0]), (), jax.random.PRNGKey(0))
    np.testing.assert_allclose(w, [1.0])


def test_optax_face_with_and_without_key():
    t = 2
    tx = optax.chain(as_optax(get_method("rlw"), t), optax.adam(1e-2))
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    jac = {"a": jnp.arange(6.0).reshape(t, 3), "b": jnp.ones((t, 2, 2))}
    st = tx.init(params)
    upd = jax.jit(lambda j, s, l, k: tx.update(j, s, params, losses=l, key=k))
    out, st = upd(jac, st, jnp.asarray([1.0, 2.0]), jax.random.PRNGKey(5))
    out2, st = jax.jit(lambda j, s, l: tx.update(j, s, params, losses=l))(jac, st, jnp.asarray([1.0, 2.0]))
    for o in (out, out2):
        chex.assert_trees_all_equal_shapes(o, params)
        chex.assert_tree_all_finite(o)


@pytest.mark.parametrize("kw", [{"distribution": "gamma"}, {"distribution": "Normal"}, {"sum_to_one": 1}])
def test_validation(kw):
    with pytest.raises(ValueError, match="rlw: "):
        random_loss_weighting(**kw)
