"""Routers and auxiliary losses, by their defining properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from mtljax.models.moe import routing as rt


def _probs(g=3, s=16, e=4, seed=0, scale=3.0):
    logits = scale * jax.random.normal(jax.random.PRNGKey(seed), (g, s, e))
    return jax.nn.softmax(logits, axis=-1)


@pytest.mark.parametrize("batch_priority", [True, False])
def test_tokens_choose_respects_capacity_and_combine_weights(batch_priority):
    probs = _probs()
    k, cap = 2, 5  # 16 tokens x 2 choices over 4 experts (8 each) into 5 slots: some must drop
    dispatch, combine, slots = rt.tokens_choose(probs, k, cap, batch_priority=batch_priority)
    d = np.asarray(dispatch)
    assert set(np.unique(d)) <= {0.0, 1.0}
    assert d.sum(axis=1).max() <= 1  # a slot holds at most one token
    assert (d.sum(axis=(1, 3)) <= cap).all()  # an expert holds at most `capacity` tokens
    assert (d.sum(axis=3) <= 1).all()  # a token enters an expert at most once
    w = np.asarray(combine).sum(axis=(2, 3))
    assert (w <= 1 + 1e-6).all()  # combine weights of a token sum to <= 1
    # the combine weight of a kept choice is its gate probability; dropped choices weigh 0
    expected = np.where(slots["kept"], slots["top_val"], 0).sum(-1)
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert not np.asarray(slots["kept"]).all()  # the test really drops something
    # every first choice is placed before any second choice (GShard / V-MoE order)
    kept, idx = np.asarray(slots["kept"]), np.asarray(slots["top_idx"])
    for g in range(probs.shape[0]):
        for e in range(probs.shape[2]):
            firsts = ((idx[g, :, 0] == e)).sum()
            seconds_kept = (kept[g, :, 1] & (idx[g, :, 1] == e)).sum()
            assert seconds_kept == 0 or firsts < cap


def test_batch_priority_keeps_the_most_confident_tokens():
    probs = _probs(g=2, s=32, e=4, seed=3)
    _, _, slots = rt.tokens_choose(probs, 1, 3, batch_priority=True)
    conf, idx, kept = (np.asarray(slots[k])[..., 0] for k in ("top_val", "top_idx", "kept"))
    for g in range(2):
        for e in range(4):
            mine = idx[g] == e
            if kept[g][mine].sum() and (~kept[g][mine]).sum():
                assert conf[g][mine & kept[g]].min() >= conf[g][mine & ~kept[g]].max()
    # without priority the first tokens in order win
    _, _, plain = rt.tokens_choose(probs, 1, 3, batch_priority=False)
    pk, pi = np.asarray(plain["kept"])[..., 0], np.asarray(plain["top_idx"])[..., 0]
    for g in range(2):
        for e in range(4):
            order = np.flatnonzero(pi[g] == e)
            assert pk[g][order[:3]].all() and not pk[g][order[3:]].any()


def test_experts_choose_fills_every_expert_exactly():
    probs = _probs(g=2, s=12, e=3)
    cap = rt.experts_choose_capacity(12, 3, 1.0)
    dispatch, combine, _ = rt.experts_choose(probs, cap)
    d = np.asarray(dispatch)
    np.testing.assert_array_equal(d.sum(axis=(1, 3)), cap)  # every expert takes exactly its capacity
    np.testing.assert_array_equal(d.sum(axis=1), 1)  # every slot holds exactly one token
    assert (np.asarray(combine).sum(axis=(2, 3)) <= 1 + 1e-6).all()
    # each expert took its highest-probability tokens
    for g in range(2):
        for e in range(3):
            taken = d[g, :, e].sum(-1) > 0
            assert np.asarray(probs)[g, taken, e].min() >= np.asarray(probs)[g, ~taken, e].max()


def test_balancing_losses_vanish_for_uniform_routing_and_grow_otherwise():
    uniform = jnp.full((4, 8, 6), 1 / 6)
    assert float(rt.importance_loss(uniform)) == pytest.approx(0, abs=1e-9)
    flat = jnp.zeros((4, 8, 6))
    assert float(rt.load_loss(flat, flat, 0.5, 2)) == pytest.approx(0, abs=1e-9)
    skewed = _probs(e=6)
    assert float(rt.importance_loss(skewed)) > 0.01
    logits = jnp.log(skewed)
    assert float(rt.load_loss(logits, logits, 0.5, 2)) > 0.01
    # z-loss is the mean squared logsumexp
    z = jnp.array([[0.0, 1.0], [2.0, -1.0]])
    ref = np.mean(np.log(np.exp(np.asarray(z)).sum(-1)) ** 2)
    assert float(rt.z_loss(z)) == pytest.approx(ref, rel=1e-6)


def _cv2(importance):
    return importance.var() / importance.mean() ** 2


def test_importance_loss_of_the_top_k_gates_by_hand_and_from_the_equation():
    # two tokens, three experts, k = 2. Top-k gates (not renormalised, M3ViT): [.5, .3, 0] and
    # [0, .3, .6]; Importance = [.5, .6, .6], mean 17/30, population variance 1/450: CV² = 2/289.
    probs = jnp.array([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6]])
    assert float(rt.importance_loss(rt.top_k_gates(probs, 2))) == pytest.approx(2 / 289, rel=1e-5)
    # the dense sum (V-MoE) is [.6, .6, .8]: CV² = (2/225) / (4/9) = 0.02
    assert float(rt.importance_loss(probs)) == pytest.approx(0.02, rel=1e-5)
    # Shazeer et al. (2017), Eq. 6 with G(x) = softmax(KeepTopK(h(x), k)), straight from the logits
    rng = np.random.default_rng(0)
    h = rng.normal(size=(4, 5, 6)).astype(np.float32)
    k = 2
    kth = -np.sort(-h, axis=-1)[..., k - 1:k]
    kept = np.where(h >= kth, h, -np.inf)
    g = np.exp(kept - kept.max(-1, keepdims=True))
    g /= g.sum(-1, keepdims=True)
    probs = jax.nn.softmax(jnp.asarray(h), axis=-1)
    got = float(rt.importance_loss(rt.top_k_gates(probs, k, renormalize=True)))
    assert got == pytest.approx(_cv2(g.reshape(-1, 6).sum(0)), rel=1e-4)
    # M3ViT's gate: the softmax over all experts, zeroed outside the top k (no renormalisation)
    p = np.exp(h - h.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    m3 = np.where(h >= kth, p, 0.0)
    got = float(rt.importance_loss(rt.top_k_gates(probs, k)))
    assert got == pytest.approx(_cv2(m3.reshape(-1, 6).sum(0)), rel=1e-4)
    # ties (zero-initialised gates) are broken as the router's jax.lax.top_k breaks them: lowest index first
    tied = jnp.array([[0.25, 0.25, 0.25, 0.25], [0.1, 0.3, 0.3, 0.3]])
    np.testing.assert_allclose(rt.top_k_gates(tied, 2), [[0.25, 0.25, 0, 0], [0, 0.3, 0.3, 0]], atol=1e-7)


def test_expected_load_is_the_probability_of_staying_in_the_noisy_top_k():
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(5, 6)).astype(np.float32)
    sigma, k = 0.7, 2
    noisy = clean + sigma * rng.normal(size=clean.shape).astype(np.float32)
    got = np.asarray(rt.expected_load(jnp.asarray(clean), jnp.asarray(noisy), sigma, k))
    # Monte Carlo: re-draw only expert e's noise, others fixed at their noisy values
    draws = clean[..., None] + sigma * rng.normal(size=(*clean.shape, 40_000))
    for e in range(6):
        others = np.delete(noisy, e, axis=1)
        kth = -np.sort(-others, axis=1)[:, k - 1]
        mc = (draws[:, e] > kth[:, None]).mean(axis=1)
        np.testing.assert_allclose(got[:, e], mc, atol=0.01)
    # closed form for one entry
    others = np.delete(noisy[0], 1)
    assert got[0, 1] == pytest.approx(norm.cdf((clean[0, 1] - np.sort(others)[::-1][k - 1]) / sigma), rel=1e-5)


def test_mutual_information_loss():
    t, e, b, s = 3, 6, 6, 4
    task_ids = jnp.arange(b) % t
    # routing that ignores the task: I(T; E) = 0
    shared = jnp.broadcast_to(_probs(g=1, s=s, e=e)[0], (b, s, e))
    assert float(rt.mutual_information_loss(shared, task_ids, t)) == pytest.approx(0, abs=1e-6)
    # every task owns 2 experts, used evenly: I(T; E) = log T, so the loss is -log T
    own = jnp.stack([jnp.tile(jnp.eye(t).repeat(2, axis=1)[i] / 2, (s, 1)) for i in task_ids])
    assert float(rt.mutual_information_loss(own, task_ids, t)) == pytest.approx(-np.log(t), rel=1e-4)
    # against a direct numpy evaluation of Mod-Squad's formula on random probabilities
    probs = _probs(g=b, s=s, e=e, seed=5)
    joint = np.zeros((t, e))
    for i, tid in enumerate(np.asarray(task_ids)):
        joint[tid] += np.asarray(probs[i]).sum(0)
    joint /= joint.sum()
    pt, pe = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    ref = -(joint * np.log(joint / (pt * pe))).sum()
    assert float(rt.mutual_information_loss(probs, task_ids, t)) == pytest.approx(ref, rel=1e-4)


def test_capacity_formulas():
    assert rt.tokens_choose_capacity(2, 16, 8, 1.25) == 5  # ceil(2 * 16 * 1.25 / 8)
    assert rt.tokens_choose_capacity(1, 4, 64, 1.0) == 1  # never below one slot
    assert rt.tokens_choose_capacity(4, 8, 2, 4.0) == 32  # never above k * tokens
    assert rt.experts_choose_capacity(16, 4, 2.0) == 8
    assert rt.experts_choose_capacity(16, 2, 4.0) == 16


@pytest.mark.parametrize("k", [1, 2, 3, 8])
def test_top_k_by_reductions_equals_lax_top_k_with_ties_and_gradients(k):
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 7, 8))
    x = x.at[0, :, 3:6].set(0.25).at[1, :, :].set(1.0).at[2, :, ::2].set(-jnp.inf)  # ties, all equal, -inf
    x = x.at[3, 0].set(-jnp.inf)  # a whole row of -inf
    want_v, want_i = jax.lax.top_k(x, k)
    got_v, got_i = rt.top_k(x, k)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_v, want_v)
    w = jax.random.normal(jax.random.PRNGKey(1), want_v.shape)
    y = jnp.where(jnp.isfinite(x), x, 0.0)  # finite for the gradient
    grad = lambda f: jax.grad(lambda y: jnp.sum(f(y, k)[0] * w))(y)  # noqa: E731
    np.testing.assert_array_equal(grad(rt.top_k), grad(jax.lax.top_k))


def test_top_k_gates_equal_a_scatter_of_lax_top_k():
    probs = _probs(g=4, s=32, e=8, seed=5).at[0, :, :4].set(0.1)  # with ties
    for k in (1, 2, 3):
        v, i = jax.lax.top_k(probs, k)
        want = jnp.zeros_like(probs).at[jnp.arange(4)[:, None, None], jnp.arange(32)[None, :, None], i].set(v)
        np.testing.assert_array_equal(rt.top_k_gates(probs, k), want)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pairwise_batch_priority_equals_the_sorted_cumulative_sum(k):
    probs = _probs(g=4, s=24, e=4, seed=7)
    probs = probs.at[0, :12].set(probs[0, 0])  # tied priorities: the lower index goes first
    fast = rt.tokens_choose_slots(probs, k, 5, batch_priority=True)
    old = rt.PAIRWISE_PRIORITY
    rt.PAIRWISE_PRIORITY = False
    try:
        ref = rt.tokens_choose_slots(probs, k, 5, batch_priority=True)
    finally:
        rt.PAIRWISE_PRIORITY = old
    for key in ("top_idx", "top_val", "position", "kept"):
        np.testing.assert_array_equal(fast[key], ref[key])
