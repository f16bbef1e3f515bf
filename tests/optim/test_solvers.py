"""Solver arguments: a Gramian that is not ``[T, T]`` or a bound that is not ``[T]`` is a shape error naming the
solver. (The solutions are checked against scipy in ``test_jacobian.py``, ``test_mgda.py`` and ``test_cagrad.py``.)"""

import jax.numpy as jnp
import pytest

from mtljax.optim.cagrad import cagrad_dual
from mtljax.optim.fairgrad import solve_fair_weights
from mtljax.optim.solvers import box_qp, min_norm_simplex, regularize

SOLVERS = {"min_norm_simplex": min_norm_simplex, "regularize": regularize,
           "box_qp": lambda g: box_qp(g, jnp.zeros(g.shape[:1])),
           "cagrad_dual": lambda g: cagrad_dual(g, 0.4, 10), "solve_fair_weights": lambda g: solve_fair_weights(g, 1.0)}


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_gramian_shape_errors_name_the_solver(name):
    for bad in (jnp.ones((3, 2)), jnp.ones(3), jnp.ones((2, 2, 2))):
        with pytest.raises(AssertionError, match=rf"{name}: the Gramian must be a \[T, T\] matrix"):
            SOLVERS[name](bad)
    if name == "box_qp":
        with pytest.raises(AssertionError, match=r"box_qp: the lower bound must be a \[T\] vector"):
            box_qp(jnp.eye(3), jnp.zeros(2))
