"""Polytropon / MHR (mtljax.models.peft.poly) against independent numpy references: the routed update per
head, uniform routing = the LoRA of the averaged skills (MHR-μ), deterministic eval / stochastic
training routing, only the routing logits task-specific and the inventory's size independent of T,
mixed task ids = each task's own pass, the routing report, and a sharded step = the 1-device step."""

import json
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.commands.routing import poly_routing_report
from mtljax.config import base_config
from mtljax.models import build_model
from mtljax.models.objective import objective
from mtljax.models.peft import PolyDelta, PolySettings, routing_matrices, routing_uniform
from mtljax.optim.trainable import path_string
from mtljax.tasks import Task
from mtljax.parallel.mesh import make_mesh
from mtljax.parallel.rules import batch_sharding, tree_shardings
from mtljax.trainer.warm_start import _per_task_paths
from param_trees import random_like, shapes

TASKS = (Task("a", "multiclass", num_classes=3), Task("b", "regression"))
T, B, S, K, R, ALPHA = len(TASKS), 3, 5, 4, 2, 6.0
X = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
TARGETS = ("key", "out", "fc2")  # [D] -> [H, hd], [H, hd] -> [D], mlp -> embed (split over `model`)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _reference_delta(x, ids, a, b, z, alpha):
    """numpy, one example and head at a time: A_t = [Σ_k ŵ A_k^j]_j stacked on the input, B_t on the output."""
    k, h, _, r = a.shape
    w = _sigmoid(z.astype(np.float64))
    w = w / (w.sum(-1, keepdims=True) + 1e-12)  # [T, h, K]
    out = []
    for n, t in enumerate(ids):
        a_t = np.concatenate([sum(w[t, j, s] * a[s, j] for s in range(k)) for j in range(h)], axis=0)  # [d_in, r]
        b_t = np.concatenate([sum(w[t, j, s] * b[s, j] for s in range(k)) for j in range(h)], axis=1)  # [r, d_out]
        out.append(alpha / r * x[n].reshape(x.shape[1], -1) @ a_t @ b_t)
    return np.stack(out)


# (heads, input shape and axes, output shape and axes): Polytropon on a flat projection; MHR on [heads, kv] sides
CASES = [(1, (8,), ("embed",), (6,), ("mlp",)),
         (2, (2, 4), ("heads", "kv"), (2, 3), ("heads", "kv"))]


@pytest.mark.parametrize("heads,in_shape,in_axes,out_shape,out_axes", CASES)
def test_routed_update_equals_numpy_per_head_and_eval_is_deterministic(heads, in_shape, in_axes, out_shape, out_axes):
    settings = PolySettings(skills=K, heads=heads, rank=R, alpha=ALPHA, targets=("query",), temperature=0.5)
    mod = PolyDelta(T, settings, out_shape, in_axes, out_axes)
    x = jax.random.normal(jax.random.PRNGKey(1), (B, S, *in_shape))
    ids = jnp.array([1, 0, 1])
    params = random_like(jax.eval_shape(lambda: nn.unbox(mod.init(jax.random.PRNGKey(0), x, ids))), seed=heads)["params"]
    assert params["skills_a"].shape == (K, heads, int(np.prod(in_shape)) // heads, R)
    assert params["skills_b"].shape == (K, heads, R, int(np.prod(out_shape)) // heads)
    assert params["poly_routing"].shape == (T, heads, K)
    run = jax.jit(lambda p, key, train: mod.apply({"params": p}, x, ids, train, rngs={"dropout": key}),
                  static_argnums=2)
    got = run(params, jax.random.PRNGKey(0), False)
    want = _reference_delta(np.asarray(x, np.float64).reshape(B, S, -1), np.asarray(ids),
                            *(np.asarray(params[n], np.float64) for n in ("skills_a", "skills_b", "poly_routing")), ALPHA)
    np.testing.assert_allclose(np.asarray(got).reshape(B, S, -1), want, rtol=1e-4, atol=1e-5)
    # eval: no noise, whatever the rng; training: Gumbel-sigmoid noise, another draw per rng
    np.testing.assert_array_equal(run(params, jax.random.PRNGKey(7), False), got)
    t1, t2 = run(params, jax.random.PRNGKey(1), True), run(params, jax.random.PRNGKey(2), True)
    assert not np.allclose(t1, t2, atol=1e-4) and not np.allclose(t1, got, atol=1e-4)
    np.testing.assert_array_equal(run(params, jax.random.PRNGKey(1), True), t1)


def _cfg(width=16, **poly):
    c = base_config().model
    c.vit.update(width=width, depth=1, num_heads=2, mlp_dim=32, patch_size=4, pool="gap")
    c.peft.method = "poly"
    c.peft.poly.update(dict(skills=K, heads=2, rank=R, alpha=ALPHA, targets=TARGETS) | poly)
    return c


@pytest.fixture(scope="module")
def poly_model():
    model = build_model(_cfg(), TASKS, (8, 8, 1))
    params = random_like(shapes(model, X), seed=3, scale=0.3)
    return model, params


def test_only_routing_is_task_specific_and_inventory_size_is_independent_of_tasks(poly_model):
    model, params = poly_model
    spec = objective(model, TASKS).specific(params)
    marked = {path_string(p) for p, m in jax.tree_util.tree_flatten_with_path(spec)[0] if m}
    poly = [path_string(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0] if "poly_" in path_string(p)]
    assert len(poly) == 3 * len(TARGETS)
    for path in poly:
        assert (path in marked) == path.endswith("/poly_routing"), path
    # warm starts match per-task slots by task name for the routing rows only; the skills load by path
    flat = {path_string(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert sorted(_per_task_paths(flat, spec, T)) == sorted(p for p in poly if p.endswith("/poly_routing"))
    three = build_model(_cfg(), TASKS + (Task("c", "regression"),), (8, 8, 1))
    s2, s3 = (dict((path_string(p), x.shape) for p, x in jax.tree_util.tree_flatten_with_path(shapes(m, X))[0])
              for m in (model, three))
    for path in poly:
        if path.endswith("/poly_routing"):
            assert s2[path] == (T, 2, K) and s3[path] == (T + 1, 2, K)
        else:
            assert s2[path] == s3[path]


def test_mixed_task_ids_equal_each_tasks_own_pass(poly_model):
    model, params = poly_model
    ids = jnp.array([1, 0, 0, 1], jnp.int32)
    passes = jax.jit(lambda p: model.apply({"params": p}, X)[0])(params)
    mixed = jax.jit(lambda p: model.apply({"params": p}, X, task_ids=ids)[0])(params)
    for i, t in enumerate(np.asarray(ids)):
        name = TASKS[t].name
        chex.assert_trees_all_close(mixed[name][i], passes[name][i], atol=1e-5)


def _lora_of_average(tree):
    """A LoRA parameter tree whose every task's factors are the plain average of the skills' factors
    (numpy; ``A = [mean_k A_k^j]_j`` stacked on the input, ``B`` on the output)."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for key, value in tree.items():
        if key.startswith("poly_"):
            a, b = np.asarray(value["skills_a"]).mean(0), np.asarray(value["skills_b"]).mean(0)  # [h, i, r], [h, r, o]
            h, _, r = a.shape
            out["lora_" + key[5:]] = {"a": np.broadcast_to(a.reshape(-1, r), (T, a.shape[0] * a.shape[1], r)),
                                      "b": np.broadcast_to(b.transpose(1, 0, 2).reshape(r, -1), (T, r, h * b.shape[2]))}
        else:
            out[key] = _lora_of_average(value)
    return out


def test_uniform_routing_is_the_lora_of_the_averaged_skills(poly_model):
    """MHR-μ: zero logits give ŵ = 1/K, so every task's update is the LoRA of the skills' average."""
    model, params = poly_model
    uniform = routing_uniform(params, range(T))
    assert all(np.allclose(m, 1 / K) for m in routing_matrices(uniform).values())
    lora_cfg = _cfg()
    lora_cfg.peft.update(dict(method="lora", rank=R, alpha=ALPHA, targets=TARGETS))
    lora = build_model(lora_cfg, TASKS, (8, 8, 1))
    flat, tree = jax.tree_util.tree_flatten_with_path(_lora_of_average(jax.device_get(uniform)))
    want_shapes = jax.tree_util.tree_flatten_with_path(shapes(lora, X))[0]
    assert [path_string(p) for p, _ in flat] == [path_string(p) for p, _ in want_shapes]
    # LoRA keeps the projection's [heads, kv] sides: the flat factors reshaped into them
    lora_params = jax.tree_util.tree_unflatten(tree, [jnp.asarray(x).reshape(s.shape) for (_, x), (_, s)
                                                      in zip(flat, want_shapes)])
    forward = jax.jit(lambda p: model.apply({"params": p}, X)[0])
    got = forward(uniform)
    want = jax.jit(lambda p: lora.apply({"params": p}, X)[0])(lora_params)
    chex.assert_trees_all_close(got, want, atol=1e-5)
    base = forward(params)
    assert not np.allclose(base["b"], got["b"], atol=1e-4)  # the learned routing matters


def test_routing_report_writes_heatmaps_and_the_normalised_matrices(poly_model, tmp_path):
    _, params = poly_model
    poly_routing_report(params, [t.name for t in TASKS], str(tmp_path), step=5, log=lambda s: None)
    assert sorted(os.listdir(tmp_path)) == ["block0_attn_poly_key.png", "block0_attn_poly_out.png",
                                            "block0_mlp_poly_fc2.png", "routing.json"]
    with open(tmp_path / "routing.json") as f:
        data = json.load(f)
    assert data["rows"] == ["a", "b"] and data["step"] == 5
    layers = data["layers"]
    assert len(layers) == len(TARGETS)
    for layer in ("attn/poly_key", "attn/poly_out", "mlp/poly_fc2"):
        scope, name = layer.split("/")
        z = np.asarray(params["backbone"]["block0"][scope][name]["poly_routing"], np.float64)
        w = _sigmoid(z) / (_sigmoid(z).sum(-1, keepdims=True) + 1e-12)
        np.testing.assert_allclose(layers["block0/" + layer], w, rtol=1e-5)
    assert os.path.getsize(tmp_path / "block0_mlp_poly_fc2.png") > 1000


def test_sharded_loss_and_grad_equal_single_device(poly_model):
    """Training-mode loss and gradients (Gumbel noise included, same rng) on a data × model mesh of the
    8 simulated devices = on one device; the skills' ``mlp`` blocks are split over ``model``."""
    model, params = poly_model
    obj = objective(model, TASKS)
    x = jax.random.normal(jax.random.PRNGKey(5), (8, 8, 8, 1))
    batch = {"inputs": x, "targets": {"a": jnp.arange(8) % 3, "b": jnp.linspace(-1, 1, 8)},
             "masks": {"a": jnp.ones(8), "b": jnp.ones(8)}}

    def loss(p, b):
        return obj.forward(p, b, train=True, rng=jax.random.PRNGKey(9))[0].sum()

    want_loss, want_grads = jax.jit(jax.value_and_grad(loss))(params, batch)
    mesh = make_mesh({"data": 4, "model": 2}, jax.devices())
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x[:1]))["params"]
    shard = tree_shardings(boxed, mesh)
    assert tuple(shard["backbone"]["block0"]["mlp"]["poly_fc2"]["skills_a"].spec) == (None, None, "model", None)
    with jax.set_mesh(mesh):
        placed = jax.device_put(params, shard)
        gbatch = jax.device_put(batch, batch_sharding(mesh))
        got_loss, got_grads = jax.jit(jax.value_and_grad(loss), out_shardings=(None, shard))(placed, gbatch)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), jax.device_get(got_grads),
                 jax.device_get(want_grads))
    assert float(jnp.abs(want_grads["backbone"]["block0"]["attn"]["poly_key"]["poly_routing"]).max()) > 0
