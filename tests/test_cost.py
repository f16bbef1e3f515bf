"""Compiled FLOPs: a matmul costs 2·m·k·n at both stages; abstract arguments need no data."""

import jax
import jax.numpy as jnp
import pytest

from mtljax.cost import compiled_flops, flops_of


@pytest.mark.parametrize("stage", ["lowered", "compiled"])
def test_a_matmul_costs_two_flops_per_multiply_add(stage):
    a = jax.ShapeDtypeStruct((8, 16), jnp.float32)
    b = jax.ShapeDtypeStruct((16, 4), jnp.float32)
    assert compiled_flops(jnp.dot, a, b, stage=stage) == 2 * 8 * 16 * 4


def test_flops_of_an_existing_program_and_bad_stage():
    lowered = jax.jit(jnp.dot).lower(jnp.ones((3, 5)), jnp.ones((5, 2)))
    assert flops_of(lowered) == flops_of(lowered.compile()) == 2 * 3 * 5 * 2
    with pytest.raises(ValueError, match="stage: unknown 'fast'"):
        compiled_flops(jnp.dot, jnp.ones((2, 2)), jnp.ones((2, 2)), stage="fast")
