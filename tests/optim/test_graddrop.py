"""GradDrop: single tasks and sign-consistent entries pass unchanged; the expectation follows P."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.optim.graddrop import graddrop


def test_consistent_signs_are_kept():
    jac = {"x": jnp.asarray([[1.0, -2.0, 0.5], [3.0, -1.0, 0.1]])}
    out, _ = graddrop().aggregate(jac, jnp.ones(2), (), jax.random.PRNGKey(0))
    np.testing.assert_allclose(out["x"], [4.0, -3.0, 0.6], rtol=1e-6)
    single, _ = graddrop().aggregate({"x": jac["x"][:1]}, jnp.ones(1), (), jax.random.PRNGKey(1))
    np.testing.assert_allclose(single["x"], jac["x"][0])


def test_expectation_matches_sign_purity():
    g1, g2 = 3.0, -1.0
    jac = {"x": jnp.tile(jnp.asarray([[g1], [g2]]), (1, 20000))}
    out, _ = jax.jit(graddrop().aggregate)(jac, jnp.ones(2), (), jax.random.PRNGKey(0))
    p = 0.5 * (1 + (g1 + g2) / (abs(g1) + abs(g2)))
    assert abs(float(jnp.mean(out["x"])) - (p * g1 + (1 - p) * g2)) < 0.05
    assert set(np.unique(np.asarray(out["x"]))) <= {g1, g2}


def test_bad_arguments():
    with pytest.raises(ValueError, match="leak"):
        graddrop(leak=2.0)
