"""MULTI-LANE (mtljax.models.lanes) by its defining properties: a lane's class token follows the paper's
rule (checked against a hand-written block), the patch stream is the frozen base ViT's, adding a lane
leaves the other lanes' outputs bit-identical, a lane's cost grows with the patch count far more slowly
than the ViT's, parameter paths and counts, one-line config errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.config import ConfigError, base_config
from mtljax.cost import compiled_flops
from mtljax.models import build_model
from mtljax.models.objective import objective
from mtljax.optim.trainable import trainable_mask
from mtljax.tasks import Task
from param_trees import keys as _keys, random_like as _random, shapes, strip

TASKS = (Task("a", "multiclass", num_classes=3), Task("b", "regression"), Task("seg", "dense", num_classes=2))
T, B, WIDTH, HEADS, MLP, K, L = len(TASKS), 4, 16, 2, 32, 2, 3
X = jax.random.normal(jax.random.PRNGKey(0), (B, 8, 8, 1))


def _cfg(depth=2, name="multi_lane", **lane):
    c = base_config().model
    c.name = name
    c.vit.update(width=WIDTH, depth=depth, num_heads=HEADS, mlp_dim=MLP, patch_size=4)
    c.multi_lane.update(dict(selectors=K, prefix_length=L, prefix_blocks=1), **lane)
    return c


def _model(tasks=TASKS, size=8, **kw):
    return build_model(_cfg(**kw), tasks, (size, size, 1))


def _shapes(model, x=X):
    return shapes(model, x)


def _strip(params):
    """``params`` without the lanes' entries (and the scopes they leave empty)."""
    return strip(params, ("lane",))


MODEL = _model()
SHAPES = _shapes(MODEL)
BASE = _model(name="hps")


def test_parameters_paths_and_task_specific_marks():
    bb, h = SHAPES["backbone"], WIDTH // HEADS
    assert bb["prompt"]["lane_cls"].shape == (T, 1, WIDTH)
    for i in range(2):
        assert bb[f"block{i}"]["attn"]["lane_selectors"].shape == (T, K, WIDTH)
    assert bb["block0"]["attn"]["lane_prefix"]["keys"].shape == (T, L, HEADS, h)
    assert "lane_prefix" not in bb["block1"]["attn"]  # prefixes only in the first prefix_blocks blocks
    lane = sum(x.size for p, x in jax.tree_util.tree_flatten_with_path(SHAPES)[0] if any("lane" in k for k in _keys(p)))
    assert lane == T * (WIDTH + 2 * K * WIDTH + 1 * 2 * L * WIDTH)
    assert _strip(SHAPES) == _shapes(BASE)  # the base ViT's paths and shapes are untouched
    assert not MODEL.task_passes  # one pass serves every lane
    want = jax.tree_util.tree_map_with_path(
        lambda p, _: any("lane" in k for k in _keys(p)) or _keys(p)[0].startswith("heads_"), SHAPES)
    assert trainable_mask(SHAPES, ("lane", "^heads_")) == want  # the frozen ViT: lanes and heads train
    assert objective(MODEL, TASKS).specific(SHAPES) == want


def test_lane_follows_the_rule_and_the_patch_stream_is_the_base_vits():
    """Depth 1: lane t's class token after the block and the final norm, written out by hand."""
    model, base = _model(depth=1), _model(depth=1, name="hps")
    params = _random(_shapes(model), seed=1)
    rep = jax.jit(lambda p: model.apply({"params": p}, X, method=model.encode)[0])(params)
    base_rep = jax.jit(lambda p: base.apply({"params": p}, X, method=base.encode)[0])(_strip(params))
    chex.assert_trees_all_equal(rep["tokens"], base_rep["tokens"])  # patches never attend to lanes

    def ln(z, p):
        return (z - z.mean(-1, keepdims=True)) / jnp.sqrt(z.var(-1, keepdims=True) + 1e-6) * p["scale"] + p["bias"]

    bb = params["backbone"]
    blk, att = bb["block0"], bb["block0"]["attn"]
    x = X.reshape(B, 2, 4, 2, 4, 1).transpose(0, 1, 3, 2, 4, 5).reshape(B, 4, 16)
    x = x @ bb["embedding"]["kernel"] + bb["embedding"]["bias"] + bb["pos_embedding"]  # [B, N, C]
    xn = ln(x, blk["ln1"])
    for t, task in enumerate(TASKS):
        cls = bb["prompt"]["lane_cls"][t, 0]  # [C]
        cn = ln(cls, blk["ln1"])
        w = jax.nn.softmax(jnp.einsum("kc,bnc->bkn", att["lane_selectors"][t], xn) / np.sqrt(WIDTH), axis=-1)
        z = jnp.concatenate([jnp.broadcast_to(cn, (B, 1, WIDTH)), jnp.einsum("bkn,bnc->bkc", w, xn)], axis=1)

        def proj(n, v):
            return jnp.einsum("...c,chd->...hd", v, att[n]["kernel"]) + att[n]["bias"]

        q = proj("query", cn)  # [H, h]
        keys = jnp.concatenate([jnp.broadcast_to(att["lane_prefix"]["keys"][t], (B, L, HEADS, 8)), proj("key", z)], 1)
        vals = jnp.concatenate([jnp.broadcast_to(att["lane_prefix"]["values"][t], (B, L, HEADS, 8)), proj("value", z)],
                               1)
        a = jax.nn.softmax(jnp.einsum("hd,bshd->bhs", q, keys) / np.sqrt(8), axis=-1)
        o = jnp.einsum("bhs,bshd->bhd", a, vals)
        cls = cls + jnp.einsum("bhd,hdc->bc", o, att["out"]["kernel"]) + att["out"]["bias"]
        hid = jax.nn.gelu(ln(cls, blk["ln2"]) @ blk["mlp"]["fc1"]["kernel"] + blk["mlp"]["fc1"]["bias"])
        cls = cls + hid @ blk["mlp"]["fc2"]["kernel"] + blk["mlp"]["fc2"]["bias"]
        chex.assert_trees_all_close(rep["pooled"][task.name], ln(cls, bb["ln_final"]), atol=2e-5)


def test_adding_a_lane_leaves_the_other_lanes_bit_identical():
    more = TASKS + (Task("c", "multiclass", num_classes=4),)
    big = _model(more)
    old = _random(SHAPES, seed=2)
    new = _random(_shapes(big), seed=3)

    def copy(path, n):  # the old lanes' slices, the old heads, the same frozen ViT
        keys = _keys(path)
        o = old
        for k in keys:
            if not isinstance(o, dict) or k not in o:
                return n
            o = o[k]
        return n.at[:T].set(o) if any("lane" in k for k in keys) else o

    new = jax.tree_util.tree_map_with_path(copy, new)
    got = jax.jit(lambda p: big.apply({"params": p}, X)[0])(new)
    want = jax.jit(lambda p: MODEL.apply({"params": p}, X)[0])(old)
    for task in TASKS:
        chex.assert_trees_all_equal(got[task.name], want[task.name])
    assert got["c"].shape == (B, 4)


def test_a_lanes_flops_grow_with_the_patch_count_far_less_than_the_vits():
    def flops(lanes, size):
        tasks = tuple(Task(f"t{i}", "multiclass", num_classes=3) for i in range(lanes))
        model = build_model(_cfg(**dict(selectors=2, prefix_length=2)), tasks, (size, size, 1))
        x = jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)
        p = _shapes(model, jnp.zeros((1, size, size, 1)))["backbone"]
        return compiled_flops(lambda p, x: model.backbone.apply({"params": p}, x).pooled, p, x, stage="lowered")

    one, two = {s: flops(1, s) for s in (8, 16)}, {s: flops(2, s) for s in (8, 16)}
    lane = {s: two[s] - one[s] for s in (8, 16)}
    print(f"\nMULTI-LANE (width 16, depth 2, k=2, L=2): one lane {lane[8]:.0f} FLOPs at N=4 patches, "
          f"{lane[16]:.0f} at N=16; the whole model with one lane {one[8]:.0f} -> {one[16]:.0f}")
    assert lane[16] / lane[8] < 0.5 * one[16] / one[8]


@pytest.mark.parametrize("changes,message", [
    (dict(selectors=0), "config.model.multi_lane.selectors: must be a positive integer, got 0"),
    (dict(prefix_length=-1), "config.model.multi_lane.prefix_length: must be an integer >= 0, got -1"),
    (dict(prefix_blocks=3), "config.model.multi_lane.prefix_blocks: 3 is more than the ViT's 2 blocks"),
])
def test_bad_settings_are_one_line_errors_naming_the_key(changes, message):
    cfg = _cfg()
    cfg.multi_lane.update(changes)
    with pytest.raises(ConfigError) as err:
        build_model(cfg, TASKS, (8, 8, 1))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
