"""The gather dispatch of tokens-choose routing equals the one-hot einsum reference, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.models.moe import routing as rt
from mtljax.models.moe.dispatch import EinsumDispatch, tokens_choose_gather


@pytest.mark.parametrize("batch_priority", [True, False])
@pytest.mark.parametrize("capacity", [3, 8])
def test_tokens_choose_gather_equals_the_one_hot_einsums(batch_priority, capacity):
    g, s, e, k, d = 3, 12, 4, 2, 5
    kx, kp, ko = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (g, s, d))
    probs = jax.nn.softmax(3.0 * jax.random.normal(kp, (g, s, e)), axis=-1)
    out = jax.random.normal(ko, (e, g, capacity, d))

    def run(make, x, probs, out):
        sl = rt.tokens_choose_slots(probs, k, capacity, batch_priority=batch_priority)
        disp = make(sl)
        return disp.dispatch(x), disp.combine(out)

    gather = lambda sl: tokens_choose_gather(sl, e, capacity)  # noqa: E731
    einsum = lambda sl: EinsumDispatch(*rt.slot_tensors(sl, e, capacity))  # noqa: E731
    got, want = run(gather, x, probs, out), run(einsum, x, probs, out)
    np.testing.assert_array_equal(got[0], want[0])  # slots are copies of token rows: exact
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-7)
    if capacity == 3:
        assert not bool(jnp.all(rt.tokens_choose_slots(probs, k, capacity)["kept"]))  # something is dropped
    w1, w2 = jax.random.normal(jax.random.PRNGKey(1), want[0].shape), jax.random.normal(jax.random.PRNGKey(2), want[1].shape)
    loss = lambda make: lambda *a: jnp.sum(run(make, *a)[0] * w1) + jnp.sum(run(make, *a)[1] * w2)  # noqa: E731
    g_got = jax.grad(loss(gather), argnums=(0, 1, 2))(x, probs, out)
    g_want = jax.grad(loss(einsum), argnums=(0, 1, 2))(x, probs, out)
    for a, b in zip(g_got, g_want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block,capacity_factor", [(4, 1.0), (16, 1.25)])
def test_packed_slots_and_row_block_experts_equal_the_plain_gather_layer(block, capacity_factor):
    from mtljax.models.moe import MoeMlp
    from mtljax.models.moe import dispatch as dp
    from mtljax.models.plugs import Context

    x = jax.random.normal(jax.random.PRNGKey(0), (6, 10, 16))
    old = dp.packed_block
    dp.packed_block = lambda *a: block  # small blocks: several per expert, a partial last one
    import mtljax.models.moe.mlp as mlp
    mlp.packed_block = dp.packed_block
    try:
        outs = []
        for pack in (False, True):
            layer = MoeMlp(4, 8, k=2, capacity_factor=capacity_factor, dispatch="gather", pack_slots=pack, group_size=2,
                           importance_weight=0.01, load_weight=0.01)
            params = layer.init({"params": jax.random.PRNGKey(1)}, x)["params"]
            params = {**params, "gate": jax.tree.map(lambda g: 30.0 * g, params["gate"])}  # drops happen

            def loss(p, x, layer=layer):
                y, aux = layer.apply({"params": p}, x, Context(train=True), rngs={"dropout": jax.random.PRNGKey(2)})
                return jnp.sum(y ** 2) + sum(aux["losses"].values()), (y, aux["metrics"]["moe_dropped"])

            (_, (y, dropped)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
            outs.append((y, dropped, grads))
    finally:
        dp.packed_block = mlp.packed_block = old
    assert capacity_factor > 1 or float(outs[0][1]) > 0  # capacity bites
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), outs[1][2], outs[0][2])
