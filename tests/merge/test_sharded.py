"""Merging on a mesh: with parameters sharded over the ``model`` axis, the jitted merges return arrays with
the inputs' shardings by themselves (nothing is gathered to one device) and the values of the unsharded merge."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mtljax.merge import dare_merge, task_arithmetic, ties, weight_average
from mtljax.parallel.mesh import make_mesh

RNG = np.random.default_rng(0)
TREE = {"kernel": RNG.normal(size=(8, 16)).astype(np.float32), "bias": RNG.normal(size=(16,)).astype(np.float32)}
EXPERTS = [{k: v + RNG.normal(size=v.shape).astype(np.float32) for k, v in TREE.items()} for _ in range(3)]
SPECS = {"kernel": P(None, "model"), "bias": P("model")}

METHODS = {
    "weight_average": lambda p, f: weight_average(p, f),
    "task_arithmetic": lambda p, f: task_arithmetic(p, f, scale=0.3),
    "ties": lambda p, f: ties(p, f, density=0.3, scale=1.0),
    "dare": lambda p, f: dare_merge(p, f, p=0.5, key=jax.random.key(0), scale=0.3),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_sharded_merge_keeps_shardings_and_values(name):
    mesh = make_mesh({"data": 2, "expert": 1, "model": 4}, jax.devices())
    shard = {k: NamedSharding(mesh, s) for k, s in SPECS.items()}
    fn = METHODS[name]
    want = jax.jit(fn)(jax.tree.map(jnp.asarray, TREE), [jax.tree.map(jnp.asarray, e) for e in EXPERTS])
    with jax.set_mesh(mesh):
        pre = jax.device_put(TREE, shard)
        experts = [jax.device_put(e, shard) for e in EXPERTS]
        got = jax.jit(fn)(pre, experts)  # no out_shardings: what XLA keeps by itself
    for k in TREE:
        assert got[k].sharding.is_equivalent_to(shard[k], got[k].ndim)
        assert len(got[k].addressable_shards) == 8 and got[k].addressable_shards[0].data.shape[-1] == 4
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-6, atol=1e-6)
