"""Expert parallelism: on a (data=2, expert=4) mesh of simulated devices the MoE layer moves tokens by
all-to-all, never gathers expert weights (or tokens), and computes what one device computes. (A whole
M³ViT train step on that mesh is checked against one device in test_sharded_step.py.)"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.models.moe import MoeMlp
from mtljax.models.plugs import Context
from mtljax.parallel.mesh import make_mesh
from mtljax.parallel.rules import DEFAULT_RULES, batch_sharding, tree_shardings

X = jax.random.normal(jax.random.PRNGKey(0), (16, 10, 24))
IDS = jnp.arange(16) % 3


def _loss_and_grad(layer, params, x, ids):
    def loss(p):
        ctx = Context(train=True, task_ids=ids)
        y, aux = layer.apply({"params": p}, x, ctx, rngs={"dropout": jax.random.PRNGKey(3)})
        return jnp.mean(y ** 2) + sum(aux["losses"].values()), (y, aux)

    return jax.value_and_grad(loss, has_aux=True)(params)


@pytest.mark.parametrize("kw", [
    dict(router="tokens_choose", dispatch="gather", gate="task", importance_weight=0.01, load_weight=0.01,
         z_loss_weight=1e-3, mi_weight=0.005),
    dict(router="tokens_choose", dispatch="einsum", gate="task_conditioned"),
    dict(router="experts_choose", dispatch="gather", gate="shared"),
    dict(router="soft", gate="task", slots_per_expert=2),
], ids=["tokens_choose-gather", "tokens_choose-einsum", "experts_choose", "soft"])
def test_expert_parallel_layer_equals_single_device(kw):
    layer = MoeMlp(8, 32, k=2, capacity_factor=1.0, num_tasks=3, **kw)
    rngs = {"params": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)}
    boxed = layer.init(rngs, X, Context(task_ids=IDS))["params"]
    params = jax.tree.map(lambda a: a * 5 if a.ndim == 3 and a.shape[-1] == 8 else a, nn.unbox(boxed))
    (ref_loss, (ref_y, ref_aux)), ref_g = jax.jit(lambda p: _loss_and_grad(layer, p, X, IDS))(params)
    mesh = make_mesh({"data": 2, "expert": 4})
    with jax.set_mesh(mesh):
        shardings = tree_shardings(boxed, mesh, DEFAULT_RULES)
        bs = batch_sharding(mesh)
        f = jax.jit(lambda p, x, i: _loss_and_grad(layer, p, x, i), in_shardings=(shardings, bs, bs))
        args = (jax.device_put(params, shardings), jax.device_put(X, bs), jax.device_put(IDS, bs))
        (loss, (y, aux)), g = f(*args)
        hlo = f.lower(*args).compile().as_text()
    assert tuple(args[0]["wi"].sharding.spec)[0] == "expert"  # experts really are split over `expert`
    np.testing.assert_allclose(y, ref_y, atol=1e-5)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), aux, ref_aux)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), g, ref_g)
    # tokens travel to their experts and back by all-to-all; nothing (experts, tokens) is all-gathered
    assert hlo.count("all-to-all(") >= 2  # out to the experts and back (XLA may fuse the transposes)
    assert "all-gather" not in hlo


def test_ragged_dispatch_refuses_an_expert_mesh():
    layer = MoeMlp(8, 16, k=2, dispatch="ragged")
    params = nn.unbox(layer.init(jax.random.PRNGKey(0), X)["params"])
    with jax.set_mesh(make_mesh({"data": 2, "expert": 4})):
        with pytest.raises(ValueError, match="ragged"):
            jax.jit(lambda p, x: layer.apply({"params": p}, x))(params, X)
