"""Per-task parameter-efficient modules on the ViT (LoRA, adapters, prefixes, VPT) by their defining
properties: zero-initialised modules are the base model, LoRA's merge is its unmerged forward, one pass
with mixed task ids is each task's own pass, zero-length prefixes/prompts are the base model, pooling
never reads a prompt; the base ViT's parameter paths are unchanged; bad settings are one-line errors."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.config import ConfigError, base_config
from mtljax.models import build_model
from mtljax.models.objective import objective
from mtljax.models.peft import SCOPES, PromptTokens, merge
from mtljax.models.plugs import Context
from mtljax.models.vit import ViT
from mtljax.tasks import Task
from param_trees import keys as _keys, shapes, strip

TASKS = (Task("a", "multiclass", num_classes=3), Task("b", "regression"), Task("seg", "dense", num_classes=2))
T, B, WIDTH, DEPTH, HEADS, MLP = len(TASKS), 4, 16, 2, 2, 32
X = jax.random.normal(jax.random.PRNGKey(0), (B, 8, 8, 1))
ALL_TARGETS = ("query", "key", "value", "out", "fc1", "fc2")


def _cfg(pool="gap", **peft):
    c = base_config().model
    c.vit.update(width=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP, patch_size=4, pool=pool)
    c.peft.update(peft)
    return c


def _model(pool="gap", **peft):
    return build_model(_cfg(pool, **peft), TASKS, (8, 8, 1))


def _shapes(model):
    return shapes(model, X)


def _is_peft(path) -> bool:
    return any(s in str(getattr(k, "key", k)) for k in path for s in SCOPES)


def _strip(params):
    """``params`` without the per-task modules' entries."""
    return strip(params, SCOPES)


def _perturb(params, which, seed=0, scale=0.5):
    """``params`` with random values added to the leaves whose path ``which(path)`` selects."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda p, a: a + scale * rng.standard_normal(a.shape).astype(a.dtype) if which(p) else a, params)


def _apply(model):
    return jax.jit(lambda p, **kw: model.apply({"params": p}, X, **kw)[0])


BASE = _model()
base_apply = _apply(BASE)


def test_base_paths_unchanged_param_counts_and_task_specific_marks():
    model = _model(method="lora+adapter+prefix+vpt", targets=ALL_TARGETS, rank=3, adapter_dim=5, prefix_length=2,
                   prompt_length=4, deep=True)
    shapes, base = _shapes(model), _shapes(BASE)
    # the PEFT model's parameters minus the per-task modules: exactly the base model's paths and shapes
    chex.assert_trees_all_equal_shapes_and_dtypes(_strip(shapes), base)
    assert jax.tree.structure(_strip(shapes)) == jax.tree.structure(base)

    counts = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        if _is_peft(path):
            kind = next(s for s in SCOPES if any(s in k for k in _keys(path)))
            counts[kind] = counts.get(kind, 0) + leaf.size
            assert leaf.shape[0] == T  # every per-task parameter has a leading task axis
    dims = {"query": (WIDTH, WIDTH), "key": (WIDTH, WIDTH), "value": (WIDTH, WIDTH), "out": (WIDTH, WIDTH),
            "fc1": (WIDTH, MLP), "fc2": (MLP, WIDTH)}
    assert counts["lora"] == DEPTH * sum(T * 3 * (i + o) for i, o in dims.values())  # T·r·(d_in + d_out)
    assert counts["adapter"] == DEPTH * 2 * T * (2 * WIDTH * 5 + 5 + WIDTH)
    assert counts["prefix"] == DEPTH * T * 2 * 2 * WIDTH  # keys and values, L = 2, heads·head_dim = WIDTH
    assert counts["prompt"] == DEPTH * T * 4 * WIDTH  # shallow + one deep set for block 1
    assert "prompt" in shapes["backbone"] and "prompt" in shapes["backbone"]["block1"]
    assert "prompt" not in shapes["backbone"]["block0"]  # block 0 reads the inserted tokens

    # every parameter carries logical axes; per-task ones are task-specific for the objective
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(1), X)["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    specific = objective(model, TASKS).specific(shapes)
    marks = jax.tree_util.tree_map_with_path(lambda p, m: (m, _is_peft(p) or _keys(p)[0].startswith("heads_")),
                                             specific)
    assert all(m == want for m, want in jax.tree.leaves(marks, is_leaf=lambda x: isinstance(x, tuple)))
    assert objective(BASE, TASKS).specific(base) == jax.tree_util.tree_map_with_path(
        lambda p, _: _keys(p)[0].startswith("heads_"), base)


def test_zero_init_lora_and_adapters_are_the_base_model_and_merge_equals_unmerged():
    alpha = 3.0
    model = _model(method="lora+adapter", targets=ALL_TARGETS, rank=2, alpha=alpha)
    init = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), X)["params"])
    params = _perturb(init, lambda p: _keys(p)[0].startswith("heads_"))  # heads start at zero
    run = _apply(model)
    # B = 0 and up-projections = 0 at init: the adapted model is the base model (every task's pass)
    chex.assert_trees_all_close(run(params), base_apply(_strip(params)), atol=1e-6)

    # a trained LoRA (B != 0): merge(params, t) with the plain ViT gives task t's adapted outputs
    lora = _perturb(params, lambda p: _keys(p)[-1] == "b" and any(k.startswith("lora_") for k in _keys(p)))
    adapted = run(lora)
    assert not np.allclose(adapted["a"], base_apply(_strip(lora))["a"], atol=1e-3)
    merge_jit = jax.jit(merge, static_argnums=2)  # pure and jit-able; the task id may be traced
    for t, task in enumerate(TASKS):
        merged = merge_jit(lora, t, alpha)
        plain = _strip(merged)  # adapters are still the identity: drop them
        chex.assert_trees_all_equal_shapes(plain, _strip(params))
        chex.assert_trees_all_close(base_apply(plain)[task.name], adapted[task.name], atol=2e-5)
    merged_paths = ["/".join(_keys(p)) for p, _ in jax.tree_util.tree_flatten_with_path(merge(lora, 0, alpha))[0]]
    assert not any("lora" in p for p in merged_paths)

    # non-zero adapters change the model
    adapters = _perturb(lora, lambda p: any("adapter" in k for k in _keys(p)) and "up" in _keys(p)[-1], seed=1)
    assert not np.allclose(run(adapters)["a"], adapted["a"], atol=1e-3)


def test_mixed_task_ids_equal_each_tasks_own_pass_and_deep_prompts_matter():
    model = _model(method="lora+adapter+prefix+vpt", targets=("query", "value", "fc2"), rank=2, prefix_length=3,
                   prompt_length=2, deep=True)
    params = _perturb(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _shapes(model)), lambda p: True)
    obj = objective(model, TASKS)
    ids = jnp.array([2, 0, 1, 0], jnp.int32)
    batch = {"inputs": X,
             "targets": {"a": jnp.array([0, 1, 2, 1]), "b": jnp.arange(B, dtype=jnp.float32),
                         "seg": jnp.zeros((B, 8, 8), jnp.int32)},
             "masks": {t.name: (ids == i).astype(jnp.float32) for i, t in enumerate(TASKS)}}
    passes = jax.jit(lambda p: obj.forward(p, batch, train=False)[:2])  # one backbone pass per task
    mixed = jax.jit(lambda p, ids: obj.forward(p, {**batch, "task_ids": ids}, train=False)[:2])  # one pass

    losses, out = passes(params)
    mixed_losses, mixed_out = mixed(params, ids)
    # every example through its own task's modules in one pass = that task's own pass
    for i, t in enumerate(np.asarray(ids)):
        name = TASKS[t].name
        chex.assert_trees_all_close(mixed_out[name][i], out[name][i], atol=1e-5)
    chex.assert_trees_all_close(mixed_losses, losses, atol=1e-5)  # each task's loss reads its own examples

    # task s's loss moves only task s's slice of every per-task parameter (what marking them specific assumes)
    jac = jax.jit(jax.jacrev(lambda p: obj.forward(p, {**batch, "task_ids": ids}, train=False)[0]))(params)
    for path, j in jax.tree_util.tree_flatten_with_path(jac)[0]:
        if _is_peft(path):
            norms = np.abs(np.asarray(j)).reshape(T, T, -1).max(-1)  # [loss task, parameter slice]
            assert (norms[~np.eye(T, dtype=bool)] == 0).all() and norms.diagonal().max() > 0, (_keys(path), norms)

    # ids outside [0, T): refused when known, NaN for that example when traced
    with pytest.raises(ValueError, match=r"task_ids: \[3\] outside \[0, 3\)"):
        model.apply({"params": params}, X, task_ids=jnp.array([0, 3, 1, 2]))
    _, nan_out = mixed(params, jnp.array([0, 9, 1, 2], jnp.int32))
    assert np.isnan(nan_out["a"][1]).all() and np.isfinite(np.asarray(nan_out["a"])[[0, 2, 3]]).all()

    # deep VPT: block 1's own prompts replace block 0's outputs at the prompt positions and change the model
    deep = _perturb(params, lambda p: _keys(p)[:3] == ["backbone", "block1", "prompt"], seed=2)
    assert not np.allclose(passes(deep)[1]["a"], out["a"], atol=1e-3)


def test_zero_length_prefix_and_prompts_are_the_base_model():
    model = _model(method="prefix+vpt", prefix_length=0, prompt_length=0, deep=True)
    shapes = _shapes(model)
    assert jax.tree.structure(shapes) == jax.tree.structure(_shapes(BASE))  # no parameters added
    params = _perturb(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), lambda p: True)
    chex.assert_trees_all_close(_apply(model)(params), base_apply(params), atol=1e-6)
    x = jnp.ones((2, 5, WIDTH))
    assert PromptTokens(T, 0).apply({}, x, Context()) is x


@pytest.mark.parametrize("pool", ["gap", "cls"])
def test_pooling_never_reads_prompt_tokens(pool):
    """With no blocks, the pooled output is the class token or the patch mean: prompts must not enter it."""
    kw = dict(patch_size=4, width=WIDTH, depth=0, num_heads=HEADS, mlp_dim=MLP, pool=pool)
    prompted = ViT(**kw, prompt=functools.partial(PromptTokens, T, 3, 1 if pool == "cls" else 0))
    ctx = Context(task_ids=jnp.array([0, 1, 2, 1]))
    shapes = jax.eval_shape(lambda: nn.unbox(prompted.init(jax.random.PRNGKey(0), X, ctx)["params"]))
    params = _perturb(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), lambda p: True)
    got = jax.jit(lambda p: prompted.apply({"params": p}, X, ctx))(params)
    plain = {k: v for k, v in params.items() if k != "prompt"}
    want = jax.jit(lambda p: ViT(**kw).apply({"params": p}, X))(plain)
    chex.assert_trees_all_close(got.pooled, want.pooled, atol=1e-6)
    chex.assert_shape(got.tokens, (B, 4, WIDTH))


@pytest.mark.parametrize("changes,message", [
    (dict(method="lora", rank=0), "config.model.peft.rank: must be a positive integer, got 0"),
    (dict(method="lora", rank=-2), "config.model.peft.rank: must be a positive integer, got -2"),
    (dict(method="lora", rank=17), "config.model.peft.rank: 17 is larger than the 'query' projection"),
    (dict(method="lora", rank=20, targets=("fc1",)), "config.model.peft.rank: 20 is larger than the 'fc1'"),
    (dict(method="lora", targets=("query", "gate")), "config.model.peft.targets: unknown target 'gate'"),
    (dict(method="lora", targets=()), "config.model.peft.targets: must be a non-empty list"),
    (dict(method="lora", alpha=0.0), "config.model.peft.alpha: must be a number > 0"),
    (dict(method="prefix", prefix_length=-1), "config.model.peft.prefix_length: must be an integer >= 0, got -1"),
    (dict(method="vpt", prompt_length=-3), "config.model.peft.prompt_length: must be an integer >= 0, got -3"),
    (dict(method="adapter", adapter_dim=0), "config.model.peft.adapter_dim: must be a positive integer"),
    (dict(method="adapter", adapter_positions=("ffn",)), "config.model.peft.adapter_positions: unknown position"),
    (dict(method="bitfit"), "config.model.peft.method: unknown method 'bitfit'"),
    (dict(method="hyperformer", hyper=dict(task_dim=0)), "config.model.peft.hyper.task_dim: must be a positive integer"),
    (dict(method="hyperformer", hyper=dict(hidden_dim=-1)), "config.model.peft.hyper.hidden_dim: must be a positive"),
    (dict(method="hyperformer", hyper=dict(reduction_factor=0)), "config.model.peft.hyper.reduction_factor: must be"),
    (dict(method="hyperformer", hyper=dict(positions=("ffn",))), "config.model.peft.hyper.positions: unknown position"),
    (dict(method="hyperformer+adapter"), "config.model.peft.method: 'hyperformer' generates the adapters itself"),
    (dict(method="lora+lora"), "config.model.peft.method: names a method twice"),
    (dict(method="lora", name="m3vit"), "config.model.peft.method: per-task modules plug into the ViT of"),
    (dict(method="poly", poly=dict(heads=3)), "config.model.peft.poly.heads: 3 heads do not divide the 'query'"),
    (dict(method="poly", poly=dict(skills=0)), "config.model.peft.poly.skills: must be a positive integer, got 0"),
    (dict(method="poly", poly=dict(temperature=0.0)), "config.model.peft.poly.temperature: must be a number > 0"),
])
def test_bad_settings_are_one_line_errors_naming_the_key(changes, message):
    cfg = _cfg()
    name = changes.pop("name", None)
    if name:
        cfg.name = name
    cfg.peft.hyper.update(changes.pop("hyper", {}))
    cfg.peft.update(changes)
    with pytest.raises(ConfigError) as err:
        build_model(cfg, TASKS, (8, 8, 1))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    cfg.peft.method = ""  # unused keys are not read
    build_model(cfg, TASKS, (8, 8, 1))
