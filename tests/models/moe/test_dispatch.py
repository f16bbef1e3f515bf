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
