"""A train step sharded over 8 simulated devices equals the same step on one device."""

import functools

import jax
import numpy as np
import pytest

from mtljax.config import base_config
from mtljax.data import build_dataset, train_dataset, train_iterator
from mtljax.models import build_model
from mtljax.parallel.mesh import make_mesh, resolve_shape
from mtljax.parallel.rules import DEFAULT_RULES, batch_sharding, batch_shards
from mtljax.slim.config import slim_defaults
from mtljax.train import step as st
from mtljax.train.optimizer import build_optimizer
from mtljax.train.state import create_state


def _config(model="hps"):
    c = base_config()
    c.data.num_train, c.data.num_test, c.data.batch_size = 256, 64, 32
    c.model.vit.update(width=32, depth=2, num_heads=4, mlp_dim=64)
    c.model.head_hidden = 16
    if model == "m3vit":  # per-task gates, MoE MLP in both blocks, experts split over `expert`
        c.model.name = "m3vit"
        c.model.vit.update(width=16, num_heads=2, mlp_dim=32)
        c.model.moe.update(num_experts=8, top_k=2, every=1)
    if model == "slim":  # slimmable encoder + decoders, sandwich of 4 configurations and CI-KD
        c.model.name = "slim"
        c.model.vit.update(width=16, depth=1, num_heads=4, mlp_dim=32)
        c.model.slim = slim_defaults()
        c.model.slim.update(decoder_hidden=16, num_random=2)
    return c


@functools.lru_cache(maxsize=None)
def _reference(model="hps"):
    return _run({"data": 1}, jax.devices()[:1], model=model)[:2]


def _run(mesh_shape, devices, steps=3, model="hps"):
    c = _config(model)
    data = build_dataset(c.data)
    model = build_model(c.model, data.tasks, data.input_shape)
    tx = build_optimizer(c.optim, 100)
    mesh = make_mesh(mesh_shape, devices)
    with jax.set_mesh(mesh):
        state, shardings, _ = create_state(model, tx, data.input_shape, 0, mesh, DEFAULT_RULES)
        bsh = batch_sharding(mesh)
        step = st.jit_train_step(st.make_train_step(model, data.tasks, tx, has_aux_losses=c.model.name != "hps"),
                                 mesh, shardings, bsh)
        it = train_iterator(train_dataset(data.splits["train"], data.tasks, c.data.batch_size, 0), prefetch=0)
        losses = []
        for _ in range(steps):
            batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(bsh, np.asarray(x)), next(it))
            state, m = step(state, batch)
            losses.append(np.asarray(m["task_losses"]))
        return jax.device_get(state.params), np.stack(losses), state, mesh


@pytest.mark.parametrize("model, mesh_shape", [("hps", {"data": 8}), ("hps", {"data": 2, "expert": 2, "model": 2}),
                                               ("m3vit", {"data": 2, "expert": 4}),
                                               ("slim", {"data": 4, "model": 2})])
def test_sharded_step_equals_single_device(model, mesh_shape):
    ref_params, ref_losses = _reference(model)
    params, losses, state, mesh = _run(mesh_shape, jax.devices(), model=model)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, ref_params)
    # the batch really is split; MLP kernels are split over `model`, experts over `expert`
    assert batch_shards(mesh) == mesh.shape["data"] * mesh.shape.get("expert", 1)
    mlp = state.params["backbone"]["block0"]["mlp"]
    if model == "m3vit":
        assert tuple(mlp["wi"].sharding.spec)[0] == "expert"
    elif model == "slim":  # slimmable MLP kernels split over `model` too
        assert "model" in tuple(mlp["fc1"]["kernel"].sharding.spec)
    else:
        assert tuple(mlp["fc1"]["kernel"].sharding.spec) == (None, "model" if "model" in mesh_shape else None)


def test_mesh_shape_errors():
    with pytest.raises(ValueError, match="not divisible"):
        resolve_shape({"data": -1, "model": 3}, 8)
    with pytest.raises(ValueError, match="needs 6 devices"):
        resolve_shape({"data": 3, "model": 2}, 8)
    assert resolve_shape({"data": -1, "expert": 2}, 8) == {"data": 4, "expert": 2}
