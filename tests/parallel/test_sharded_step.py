"""A train step sharded over 8 simulated devices equals the same step on one device (HPS, M³ViT, the slim
model, HyperFormer++ adapters)."""

import functools

import jax
import numpy as np
import pytest

from mtljax.config import base_config
from mtljax.parallel.mesh import resolve_shape
from mtljax.parallel.rules import batch_shards
from mtljax.trainer.experiment import Experiment


def _config(model="hps"):
    c = base_config()
    c.data.num_train, c.data.num_test, c.data.batch_size = 256, 64, 32
    c.model.vit.update(width=32, depth=2, num_heads=4, mlp_dim=64)
    c.model.head_hidden = 16
    if model == "m3vit":  # per-task gates, MoE MLP in both blocks, experts split over `expert`
        c.model.name = "m3vit"
        c.model.vit.update(width=16, num_heads=2, mlp_dim=32)
        c.model.moe.update(num_experts=8, top_k=2, every=1)
    if model == "hyper":  # HyperFormer++: one shared hypernetwork generates every block's adapters
        c.model.vit.update(width=16, depth=1, num_heads=2, mlp_dim=16)
        c.model.peft.method = "hyperformer"
        c.model.peft.hyper.update(task_dim=6, hidden_dim=10, projected_dim=7, reduction_factor=4)
    if model == "slim":  # slimmable encoder + decoders, sandwich of 4 configurations and CI-KD
        c.model.name = "slim"
        c.model.vit.update(width=16, depth=1, num_heads=4, mlp_dim=32)
        c.model.slim.update(decoder_hidden=16, num_random=2)
    return c


@functools.lru_cache(maxsize=None)
def _reference(model="hps"):
    return _run({"data": 1}, jax.devices()[:1], model=model)[:2]


def _run(mesh_shape, devices, steps=3, model="hps"):
    c = _config(model)
    c.mesh.shape = mesh_shape
    exp = Experiment(c, devices=devices)
    with jax.set_mesh(exp.mesh):
        state, shardings = exp.init_state()
        step, batches = exp.jit_train_step(shardings), exp.train_batches()
        losses = []
        for _ in range(steps):
            state, m = step(state, next(batches))
            losses.append(np.asarray(m["task_losses"]))
        return jax.device_get(state.params), np.stack(losses), state, exp.mesh


@pytest.mark.parametrize("model, mesh_shape", [("hps", {"data": 2, "expert": 2, "model": 2}),
                                               ("m3vit", {"data": 2, "expert": 4}),
                                               ("slim", {"data": 4, "model": 2}),
                                               ("hyper", {"data": 4, "model": 2})])
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
    elif model == "hyper":  # the hypernetwork's generator is spread over the mesh
        assert len(state.params["backbone"]["hypernet"]["gen_up_kernel"].sharding.device_set) == 8
    else:
        assert tuple(mlp["fc1"]["kernel"].sharding.spec) == (None, "model" if "model" in mesh_shape else None)


def test_mesh_shape_errors():
    with pytest.raises(ValueError, match="not divisible"):
        resolve_shape({"data": -1, "model": 3}, 8)
    with pytest.raises(ValueError, match="needs 6 devices"):
        resolve_shape({"data": 3, "model": 2}, 8)
    assert resolve_shape({"data": -1, "expert": 2}, 8) == {"data": 4, "expert": 2}
