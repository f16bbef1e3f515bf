"""Prompt pathways (issue 11): task tokens (TPO-style) and soft injection of task embeddings (SITE), by
their defining properties: parameters and paths, one backbone pass with every task's token, each head
reading its own token, the base model when off or at initialisation, α = 1 giving the embedding, and
``init_from_mean`` against head activations computed by hand."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.config import ConfigError, base_config
from mtljax.models import build_model
from mtljax.models.objective import objective
from mtljax.models.peft import SoftInject, init_from_mean
from mtljax.models.vit import Block
from mtljax.optim.trainable import trainable_mask
from mtljax.tasks import Task
from param_trees import keys as _keys, random_like as _random, shapes, strip

TASKS = (Task("a", "multiclass", num_classes=3), Task("b", "regression"), Task("seg", "dense", num_classes=2))
T, B, WIDTH, DEPTH, HEADS, MLP, N = len(TASKS), 4, 16, 2, 2, 32, 4
X = jax.random.normal(jax.random.PRNGKey(0), (B, 8, 8, 1))


def _cfg(depth=DEPTH, pool="gap", **peft):
    c = base_config().model
    c.vit.update(width=WIDTH, depth=depth, num_heads=HEADS, mlp_dim=MLP, patch_size=4, pool=pool)
    c.peft.update(peft)
    return c


def _model(depth=DEPTH, pool="gap", **peft):
    return build_model(_cfg(depth, pool, **peft), TASKS, (8, 8, 1))


def _shapes(model):
    return shapes(model, X)


def _strip(params, scope):
    return strip(params, (scope,))


def _counts(shapes, scope):
    return sum(leaf.size for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]
               if any(scope in k for k in _keys(path)))


def _move_token(params, task):
    """``params`` with task ``task``'s tokens moved (not by a constant: LayerNorm would remove that)."""
    step = jnp.linspace(-1.0, 1.0, WIDTH)
    return jax.tree_util.tree_map_with_path(
        lambda p, v: v.at[task].add(step) if "task_tokens" in _keys(p) else v, params)


BASE = _model()
BASE_SHAPES = _shapes(BASE)


# ---------------------------------------------------------------- task tokens


def test_task_tokens_parameters_one_pass_and_off_is_the_base_model():
    n = 2
    model = _model(method="task_tokens", task_tokens=n)
    shapes = _shapes(model)
    assert shapes["backbone"]["prompt"]["task_tokens"].shape == (T, n, WIDTH)
    assert _counts(shapes, "task_token") == T * n * WIDTH
    assert _strip(shapes, "prompt") == BASE_SHAPES  # the base ViT's paths and shapes are untouched
    assert not model.task_passes  # task tokens need no task ids: one pass

    # one backbone pass: every block sees B sequences of (all tasks' tokens + patches), never T·B
    seen = []

    def spy(next_fun, args, kwargs, context):
        if isinstance(context.module, Block) and context.method_name == "__call__":
            seen.append(args[0].shape)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(spy):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(1), X))
    assert seen == [(B, T * n + N, WIDTH)] * DEPTH, seen

    # frozen backbone: the patterns select exactly the tokens and the heads; the tokens are task-specific
    mask = trainable_mask(shapes, ("task_token", "^heads_"))
    want = jax.tree_util.tree_map_with_path(lambda p, _: "task_tokens" in _keys(p) or _keys(p)[0].startswith("heads_"),
                                            shapes)
    assert mask == want
    assert objective(model, TASKS).specific(shapes) == want

    # off (0 tokens): the very module of the base model, no parameter added
    off = _model(method="task_tokens", task_tokens=0)
    assert off.backbone == BASE.backbone and not off.task_passes
    assert _shapes(off) == BASE_SHAPES


@pytest.mark.parametrize("pool", ["gap", "cls"])
def test_each_head_reads_its_own_token(pool):
    """Without blocks nothing mixes tokens: task t's head reads LN(mean of its tokens) and nothing else,
    and the patch tokens (pooling, dense heads) are those of the base model."""
    n = 2
    model, base = _model(1, pool, method="task_tokens", task_tokens=n), _model(1, pool)
    model = model.clone(backbone=model.backbone.clone(vit=model.backbone.vit.clone(depth=0)))  # no blocks
    base = base.clone(backbone=base.backbone.clone(depth=0))
    params = _random(_shapes(model))
    encode = jax.jit(lambda p: model.apply({"params": p}, X, method=model.encode)[0])
    rep = encode(params)
    ln = params["backbone"]["ln_final"]
    tok = params["backbone"]["prompt"]["task_tokens"]  # [T, n, D]
    for i, task in enumerate(TASKS):
        z = tok[i]  # each token is layer-normed, then the n states averaged
        z = (z - z.mean(-1, keepdims=True)) / jnp.sqrt(z.var(-1, keepdims=True) + 1e-6) * ln["scale"] + ln["bias"]
        chex.assert_trees_all_close(rep["pooled"][task.name], jnp.broadcast_to(z.mean(0), (B, WIDTH)), atol=1e-5)
    base_params = _strip(params, "prompt")
    base_rep = base.apply({"params": base_params}, X, method=base.encode)[0]
    chex.assert_trees_all_close(rep["tokens"], base_rep["tokens"], atol=1e-6)  # patches unaffected

    # perturbing task a's token moves a's output only
    out = jax.jit(lambda p: model.apply({"params": p}, X)[0])
    moved = _move_token(params, 0)
    before, after = out(params), out(moved)
    assert not np.allclose(before["a"], after["a"], atol=1e-3)
    chex.assert_trees_all_close(before["b"], after["b"], atol=0)
    chex.assert_trees_all_close(before["seg"], after["seg"], atol=0)


def test_with_attention_a_token_reaches_other_tasks():
    """With blocks, task a's token moves a's output — and, through attention, b's and the dense task's
    (documented in mtljax.models.peft.task_tokens: nothing masks tokens from each other)."""
    model = _model(method="task_tokens", task_tokens=1)
    params = _random(_shapes(model))
    out = jax.jit(lambda p: model.apply({"params": p}, X)[0])
    moved = _move_token(params, 0)
    before, after = out(params), out(moved)
    for name in ("a", "b", "seg"):
        assert not np.allclose(before[name], after[name], atol=1e-4), name


# ---------------------------------------------------------------- soft injection


INJECT = _model(method="inject")
INJECT_SHAPES = _shapes(INJECT)
INJECT_INIT = nn.unbox(jax.jit(INJECT.init)(jax.random.PRNGKey(1), X)["params"])
base_run = jax.jit(lambda p: BASE.apply({"params": p}, X)[0])
inject_run = jax.jit(lambda p: INJECT.apply({"params": p}, X)[0])


def test_inject_parameters_and_initialisation_is_exactly_the_base_model():
    shapes = INJECT_SHAPES
    h = WIDTH // HEADS
    for i in range(DEPTH):
        inject = shapes["backbone"][f"block{i}"]["attn"]["inject"]
        assert inject["embeddings"].shape == (T, HEADS, h) and inject["logits"].shape == (T, HEADS)
    assert _counts(shapes, "inject") == DEPTH * T * HEADS * (h + 1)
    assert _strip(shapes, "inject") == BASE_SHAPES
    assert INJECT.task_passes
    mask = trainable_mask(shapes, ("inject/logits",))
    assert sum(jax.tree.leaves(mask)) == DEPTH

    init = INJECT_INIT
    assert float(init["backbone"]["block0"]["attn"]["inject"]["logits"].min()) == -20.0
    base_params = _random(BASE_SHAPES, seed=3)  # a "trained" base model, heads included
    got = inject_run(_with_inject(base_params, init))
    want = base_run(base_params)
    chex.assert_trees_all_equal(got, want)  # 1 − σ(−20) is 1 in float32 and e = 0: bit-identical


def _with_inject(base_params, inject_params):
    """The base parameters with the injection entries of ``inject_params`` added."""
    def merge(base, other):
        if not isinstance(other, dict):
            return base
        out = {k: merge(base[k], v) if k in base else v for k, v in other.items()}
        return out
    return merge(base_params, inject_params)


def test_soft_inject_mixes_each_head_with_its_tasks_embedding():
    a = jax.random.normal(jax.random.PRNGKey(2), (3, 5, HEADS, 4))
    ids = jnp.array([1, 0, 1])
    e = jax.random.normal(jax.random.PRNGKey(3), (T, HEADS, 4))
    layer = SoftInject(T)
    fn = jax.jit(lambda theta: layer.apply({"params": {"embeddings": e, "logits": theta}}, a, ids))
    # α → 1 (σ(40) = 1 in float32): every head outputs its task's embedding at every position
    chex.assert_trees_all_equal(fn(jnp.full((T, HEADS), 40.0)), jnp.broadcast_to(e[ids][:, None], a.shape))
    # one head at α = 1/2, the other at α ≈ 0, per task
    theta = jnp.array([[0.0, -40.0], [-40.0, 0.0], [0.0, 0.0]])
    got = fn(theta)
    alpha = jax.nn.sigmoid(theta)[ids][:, None, :, None]
    chex.assert_trees_all_close(got, (1 - alpha) * a + alpha * e[ids][:, None], atol=1e-6)
    chex.assert_trees_all_close(got[0, :, 0], a[0, :, 0], atol=1e-6)  # task 1, head 0: α ≈ 0
    # an id outside [0, T) gives NaN for that example only
    bad = layer.apply({"params": {"embeddings": e, "logits": theta}}, a, jnp.array([0, 7, 1]))
    assert np.isnan(bad[1]).all() and np.isfinite(np.asarray(bad)[[0, 2]]).all()


def test_init_from_mean_is_each_tasks_mean_head_activation_and_mixed_ids_equal_passes():
    params = _with_inject(_random(BASE_SHAPES, seed=4), INJECT_INIT)
    ids = jnp.array([0, 2, 0, 2])  # task 1 ("b") has no examples: keeps its embeddings
    new = jax.jit(init_from_mean, static_argnums=0)(INJECT, params, X, ids)

    # block 0's head activations by hand: patch embedding + positions, LayerNorm, softmax attention
    bb = params["backbone"]
    x = X.reshape(B, 2, 4, 2, 4, 1).transpose(0, 1, 3, 2, 4, 5).reshape(B, N, 16)
    x = x @ bb["embedding"]["kernel"] + bb["embedding"]["bias"] + bb["pos_embedding"]
    ln = bb["block0"]["ln1"]
    x = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-6) * ln["scale"] + ln["bias"]
    att = bb["block0"]["attn"]
    q, k, v = (jnp.einsum("bsd,dhk->bshk", x, att[n]["kernel"]) + att[n]["bias"] for n in ("query", "key", "value"))
    w = jax.nn.softmax(jnp.einsum("bshk,bthk->bhst", q, k) / jnp.sqrt(q.shape[-1]), axis=-1)
    heads = jnp.einsum("bhst,bthk->bshk", w, v).mean(1)  # [B, H, h], averaged over positions
    got = new["backbone"]["block0"]["attn"]["inject"]["embeddings"]
    chex.assert_trees_all_close(got[0], heads[np.array([0, 2])].mean(0), atol=1e-5)
    chex.assert_trees_all_close(got[2], heads[np.array([1, 3])].mean(0), atol=1e-5)
    chex.assert_trees_all_equal(got[1], params["backbone"]["block0"]["attn"]["inject"]["embeddings"][1])
    assert np.abs(new["backbone"]["block1"]["attn"]["inject"]["embeddings"][0]).max() > 0

    # gates open: one mixed pass (each example as its own task) equals each task's own pass
    opened = jax.tree_util.tree_map_with_path(lambda p, v: v + 21.0 if _keys(p)[-1] == "logits" else v, new)
    passes = inject_run(opened)
    mixed = jax.jit(lambda p, i: INJECT.apply({"params": p}, X, task_ids=i)[0])(opened, ids)
    for i, t in enumerate(np.asarray(ids)):
        name = TASKS[t].name
        chex.assert_trees_all_close(mixed[name][i], passes[name][i], atol=1e-5)
    closed = base_run(_strip(new, "inject"))
    assert not np.allclose(passes["a"], closed["a"], atol=1e-4)  # open gates change the model


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("changes,message", [
    (dict(method="task_tokens", task_tokens=-1), "config.model.peft.task_tokens: must be an integer >= 0, got -1"),
    (dict(method="task_tokens+vpt"), "config.model.peft.method: 'task_tokens' and 'vpt' both insert tokens"),
    (dict(method="inject", inject_logit_init=float("nan")), "config.model.peft.inject_logit_init: must be a finite"),
])
def test_bad_settings_are_one_line_errors_naming_the_key(changes, message):
    cfg = _cfg()
    cfg.peft.update(changes)
    with pytest.raises(ConfigError) as err:
        build_model(cfg, TASKS, (8, 8, 1))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
