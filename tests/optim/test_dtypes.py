"""The dtype policy (:mod:`mtljax.optim.dtypes`): every registered method runs on float32 and float64.

One function per method, vmapped over a batch of cases (well-conditioned and degenerate Jacobians) and
traced once per dtype: with ``jit`` float32 with ``jax_enable_x64`` off (as in training) and float64
with it on; without ``jit`` float64. The weights (GradDrop: the update) are finite, in the input's dtype and shape; the
state keeps its structure and dtypes through a second call; on the well-conditioned cases float64
agrees with float32 to float32 precision.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from mtljax.optim import METHODS, get_method

T, D = 3, 6
WELL = 3  # the first WELL cases are well conditioned, the others degenerate


def _cases():
    rng = np.random.default_rng(0)
    jac = [3.0 * np.eye(T, D) + rng.standard_normal((T, D)) for _ in range(WELL)]
    g = rng.standard_normal(D)
    jac += [np.zeros((T, D)), np.stack([g, g, g]), np.stack([g, -g, 0 * g])]
    jac = np.stack(jac)
    losses = rng.uniform(0.2, 2.0, (2, len(jac), T))  # one set per call
    return jac, jac @ jac.transpose(0, 2, 1), losses


def _one_call(method):
    def call(jac, gram, losses, state, key):
        if method.needs == "jacobian":
            update, state = method.aggregate({"x": jac}, losses, state, key)
            return update["x"], state
        return method.weights(losses, state, key, gramian=gram if method.needs == "gramian" else None)

    return call


class DtypeTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters((name, name) for name in sorted(METHODS))
    def test_float32_and_float64(self, name):
        method = get_method(name)
        step = self.variant(jax.vmap(_one_call(method)))
        jac, gram, losses = _cases()
        n = len(jac)
        keys = jax.random.split(jax.random.PRNGKey(0), (2, n))
        # with jit: float32 and float64, a second call where there is a state; without jit (op by op,
        # slow): float64, one call — the dtype policy, not the numbers, is what eager mode could change
        jitted = self.variant.type == "with_jit"
        calls = 2 if jax.tree.leaves(method.init(T)) and jitted else 1
        weights = {}
        for dtype in (jnp.float32, jnp.float64) if jitted else (jnp.float64,):
            with jax.enable_x64(dtype == jnp.float64):
                state = jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), method.init(T))
                weights[dtype] = []
                for call in range(calls):
                    w, new_state = step(jnp.asarray(jac, dtype), jnp.asarray(gram, dtype),
                                        jnp.asarray(losses[call], dtype), state, keys[call])
                    chex.assert_shape(w, (n, D if method.needs == "jacobian" else T))
                    chex.assert_type(w, dtype)
                    chex.assert_tree_all_finite((w, new_state))
                    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
                    weights[dtype].append(w[:WELL])
                    state = new_state
        if jitted:
            chex.assert_trees_all_close(weights[jnp.float64], weights[jnp.float32], rtol=1e-5, atol=1e-6)
