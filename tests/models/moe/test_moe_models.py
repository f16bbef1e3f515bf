"""M³ViT, Mod-Squad and TaskExpert models: per-task passes, FLOP savings, exact task sub-models."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.config import base_config
from mtljax.cost import flops_of
from mtljax.models import build_model
from mtljax.models.moe.submodel import expert_usage, extract_task_model
from mtljax.models.moe.task_expert import MemorialMoE
from mtljax.tasks import Task

TASKS = (Task("a", "multiclass", num_classes=3), Task("b", "binary"), Task("c", "dense", num_classes=2))
SHAPE = (8, 8, 1)


def _model(name, **moe):
    c = base_config().model
    c.name = name
    c.vit.update(width=16, depth=2, num_heads=2, mlp_dim=32, patch_size=4)
    c.moe.update(num_experts=8, top_k=2, every=1, **moe)
    if name == "mod_squad":
        c.moe.update(attn_experts=6, attn_top_k=2, attn_head_dim=8, mi_weight=0.005, gate_zero_init=False)
    return build_model(c, TASKS, SHAPE)


@functools.lru_cache(maxsize=None)
def _setup(name):
    model = _model(name)
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, *SHAPE))
    params = nn.unbox(jax.jit(model.init)({"params": jax.random.PRNGKey(1)}, x[:1])["params"])
    # sharper gates than at initialisation, so that tasks route differently and some experts go unused
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v * 40 if any(getattr(k, "key", None) == "gate" for k in p) else v, params)
    return model, params, x


def _compile(model, params, x, **kw):
    """The compiled forward and its FLOPs (XLA cost analysis)."""
    compiled = jax.jit(lambda p, v: model.apply({"params": p}, v, **kw)[0]).lower(params, x).compile()
    return compiled(params, x), flops_of(compiled)


@pytest.mark.parametrize("name", ["m3vit", "mod_squad"])
def test_single_task_pass_matches_the_multi_task_forward_and_costs_less(name):
    model, params, x = _setup(name)
    full, all_flops = _compile(model, params, x)
    assert model.task_passes
    if name == "mod_squad":
        aux = jax.eval_shape(lambda p: model.apply({"params": p}, x)[1], params)
        assert "moe_mutual_info" in aux["losses"] and "moe_attn_mutual_info" in aux["losses"]
    alone, one_flops = _compile(model, params, x, task="c")
    assert set(alone) == {"c"}
    np.testing.assert_allclose(alone["c"], full["c"], atol=1e-5)
    assert one_flops < 0.5 * all_flops  # one backbone pass instead of three


def test_task_pass_equals_the_multi_task_forward_when_groups_drop_tokens():
    # routing groups of 2 images and capacity below the demand: each group must hold one task's pass,
    # or tasks would compete for capacity and a task's output would depend on the other tasks
    model = _model("m3vit", group_size=2, capacity_factor=0.5)
    x = jax.random.uniform(jax.random.PRNGKey(2), (6, *SHAPE))
    _, params = _setup("m3vit")[:2]
    (full, aux) = jax.jit(lambda p, v: model.apply({"params": p}, v))(params, x)
    assert float(aux["metrics"]["moe_dropped"]) > 0.2
    for task in ("a", "c"):
        alone = jax.jit(lambda p, v, t=task: model.apply({"params": p}, v, task=t)[0])(params, x)
        np.testing.assert_allclose(alone[task], full[task], atol=1e-5)


@pytest.mark.parametrize("name", ["m3vit", "mod_squad"])
def test_task_sub_model_is_exact_and_smaller(name):
    model, params, x = _setup(name)
    probe = x[:1]
    usage = expert_usage(model, params, probe, "a")
    sub, sub_params, kept = extract_task_model(model, params, "a", usage)
    assert any(len(v) < 8 for v in kept.values())  # some experts were dropped
    want, full_flops = _compile(model, params, probe, task="a")
    got, sub_flops = _compile(sub, sub_params, probe)
    np.testing.assert_allclose(got["a"], want["a"], atol=1e-5)
    assert set(k for k in sub_params if k.startswith("heads_")) == {"heads_a"}
    n_full = sum(v.size for v in jax.tree.leaves(params))
    n_sub = sum(v.size for v in jax.tree.leaves(sub_params))
    assert n_sub < n_full
    assert sub_flops < full_flops
    # a threshold above every share keeps only the k most used experts per layer
    _, _, tight = extract_task_model(model, params, "a", usage, threshold=0.99)
    k_of = {"mlp": 2, "attn": 2}
    assert all(len(v) == k_of[path[-1]] for path, v in tight.items())


def test_unknown_task_is_refused_by_name():
    model, params, x = _setup("m3vit")
    with pytest.raises(ValueError, match="task='nope'"):
        model.apply({"params": params}, x, task="nope")
    with pytest.raises(ValueError, match="task='nope'"):
        extract_task_model(model, params, "nope", {})


def test_memorial_moe_mixes_experts_and_memory_per_task():
    layer = MemorialMoE(num_tasks=2, num_experts=3, expert_dim=5)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6))
    memory = jax.random.normal(jax.random.PRNGKey(1), (2, 2, 4, 6))
    params = nn.unbox(layer.init(jax.random.PRNGKey(2), x, memory)["params"])
    out = layer.apply({"params": params}, x, memory)

    @jax.jit
    def reference(params, x, memory):
        z = nn.LayerNorm().apply({"params": params["ln"]}, x)
        experts = [z + nn.gelu(z @ params["w1"][i] + params["b1"][i]) @ params["w2"][i] + params["b2"][i]
                   for i in range(3)]  # residual experts
        out = []
        for t in range(2):
            g = jax.nn.softmax(z @ params["gate"][t], axis=-1)  # 3 experts + the memory slot, per token
            out.append(sum(g[..., i:i + 1] * experts[i] for i in range(3)) + g[..., 3:] * memory[t])
        return jnp.stack(out)

    np.testing.assert_allclose(out, reference(params, x, memory), atol=1e-5)
    # identical gates give identical task features: the gates alone make the features task-specific
    same = {**params, "gate": jnp.broadcast_to(params["gate"][:1], params["gate"].shape)}
    out_same = layer.apply({"params": same}, x, jnp.broadcast_to(memory[:1], memory.shape))
    np.testing.assert_allclose(out_same[0], out_same[1], atol=1e-6)


def test_task_expert_model_gives_each_task_its_representation():
    c = base_config().model
    c.name = "task_expert"
    c.vit.update(width=16, depth=3, num_heads=2, mlp_dim=32, patch_size=4)
    c.task_expert.update(num_experts=3, expert_dim=8, every=1)
    model = build_model(c, TASKS, SHAPE)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, *SHAPE))
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"])
    assert {k for k in params["backbone"] if k.startswith("mmoe")} == {"mmoe0", "mmoe1", "mmoe2"}
    out, state = jax.jit(lambda p, v: model.apply({"params": p}, v, mutable=["intermediates"]))(params, x)
    assert out[0]["c"].shape == (2, 8, 8, 2) and out[0]["a"].shape == (2, 3)
    rep = jax.eval_shape(lambda p, v: model.apply({"params": p}, v, method=model.encode)[0], params, x)
    assert set(rep["pooled"]) == {"a", "b", "c"} and rep["tokens"]["c"].shape == (2, 4, 16)
    usage = state["intermediates"]["backbone"]["mmoe2"]["usage"][0]
    np.testing.assert_allclose(usage.sum(-1), 1.0, rtol=1e-5)  # mean gate weights over experts + memory
