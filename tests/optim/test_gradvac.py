"""GradVac: with β = 0 and zero targets it is PCGrad; targets follow an EMA of the cosines."""

import jax
import jax.numpy as jnp
import numpy as np

from mtljax.optim.gradvac import gradvac
from mtljax.optim.pcgrad import pcgrad


def test_zero_target_no_ema_is_pcgrad():
    rng = np.random.default_rng(1)
    vac, pc = jax.jit(gradvac(beta=0.0).weights), jax.jit(pcgrad().weights)  # traced once for the 5 cases
    for _ in range(5):
        jac = rng.standard_normal((2, 6))
        g = jnp.asarray(jac @ jac.T, jnp.float32)
        key = jax.random.PRNGKey(0)
        w_vac, _ = vac(jnp.ones(2), jnp.zeros((2, 2)), key, gramian=g)
        w_pc, _ = pc(jnp.ones(2), (), key, gramian=g)
        np.testing.assert_allclose(w_vac, w_pc, rtol=1e-4, atol=1e-6)


def test_targets_track_cosines_and_raise_similarity():
    jac = np.asarray([[1.0, 0.0], [0.6, 0.8]])  # cosine 0.6
    g = jnp.asarray(jac @ jac.T, jnp.float32)
    m = gradvac(beta=0.5)
    _, targets = m.weights(jnp.ones(2), jnp.zeros((2, 2)), jax.random.PRNGKey(0), gramian=g)
    np.testing.assert_allclose(targets[0, 1], 0.3, rtol=1e-5)  # (1-β)·0 + β·0.6
    # with a target above the observed cosine, g_1 is pulled toward g_2: its cosine reaches the target
    w, _ = m.weights(jnp.ones(2), jnp.asarray([[0.0, 0.9], [0.9, 0.0]]), jax.random.PRNGKey(0), gramian=g)
    assert w[0] > 1 and w[1] > 1
