"""The MoE MLP and MoE attention layers: dispatch paths agree, drops are exact, sub-layers are exact."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.models.moe import MoeAttention, MoeMlp
from mtljax.models.plugs import Context

X = jax.random.normal(jax.random.PRNGKey(0), (6, 10, 16))


def _init(layer, ids=None, sharpen=1.0):
    init = jax.jit(lambda: layer.init({"params": jax.random.PRNGKey(1)}, X, Context(task_ids=ids))["params"])
    params = nn.unbox(init())
    if sharpen != 1.0:  # confident gates, so that capacity limits bite and choices are clear
        params = {**params, "gate": jax.tree.map(lambda g: g * sharpen, params["gate"])}
    return params


def _run(layer, params, ids=None, train=False):
    ctx = Context(train=train, task_ids=ids)
    return jax.jit(lambda p: layer.apply({"params": p}, X, ctx, rngs={"dropout": jax.random.PRNGKey(2)}))(params)


@pytest.mark.parametrize("router", ["tokens_choose", "experts_choose"])
def test_gather_and_einsum_dispatch_agree(router):
    outs = []
    for dispatch in ("einsum", "gather"):
        layer = MoeMlp(4, 8, router=router, k=2, capacity_factor=0.75, dispatch=dispatch)
        params = _init(layer, sharpen=30.0)
        f = lambda p: _run(layer, p)[0]  # noqa: B023, E731
        outs.append((f(params), jax.grad(lambda p: jnp.sum(f(p) ** 2))(params)))  # noqa: B023
    np.testing.assert_allclose(outs[0][0], outs[1][0], atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), outs[0][1], outs[1][1])


def test_ragged_dropless_equals_einsum_with_room_for_every_token():
    big = MoeMlp(4, 8, k=2, capacity=20, dispatch="einsum")  # 10 tokens x 2 choices always fit
    ragged = MoeMlp(4, 8, k=2, dispatch="ragged")
    params = _init(big, sharpen=10.0)
    y_big, aux_big = _run(big, params)
    y_rag, _ = _run(ragged, params)
    assert float(aux_big["metrics"]["moe_dropped"]) == 0.0
    np.testing.assert_allclose(y_big, y_rag, atol=1e-5)


def test_dropped_tokens_pass_unchanged_through_the_residual():
    layer = MoeMlp(4, 8, k=1, capacity=1, batch_priority=False)  # one slot per expert and example
    params = _init(layer, sharpen=30.0)
    y, aux = _run(layer, params)
    assert float(aux["metrics"]["moe_dropped"]) > 0.5
    # no expert owes anything to a token that lost all its choices, so x + MoE(x) == x exactly there
    _, state = layer.apply({"params": params}, X, mutable=["intermediates"])
    probs = jax.nn.softmax(jnp.einsum("bsd,de->bse", X, params["gate"]["kernel"]), -1)
    first = jnp.argmax(probs, -1)
    taken = np.zeros(first.shape, bool)
    for b in range(first.shape[0]):
        for e in range(4):
            hits = np.flatnonzero(np.asarray(first[b]) == e)
            taken[b, hits[:1]] = True  # capacity 1, no priority: the first token in order gets the slot
    np.testing.assert_array_equal(np.asarray(y)[~taken], 0.0)
    np.testing.assert_array_equal(np.asarray(X + y)[~taken], np.asarray(X)[~taken])
    assert np.abs(np.asarray(y)[taken]).min(axis=-1).max() > 0


def test_soft_moe_combines_every_token_fully():
    layer = MoeMlp(4, 8, router="soft", slots_per_expert=2)
    params = _init(layer)
    y, _ = _run(layer, params)
    assert y.shape == X.shape and np.isfinite(np.asarray(y)).all()
    # Soft MoE's combine weights of a token are a softmax over all slots: they sum to exactly 1
    tokens = X.reshape(-1, 16)
    xn = tokens / jnp.linalg.norm(tokens, axis=-1, keepdims=True)
    k = params["gate"]["kernel"] / jnp.linalg.norm(params["gate"]["kernel"], axis=0, keepdims=True)
    combine = jax.nn.softmax(params["gate"]["scale"] * xn @ k, axis=-1)
    np.testing.assert_allclose(combine.sum(-1), 1.0, rtol=1e-6)


def test_task_gates_route_each_example_by_its_task():
    layer = MoeMlp(4, 8, k=1, num_tasks=2, gate="task", capacity=10)
    params = _init(layer, jnp.zeros((6,), jnp.int32), sharpen=10.0)
    ids = jnp.array([0, 1, 0, 1, 0, 1])
    y, _ = _run(layer, params, ids)
    # example i routed with gate ids[i] equals the same example run through a one-task copy of that gate
    one = MoeMlp(4, 8, k=1, num_tasks=1, gate="task", capacity=10)
    run_one = jax.jit(lambda p: one.apply({"params": p}, X, Context(task_ids=jnp.zeros((6,), jnp.int32)))[0])
    for t in (0, 1):
        y1 = run_one({**params, "gate": {"kernel": params["gate"]["kernel"][t:t + 1]}})
        np.testing.assert_allclose(np.asarray(y)[np.asarray(ids) == t], np.asarray(y1)[np.asarray(ids) == t], atol=1e-6)
    # the task-conditioned gate gives different routes to different tasks from one gate
    cond = MoeMlp(4, 8, k=1, num_tasks=2, gate="task_conditioned", capacity=10)
    pc = jax.eval_shape(lambda: nn.unbox(cond.init(jax.random.PRNGKey(4), X, Context(task_ids=ids))["params"]))
    assert set(pc["gate"]) == {"kernel", "task_mlp0", "task_mlp1"}
    assert pc["gate"]["kernel"].shape == (16 + 64, 4)


def test_sub_layer_with_the_used_experts_is_exact():
    layer = MoeMlp(12, 8, k=2, capacity_factor=1.0)
    params = _init(layer, sharpen=20.0)
    x = X[:2]  # 20 tokens x 2 choices: a few of the 12 experts stay unused
    (y, _), state = jax.jit(lambda p: layer.apply({"params": p}, x, mutable=["intermediates"]))(params)
    usage = np.asarray(state["intermediates"]["usage"][0][0])
    kept = tuple(np.flatnonzero(usage > 0))
    assert len(kept) < 12
    sub = MoeMlp(12, 8, k=2, capacity_factor=1.0, experts_kept=kept)
    idx = np.asarray(kept)
    p_sub = {**params, **{k: params[k][idx] for k in ("wi", "bi", "wo", "bo")}}
    assert p_sub["wi"].shape[0] == len(kept)
    np.testing.assert_allclose(jax.jit(lambda p: sub.apply({"params": p}, x)[0])(p_sub), y, atol=1e-6)


def test_moe_attention_with_every_expert_chosen_is_gate_weighted_multi_query_attention():
    e = h = 4
    layer = MoeAttention(num_experts=e, k=e, head_dim=h, gate="shared")  # zero-initialised gate: p = 1/E for all
    params = _init(layer)
    y, aux = _run(layer, params)
    kv = X @ params["kv"]["kernel"] + params["kv"]["bias"]
    keys, values = kv[..., :h], kv[..., h:]
    ref = params["bo"]
    for i in range(e):
        q = X @ params["wq"][i]
        att = jax.nn.softmax(jnp.einsum("bsh,bth->bst", q, keys) / np.sqrt(h), axis=-1)
        ref = ref + (1 / e) * (att @ values) @ params["wo"][i]
    np.testing.assert_allclose(y, ref, atol=1e-5)


@pytest.mark.parametrize("importance", ["sparse", "dense"])
def test_importance_loss_of_the_layer_sums_the_gates_it_mixes_with(importance):
    layer = MoeMlp(4, 8, k=2, importance=importance, importance_weight=0.5)
    shapes = jax.eval_shape(lambda: nn.unbox(layer.init(jax.random.PRNGKey(1), X)["params"]))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: (rng.standard_normal(a.shape)).astype(np.float32), shapes)
    aux = jax.jit(lambda p: layer.apply({"params": p}, X)[1])(params)  # eval: no gate noise
    logits = np.einsum("bsd,de->bse", np.asarray(X, np.float64), np.asarray(params["gate"]["kernel"], np.float64))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if importance == "sparse":  # zero outside each token's top 2
        probs = np.where(probs >= -np.sort(-probs, axis=-1)[..., 1:2], probs, 0.0)
    imp = probs.reshape(-1, 4).sum(0)
    want = 0.5 * imp.var() / imp.mean() ** 2
    assert float(aux["losses"]["moe_importance"]) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=5), "top_k=5"),
    (dict(capacity_factor=0.0), "capacity_factor"),
    (dict(router="nope"), "router"),
    (dict(dispatch="ragged", router="experts_choose"), "ragged"),
])
def test_bad_settings_name_their_config_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MoeMlp(4, 8, **kwargs).init(jax.random.PRNGKey(0), X)
