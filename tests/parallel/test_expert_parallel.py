"""Expert parallelism: on a (data=2, expert=4) mesh of simulated devices the MoE layer moves tokens by
all-to-all, never gathers expert weights (or tokens), and computes what one device computes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.config import base_config
from mtljax.data import build_dataset, train_dataset, train_iterator
from mtljax.models import build_model
from mtljax.models.moe import MoeMlp
from mtljax.parallel.mesh import make_mesh
from mtljax.parallel.rules import DEFAULT_RULES, batch_sharding, tree_shardings
from mtljax.train import step as st
from mtljax.train.optimizer import build_optimizer
from mtljax.train.state import create_state

X = jax.random.normal(jax.random.PRNGKey(0), (16, 10, 24))
IDS = jnp.arange(16) % 3


def _loss_and_grad(layer, params, x, ids):
    def loss(p):
        y, aux = layer.apply({"params": p}, x, ids, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
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
    boxed = layer.init({"params": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)}, X, IDS)["params"]
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


def _m3vit_run(mesh_shape, devices, steps=2):
    c = base_config()
    c.model.name = "m3vit"
    c.data.num_train, c.data.num_test, c.data.batch_size = 64, 32, 16
    c.model.vit.update(width=16, depth=2, num_heads=2, mlp_dim=32)
    c.model.moe.update(num_experts=8, top_k=2, every=1, dispatch="gather")
    data = build_dataset(c.data)
    model = build_model(c.model, data.tasks, data.input_shape)
    tx = build_optimizer(c.optim, 100)
    mesh = make_mesh(mesh_shape, devices)
    with jax.set_mesh(mesh):
        state, shardings, _ = create_state(model, tx, data.input_shape, 0, mesh, DEFAULT_RULES)
        bs = batch_sharding(mesh)
        step = st.jit_train_step(st.make_train_step(model, data.tasks, tx, has_aux_losses=True), mesh, shardings, bs)
        it = train_iterator(train_dataset(data.splits["train"], data.tasks, c.data.batch_size, 0), prefetch=0)
        losses = []
        for _ in range(steps):
            batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(bs, np.asarray(x)), next(it))
            state, m = step(state, batch)
            losses.append(np.asarray(m["task_losses"]))
    return jax.device_get(state.params), np.stack(losses)


def test_m3vit_train_step_on_an_expert_mesh_equals_one_device():
    ref_params, ref_losses = _m3vit_run({"data": 1}, jax.devices()[:1])
    params, losses = _m3vit_run({"data": 2, "expert": 4}, jax.devices())
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, ref_params)
