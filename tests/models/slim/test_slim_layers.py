"""Slimmable layers: masked (dynamic width) equals sliced (static width); FLOPs scale as w² / w;
switchable norms keep private rows; bad widths are one-line errors naming the argument."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.cost import compiled_flops
from mtljax.models.plugs import Context
from mtljax.models.slim.layers import (SlimAttention, SlimConv, SlimDense, SlimMlp, SlimNorm, active_count,
                                       check_widths, counts, width_index)

WIDTHS = (0.25, 0.5, 0.75, 1.0)


def random_variables(module, *inputs, seed=1):
    """Random parameters of ``module`` (numpy: no init compilation), all entries non-zero."""
    shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.PRNGKey(0), *inputs)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.5 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


def _input(shape, n_active, seed=0):
    """Full-width input whose channels beyond ``n_active`` are zero (what the previous masked layer gives)."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return x * (np.arange(shape[-1]) < n_active)


CASES = {
    "dense": (SlimDense(features=24, in_features=16, widths=WIDTHS), (3, 5, 16), True, True),
    "dense_fixed_out": (SlimDense(features=8, in_features=16, slim_out=False, widths=WIDTHS), (3, 16), True, False),
    "dense_fixed_in": (SlimDense(features=12, in_features=16, widths=WIDTHS), (3, 16), False, True),
    "conv": (SlimConv(features=8, in_features=12, strides=(2, 2), widths=WIDTHS), (2, 8, 8, 12), True, True),
    "norm": (SlimNorm(features=16, widths=WIDTHS), (3, 4, 16), True, True),
    "attention": (SlimAttention(num_heads=4, head_dim=4, embed=12, widths=WIDTHS), (2, 5, 12), False, False),
    "mlp": (SlimMlp(hidden=16, embed=12, widths=WIDTHS), (2, 5, 12), False, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_masked_equals_sliced_at_every_width(name):
    layer, shape, slim_in, slim_out = CASES[name]
    variables = random_variables(layer, jnp.zeros(shape))
    out_full = jax.eval_shape(lambda: layer.apply(variables, jnp.zeros(shape))).shape[-1]
    masked_fn = jax.jit(lambda v, x, i: layer.apply(v, x, Context(width_index=i, masked=True)))  # one compilation
    sliced_fn = jax.jit(lambda v, x, i: layer.apply(v, x, Context(width_index=i)), static_argnums=2)  # one per width
    for i, w in enumerate(WIDTHS):
        n_in = active_count(shape[-1], w) if slim_in else shape[-1]
        x = _input(shape, n_in)
        sliced = sliced_fn(variables, x[..., :n_in], i)
        masked = masked_fn(variables, x, jnp.int32(i))
        n_out = active_count(out_full, w) if slim_out else out_full
        assert sliced.shape[-1] == n_out
        np.testing.assert_allclose(masked[..., :n_out], sliced, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(masked[..., n_out:], 0.0)


def test_switchable_norm_keeps_a_private_affine_row_per_width():
    layer = SlimNorm(features=8, widths=WIDTHS)
    v = random_variables(layer, jnp.zeros((2, 8)))
    assert v["params"]["switch_scale"].shape == (4, 8)
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    apply = jax.jit(lambda v, x, i: layer.apply(v, x, Context(width_index=i)), static_argnums=2)
    before = [apply(v, x[:, :counts(8, WIDTHS)[i]], i) for i in range(4)]
    changed = jax.tree.map(lambda a: a + (np.arange(4) == 0)[:, None], v)  # only the narrowest width's row
    after = [apply(changed, x[:, :counts(8, WIDTHS)[i]], i) for i in range(4)]
    assert not np.allclose(before[0], after[0])
    for i in range(1, 4):
        np.testing.assert_array_equal(before[i], after[i])
    unit = {k: {"switch_scale": np.ones((4, 8), np.float32), "switch_bias": np.zeros((4, 8), np.float32)}
            for k in v}
    y = apply(unit, x[:, :4], 1)  # statistics over the active channels only: zero mean, unit variance
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(-1), 1.0, atol=1e-3)


def _layer_flops(layer, shape, width_index_, slim_in):
    w = WIDTHS[width_index_]
    n_in = active_count(shape[-1], w) if slim_in else shape[-1]
    params = jax.eval_shape(lambda: nn.unbox(layer.init(jax.random.PRNGKey(0), jnp.zeros(shape))))
    x = jax.ShapeDtypeStruct((*shape[:-1], n_in), jnp.float32)
    return compiled_flops(lambda p, x: layer.apply(p, x, Context(width_index=width_index_)), params, x)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_flops_of_an_interior_layer_scale_as_w_squared_and_as_w_with_one_side_fixed(kind):
    if kind == "dense":
        interior = SlimDense(features=64, in_features=64, use_bias=False, widths=WIDTHS)
        fixed_out = SlimDense(features=64, in_features=64, use_bias=False, slim_out=False, widths=WIDTHS)
        shape = (8, 64)
    else:
        interior = SlimConv(features=32, in_features=32, use_bias=False, widths=WIDTHS)
        fixed_out = SlimConv(features=32, in_features=32, use_bias=False, slim_out=False, widths=WIDTHS)
        shape = (1, 8, 8, 32)
    full = _layer_flops(interior, shape, 3, True)
    assert full > 0
    for i, w in enumerate(WIDTHS):
        assert _layer_flops(interior, shape, i, True) == pytest.approx(w * w * full, rel=1e-9)
        assert _layer_flops(fixed_out, shape, i, True) == pytest.approx(w * full, rel=1e-9)  # input slimmed only
        assert _layer_flops(interior, shape, i, False) == pytest.approx(w * full, rel=1e-9)  # output slimmed only


def test_bad_widths_are_one_line_errors_naming_the_argument():
    assert width_index(0.5, WIDTHS, "widths.encoder") == 1
    for bad, match in ((1.5, "widths.encoder: width multiplier 1.5 is outside \\(0, 1\\]"),
                       (0.0, "outside \\(0, 1\\]"), (-0.25, "outside"),
                       (0.3, "widths.encoder: width multiplier 0.3 is not in the trained set"),
                       ("wide", "must be a number")):
        with pytest.raises(ValueError, match=match) as err:
            width_index(bad, WIDTHS, "widths.encoder")
        assert "\n" not in str(err.value)
    for bad, match in (((), "is empty"), ((0.5, 1.2), "outside"), ((1.0, 0.5), "strictly increasing"),
                       ("abc", "sequence of numbers")):
        with pytest.raises(ValueError, match=match):
            check_widths(bad, "config.model.slim.encoder_widths")
    assert counts(4, WIDTHS) == (1, 2, 3, 4) and counts(3, WIDTHS) == (1, 2, 2, 3)
