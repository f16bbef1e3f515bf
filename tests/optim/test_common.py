"""Properties every registered multi-task method must have (in addition to its own tests).

Finiteness (degenerate gradients included), state round trips and jit/eager runs in float32 and float64
are checked in ``test_dtypes.py``.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtljax.optim import METHODS, as_optax, get_method
from mtljax.optim.base import combine, gramian_of

NAMES = sorted(METHODS)


def _jacobian(t, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((t, d)), jnp.float32)


def _update(method, jac, state, key, losses):
    """One update of a method on a ``[T, D]`` Jacobian, through its own interface."""
    if method.needs == "jacobian":
        return method.aggregate({"x": jac}, losses, state, key)
    gram = gramian_of({"x": jac}) if method.needs == "gramian" else None
    w, state = method.weights(losses, state, key, gramian=gram)
    return combine({"x": jac}, w), state


def _needs(name):
    try:
        return get_method(name).needs
    except ImportError:  # reported by the other tests of this file
        return None


# GradNorm is Gramian-based but a loss weighting at heart: its T=1 weight is 1 only after renormalising
AGGREGATORS = [n for n in NAMES if _needs(n) not in ("losses", None) and n != "gradnorm"]


@pytest.mark.parametrize("name", AGGREGATORS)
def test_single_task_returns_its_gradient_direction(name):
    method = get_method(name)
    jac = _jacobian(1)
    out, _ = _update(method, jac, method.init(1), jax.random.PRNGKey(0), jnp.ones(1))
    cos = float(jnp.dot(out["x"][0] if out["x"].ndim > 1 else out["x"], jac[0]) /
                (jnp.linalg.norm(out["x"]) * jnp.linalg.norm(jac[0]) + 1e-12))
    assert cos > 1 - 1e-5, f"{name}: T=1 update is not along the single gradient (cos={cos})"


@pytest.mark.parametrize("name", NAMES)
def test_optax_face_chains(name):
    method = get_method(name)
    tx = optax.chain(as_optax(method, 2), optax.adam(1e-2))
    params = {"a": jnp.ones((3,)), "b": jnp.ones((2, 2))}
    jac = {"a": jnp.stack([jnp.ones(3), -jnp.ones(3) * 0.5]), "b": jnp.stack([jnp.ones((2, 2)), jnp.eye(2)])}
    state = tx.init(params)
    update = jax.jit(lambda j, s, p, l, k: tx.update(j, s, p, losses=l, key=k))
    for i in range(3):  # losses that change from step to step, for the stateful weightings
        updates, state = update(jac, state, params, jnp.asarray([1.0, 2.0]) / (i + 1), jax.random.PRNGKey(i))
    chex.assert_trees_all_equal_shapes(updates, params)
    chex.assert_tree_all_finite(updates)
