"""PHATGOOSE routing among per-task LoRA experts (mtljax.models.peft.phatgoose) by its defining properties:
top-k weights are a distribution over exactly k experts; a token goes to the expert whose gate matches
it; identical gates with k = T average the experts; a saturated gate is plain LoRA; routing "" leaves
the model as it was; the routed ViT needs no task ids; bad settings are one-line errors naming the key."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.config import ConfigError, base_config
from mtljax.models import build_model
from mtljax.models.objective import objective
from mtljax.models.peft import LoraDelta, merge, needs_task_ids, peft_plugs, stack_lora_experts
from mtljax.models.peft.phatgoose import phatgoose_scores, phatgoose_weights, standardise, top_k_weights
from mtljax.tasks import Task
from param_trees import keys as _keys, shapes, strip

TASKS = (Task("a", "multiclass", num_classes=3), Task("b", "regression"), Task("seg", "dense", num_classes=2))
T, B = len(TASKS), 4
X = jax.random.normal(jax.random.PRNGKey(0), (B, 8, 8, 1))
TARGETS = ("query", "value", "out", "fc1", "fc2")
ALPHA = 3.0


def _cfg(**peft):
    c = base_config().model
    c.vit.update(width=16, depth=2, num_heads=2, mlp_dim=32, patch_size=4, pool="gap")
    c.peft.update(peft)
    return c


def _is_lora(path) -> bool:
    return any(k.startswith("lora_") for k in _keys(path))


# ---------------------------------------------------------------------------------------------- routing function

@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_weights_are_a_distribution_over_exactly_k_experts(k):
    rng = np.random.default_rng(0)
    x, gates = jnp.asarray(rng.standard_normal((3, 7, 12))), jnp.asarray(rng.standard_normal((5, 12)))
    w = np.asarray(phatgoose_weights(x, gates, k))
    assert w.shape == (3, 7, 5)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    assert ((w > 0).sum(-1) == k).all() and (w >= 0).all()
    # the kept experts are those of the k largest scores, in the softmax's proportions
    s = np.asarray(phatgoose_scores(x, gates))
    top = np.argsort(-s, axis=-1)[..., :k]
    assert (np.sort(top, -1) == np.sort(np.argsort(-w, axis=-1)[..., :k], -1)).all()
    p = np.exp(s - s.max(-1, keepdims=True))
    kept = np.take_along_axis(p, top, -1)
    np.testing.assert_allclose(np.take_along_axis(w, top, -1), kept / kept.sum(-1, keepdims=True), rtol=1e-5)


def test_standardise_and_score_scale():
    rng = np.random.default_rng(1)
    u = jnp.asarray(3.0 + 5.0 * rng.standard_normal((4, 64)))
    z = np.asarray(standardise(u))
    np.testing.assert_allclose(z.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.var(-1), 1.0, atol=1e-4)  # unit variance (norm √d), not unit norm
    # ⟨std(x), std(v)⟩ / √d: √d·corr(x, v); shifting or scaling x or v changes nothing
    s = np.asarray(phatgoose_scores(u, u))
    np.testing.assert_allclose(np.diag(s), np.sqrt(64), rtol=1e-4)
    np.testing.assert_allclose(phatgoose_scores(2.0 * u + 7.0, u - 1.0), s, rtol=1e-4, atol=1e-4)


def test_each_token_picks_the_expert_whose_gate_matches_it():
    d, n = 32, 4
    rng = np.random.default_rng(2)
    gates = np.zeros((n, d), np.float32)
    for i in range(n):  # distinct, orthogonal standardised directions: +1 on one block of features, -1 elsewhere
        gates[i] = -1.0
        gates[i, 8 * i: 8 * i + 8] = 3.0
    want = np.array([[2, 0, 3, 1, 1, 2]])
    x = 0.5 * gates[want] + 0.1 * rng.standard_normal((1, 6, d)).astype(np.float32) + 4.0  # scaled, shifted, noisy
    w1 = np.asarray(phatgoose_weights(jnp.asarray(x), jnp.asarray(gates), 1))
    np.testing.assert_array_equal(w1, np.eye(n)[want])
    w2 = np.asarray(phatgoose_weights(jnp.asarray(x), jnp.asarray(gates), 2))
    np.testing.assert_array_equal(w2.argmax(-1), want)
    assert (w2.max(-1) > 0.5).all()


def test_identical_gates_with_k_equal_t_are_uniform():
    rng = np.random.default_rng(3)
    gates = jnp.asarray(np.tile(rng.standard_normal((1, 10)), (4, 1)))
    w = phatgoose_weights(jnp.asarray(rng.standard_normal((5, 10))), gates, 4)
    np.testing.assert_allclose(w, 0.25, atol=1e-7)
    np.testing.assert_allclose(top_k_weights(jnp.zeros((2, 3)), 2), [[0.5, 0.5, 0.0]] * 2)  # ties: lower index


# ---------------------------------------------------------------------------------------------- the LoRA module

def test_gate_mode_scales_plain_lora_per_token():
    rng = np.random.default_rng(4)
    x = jnp.asarray(np.abs(rng.standard_normal((B, 5, 6))) + 0.1, jnp.float32)  # positive: vᵀx ≫ 0 for v ≫ 0
    ids = jnp.asarray([0, 2, 1, 2])
    plain = LoraDelta(T, 2, ALPHA, (7,))
    gated = LoraDelta(T, 2, ALPHA, (7,), routing="gate")
    params = nn.unbox(plain.init(jax.random.PRNGKey(0), x, ids)["params"])
    params = {**params, "b": jnp.asarray(rng.standard_normal(params["b"].shape), jnp.float32)}
    gparams = nn.unbox(gated.init(jax.random.PRNGKey(0), x, ids)["params"])
    assert set(gparams) == {"a", "b", "gate"} and gparams["gate"].shape == (T, 6)
    np.testing.assert_array_equal(gparams["gate"], 0.0)  # the reference code's init: σ(0) = 1/2
    chex.assert_trees_all_equal(gparams["a"], params["a"])  # the same a as without the gate
    y = plain.apply({"params": params}, x, ids)
    assert np.abs(y).max() > 1e-2
    half, state = gated.apply({"params": {**params, "gate": gparams["gate"]}}, x, ids, mutable=["intermediates"])
    np.testing.assert_allclose(half, 0.5 * y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(state["intermediates"]["gate"][0], 0.5)
    full = gated.apply({"params": {**params, "gate": jnp.full((T, 6), 1e3)}}, x, ids)  # σ → 1
    np.testing.assert_array_equal(full, y)


# ---------------------------------------------------------------------------------------------- the ViT

@pytest.fixture(scope="session")
def lora_model():
    """A plain (routing "") LoRA model, its trained-looking parameters (B != 0) and its jitted forward."""
    model = build_model(_cfg(method="lora", targets=TARGETS, rank=2, alpha=ALPHA), TASKS, (8, 8, 1))
    init = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), X)["params"])
    rng = np.random.default_rng(5)
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: a + 0.5 * rng.standard_normal(a.shape).astype(a.dtype)
        if _keys(p)[-1] == "b" or _keys(p)[0].startswith("heads_") else a, init)
    return model, params, init


def test_routing_empty_is_the_model_without_the_new_keys(lora_model):
    model, params, init = lora_model
    old = _cfg(method="lora", targets=TARGETS, rank=2, alpha=ALPHA)
    del old.peft["routing"], old.peft["top_k"]
    older = build_model(old, TASKS, (8, 8, 1))
    assert older.task_passes and model.task_passes
    chex.assert_trees_all_equal(nn.unbox(jax.jit(older.init)(jax.random.PRNGKey(1), X)["params"]), init)
    run = jax.jit(lambda p: (older.apply({"params": p}, X)[0], model.apply({"params": p}, X)[0]))
    chex.assert_trees_all_equal(*run(params))
    assert not any(k == "gate" for p, _ in jax.tree_util.tree_flatten_with_path(params)[0] for k in _keys(p))


def test_routed_vit_needs_no_task_ids_and_averages_experts_with_identical_gates(lora_model):
    _, params, _ = lora_model
    routed = build_model(_cfg(method="lora", targets=TARGETS, rank=2, alpha=ALPHA, routing="phatgoose", top_k=T),
                         TASKS, (8, 8, 1))
    assert not routed.task_passes  # one backbone pass, no task ids
    rshapes = shapes(routed, X)
    # the routed tree is the plain one plus a gate [T, *in] beside every a and b
    chex.assert_trees_all_equal_shapes(strip(rshapes, ("gate",)), params)
    rng = np.random.default_rng(6)

    def fill(path, s):  # the plain model's values; every gate one random vector shared by all T experts
        if _keys(path)[-1] == "gate":
            return jnp.broadcast_to(jnp.asarray(rng.standard_normal(s.shape[1:]), jnp.float32), s.shape)
        return _get(params, _keys(path))

    rparams = jax.tree_util.tree_map_with_path(fill, rshapes)

    (out, _), state = jax.jit(lambda p: routed.apply({"params": p}, X, mutable=["intermediates"]))(rparams)
    weights = [w for p, w in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0] if "routing" in _keys(p)]
    assert len(weights) == 2 * len(TARGETS)  # one per projection and block
    assert all(w.shape[:1] == (B,) and w.shape[-1] == T for w in weights)
    np.testing.assert_allclose(np.stack([np.asarray(w) for w in weights]), 1.0 / T, atol=1e-6)

    # uniform weights: every projection adds the mean of the experts' updates, i.e. the plain ViT with the
    # mean over t of merge(params, t)
    merged = [merge(params, t, ALPHA) for t in range(T)]
    mean = jax.tree.map(lambda *xs: sum(xs) / T, *merged)
    plain = build_model(_cfg(), TASKS, (8, 8, 1))
    run = jax.jit(lambda p: plain.apply({"params": p}, X)[0])
    chex.assert_trees_all_close(out, run(mean), atol=2e-5)
    assert not np.allclose(out["a"], run(merged[0])["a"], atol=1e-3)

    # routed LoRA is shared by all tasks (no task passes): left out of the task-specific marks
    specific = objective(routed, TASKS).specific(rshapes)
    assert not any(m for p, m in jax.tree_util.tree_flatten_with_path(specific)[0] if _is_lora(p))


def _get(tree, keys):
    for k in keys:
        tree = tree[k]
    return tree


def test_top2_routing_weights_from_the_model():
    routed = build_model(_cfg(method="lora", targets=("query",), rank=2, routing="phatgoose"), TASKS, (8, 8, 1))
    params = jax.tree.map(lambda s: jnp.asarray(np.random.default_rng(7).standard_normal(s.shape), s.dtype),
                          shapes(routed, X))  # distinct random gates (and everything else)
    _, state = jax.jit(lambda p: routed.apply({"params": p}, X, mutable=["intermediates"]))(params)
    w = np.asarray(state["intermediates"]["backbone"]["block0"]["attn"]["lora_query"]["routing"][0])
    assert w.shape == (B, 4, T)  # [B, tokens, experts]
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    assert ((w > 0).sum(-1) == 2).all()


def test_stack_lora_experts():
    def tree(v):
        return {"blk": {"q": {"kernel": jnp.full((2, 2), 9.0)},
                        "lora_q": {"a": jnp.full((1, 2, 1), v), "b": jnp.full((1, 1, 2), -v), "gate": jnp.full((1, 2), v)}},
                "heads_x": {"w": jnp.full((3,), v)}}

    stacked = stack_lora_experts([tree(1.0), tree(2.0), tree(3.0)])
    assert stacked["blk"]["lora_q"]["a"].shape == (3, 2, 1) and stacked["blk"]["lora_q"]["gate"].shape == (3, 2)
    np.testing.assert_array_equal(stacked["blk"]["lora_q"]["b"][:, 0, 0], [-1.0, -2.0, -3.0])
    np.testing.assert_array_equal(stacked["heads_x"]["w"], 1.0)  # not an expert: the first tree's
    with pytest.raises(ValueError):
        stack_lora_experts([tree(1.0), {"blk": {}}])


# ---------------------------------------------------------------------------------------------- config checks

def test_needs_task_ids():
    assert needs_task_ids(_cfg(method="lora", routing="gate").peft)
    assert not needs_task_ids(_cfg(method="lora", routing="phatgoose").peft)
    assert needs_task_ids(_cfg(method="lora+adapter", routing="phatgoose").peft)  # adapters still per task


@pytest.mark.parametrize("changes,message", [
    (dict(method="lora", routing="smear"), "config.model.peft.routing: unknown routing 'smear'"),
    (dict(method="adapter", routing="gate"), "config.model.peft.routing: 'gate' routes among LoRA experts"),
    (dict(method="", routing="phatgoose"), "config.model.peft.routing: 'phatgoose' routes among LoRA experts"),
    (dict(method="lora", routing="phatgoose", top_k=0), "config.model.peft.top_k: must be a positive integer, got 0"),
    (dict(method="lora", routing="phatgoose", top_k=-1), "config.model.peft.top_k: must be a positive integer"),
    (dict(method="lora", routing="phatgoose", top_k=4), "config.model.peft.top_k: 4 is more than the 3 LoRA experts"),
])
def test_bad_settings_are_one_line_errors_naming_the_key(changes, message):
    cfg = _cfg()
    cfg.peft.update(changes)
    with pytest.raises(ConfigError) as err:
        build_model(cfg, TASKS, (8, 8, 1))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_peft_plugs_checks_top_k_against_the_tasks():
    p = _cfg(method="lora", routing="phatgoose", top_k=3).peft
    with pytest.raises(ConfigError) as err:
        peft_plugs(p, 2, depth=1, num_heads=2, mlp_dim=8, pool="gap")
    assert str(err.value).startswith("config.model.peft.top_k: 3 is more than the 2 LoRA experts")
    assert peft_plugs(p, 3, depth=1, num_heads=2, mlp_dim=8, pool="gap")
