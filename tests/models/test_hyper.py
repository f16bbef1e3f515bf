"""HyperFormer++ (mtljax.models.peft.hyper) by its defining properties: the generator against a numpy
reference of the paper's formulas, identity at initialisation, only the task embeddings per task (the
parameter count moves by E per task and per block), equal embeddings give bit-identical adapters, one
mixed-task pass equals each task's own pass, frozen tasks freeze their embedding row. The train step on a
data × model mesh of 8 devices equals the one-device step: tests/parallel/test_sharded_step.py."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtljax.config import base_config
from mtljax.models import build_model
from mtljax.models.objective import objective
from mtljax.models.peft import SCOPES, HyperNet
from mtljax.models.peft.hyper import SCOPE
from mtljax.optim.trainable import count, freeze_tasks
from mtljax.tasks import Task
from param_trees import keys as _keys, shapes as _shapes, strip

TASKS = (Task("a", "multiclass", num_classes=3), Task("b", "regression"))
B, E = 4, 6
X = jax.random.normal(jax.random.PRNGKey(0), (B, 8, 8, 1))


def _cfg(depth=2, method="hyperformer", **hyper):
    c = base_config().model
    c.vit.update(width=16, depth=depth, num_heads=2, mlp_dim=16, patch_size=4)
    c.peft.method = method
    c.peft.hyper.update(dict(task_dim=E, hidden_dim=10, projected_dim=7, reduction_factor=4), **hyper)
    return c


def _model(tasks=TASKS, depth=2, method="hyperformer", **hyper):
    return build_model(_cfg(depth, method, **hyper), tasks, (8, 8, 1))


def _gelu(x):
    return np.asarray(jax.nn.gelu(jnp.asarray(x)))


def test_generator_matches_numpy_reference_of_the_formulas():
    net = HyperNet(width=5, depth=3, positions=("attention", "mlp"), adapter_dim=2, task_dim=E, hidden_dim=10,
                   projected_dim=7)
    z = np.random.default_rng(0).standard_normal((4, E)).astype(np.float32)
    params = nn.unbox(net.init(jax.random.PRNGKey(1), z)["params"])
    params = jax.tree.map(lambda a: a + 0.3 * np.random.default_rng(a.size).standard_normal(a.shape).astype(a.dtype),
                          params)  # every generator non-zero
    out = jax.jit(net.apply)({"params": params}, z)
    p = jax.tree.map(np.asarray, params)
    for t, i, j in [(0, 0, 0), (3, 2, 1), (1, 1, 0)]:
        x = np.concatenate([z[t], p["layer_embed"][i], p["position_embed"][j]])  # [z; l; p]
        h = np.maximum(x @ p["proj1_kernel"] + p["proj1_bias"], 0) @ p["proj2_kernel"] + p["proj2_bias"]
        iota = (h - h.mean()) / np.sqrt(h.var() + 1e-6) * p["proj_ln_scale"] + p["proj_ln_bias"]
        for name in ("down_kernel", "down_bias", "up_kernel", "up_bias", "ln_scale", "ln_bias"):
            want = np.tensordot(iota, p[f"gen_{name}"], axes=1) + p[f"gen_{name}_bias"]
            np.testing.assert_allclose(out[name][t, i, j], want, rtol=1e-4, atol=1e-5)
    chex.assert_shape(out["down_kernel"], (4, 3, 2, 5, 2))


def test_paths_counts_marks_identity_equal_embeddings_and_mixed_ids():
    model, base = _model(), _model(method="")
    shp = _shapes(model, X)
    assert strip(shp, SCOPES + ("hypernet",)) == _shapes(base, X)  # the ViT's paths and shapes unchanged
    assert shp["backbone"][SCOPE].shape == (len(TASKS), E)
    # only T·E + L·E depend on T and L: (T=2, L=2) vs (T=5, L=3)
    five = tuple(Task(f"t{k}", "regression") for k in range(5))

    def hyper_count(m):
        s = _shapes(m, X)["backbone"]
        return count(s["hypernet"]) + count(s[SCOPE])

    assert hyper_count(_model(five, depth=3)) - hyper_count(model) == 3 * E + 1 * E
    # logical axes everywhere; the embeddings are task-specific, the hypernetwork shared
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(1), X)["params"]["backbone"]
    assert all(isinstance(x, nn.LogicallyPartitioned)
               for x in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)))
    assert boxed["hypernet"]["gen_down_kernel"].names == ("hyper_in", "embed", None)
    specific = objective(model, TASKS).specific(shp)["backbone"]
    assert specific[SCOPE] and not any(jax.tree.leaves(specific["hypernet"]))

    # identity at initialisation: every task's output is the base model's
    init = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), X)["params"])
    rng = np.random.default_rng(0)
    init = jax.tree_util.tree_map_with_path(  # heads start at zero: make them non-trivial
        lambda p, a: a + 0.5 * rng.standard_normal(a.shape).astype(a.dtype) if _keys(p)[0].startswith("heads_") else a,
        init)
    run = jax.jit(lambda p, ids=None: model.apply({"params": p}, X, task_ids=ids)[0])
    run_base = jax.jit(lambda p: base.apply({"params": p}, X)[0])
    chex.assert_trees_all_close(run(init), run_base(strip(init, SCOPES + ("hypernet",))), atol=1e-6)

    # non-zero generators: adapters differ per task; mixed task ids in one pass = each task's own pass
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: a + 0.5 * rng.standard_normal(a.shape).astype(a.dtype) if "hypernet" in _keys(p) else a, init)
    passes = run(params)
    ids = jnp.array([0, 1, 1, 0])
    mixed = run(params, ids)
    for t, task in enumerate(TASKS):
        sel = np.asarray(ids) == t
        np.testing.assert_allclose(np.asarray(mixed[task.name])[sel], np.asarray(passes[task.name])[sel],
                                   rtol=1e-5, atol=1e-5)
    assert not np.allclose(run(params, jnp.zeros(B, jnp.int32))["a"], run(params, jnp.ones(B, jnp.int32))["a"])
    # two tasks with equal embeddings: bit-identical adapters and outputs
    table = params["backbone"][SCOPE]
    same = jax.tree.map(lambda a: a, params)
    same["backbone"][SCOPE] = table.at[1].set(table[0])
    weights = model.bind({"params": same}).backbone.weights()
    jax.tree.map(lambda w: np.testing.assert_array_equal(w[0], w[1]), weights)
    a0, a1 = run(same, jnp.zeros(B, jnp.int32)), run(same, jnp.ones(B, jnp.int32))
    np.testing.assert_array_equal(a0["a"], a1["a"])

    # config.optim.frozen_tasks: freezing task 0 zeroes its embedding row only; the hypernetwork trains
    grads = jax.tree.map(jnp.ones_like, params)
    tx = freeze_tasks([0], [t.name for t in TASKS], objective(model, TASKS).specific)
    upd, _ = tx.update(grads, tx.init(params))
    np.testing.assert_array_equal(upd["backbone"][SCOPE], np.array([[0.0] * E, [1.0] * E]))
    assert all(np.all(np.asarray(x) == 1) for x in jax.tree.leaves(upd["backbone"]["hypernet"]))
