"""IMTL-G: the update has equal projections on every unit task gradient; weights sum to one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.optim.imtl import imtl_g


@pytest.mark.parametrize("t", [2, 3, 6])
def test_equal_projections(t):
    rng = np.random.default_rng(t)
    jac = rng.standard_normal((t, 12)) * rng.uniform(0.1, 10, (t, 1))
    w, _ = jax.jit(imtl_g().weights)(jnp.ones(t), (), jax.random.PRNGKey(0), gramian=jnp.asarray(jac @ jac.T))
    d = jac.T @ np.asarray(w)
    proj = jac @ d / np.linalg.norm(jac, axis=1)
    np.testing.assert_allclose(proj, proj[0], rtol=1e-3)
    assert abs(float(np.sum(w)) - 1) < 1e-5


def test_bad_arguments():
    with pytest.raises(ValueError, match="rcond"):
        imtl_g(rcond=0)
