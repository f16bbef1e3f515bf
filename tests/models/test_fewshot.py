"""FM3-style few-shot adaptation (mtljax.models.peft.task_encoder, fewshot): the support encoder is
permutation-invariant and relabelling-invariant, a new task's adapters depend only on its support set,
the closed-form heads match numpy, 0-step and k-step adaptation run and k steps lower the support loss."""

import jax
import jax.numpy as jnp
import numpy as np

from mtljax.models.peft import fewshot as fs
from mtljax.models.vit import ViT

K, D = 6, 16
VIT = ViT(patch_size=4, width=D, depth=1, num_heads=2, mlp_dim=16)
FM3 = fs.FM3(VIT, adapter_dim=3, task_dim=5, hidden_dim=8, projected_dim=6, encoder_hidden=8)
CLS, REG = fs.TaskSpec("c", "classification", 3), fs.TaskSpec("r", "regression")


def test_support_encoder_invariances_and_adapters_depend_only_on_the_support_set():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((2 * K, 8, 8, 1)), jnp.float32)
    params = FM3.init(jax.random.PRNGKey(0), images)
    params = jax.tree.map(lambda a: a + 0.3 * jnp.asarray(rng.standard_normal(a.shape), a.dtype), params)
    cls_y, reg_y = jnp.array([0, 1, 2, 0, 1, 1]), jnp.asarray(rng.standard_normal(K), jnp.float32)
    perm = rng.permutation(K)
    embed = jax.jit(lambda x, y, task: FM3.embed(params, FM3.base_features(params, x), y, task), static_argnums=2)
    a = embed(images[:K], cls_y, CLS)
    np.testing.assert_allclose(embed(images[:K][perm], cls_y[perm], CLS), a, rtol=1e-5, atol=1e-5)  # reordered
    renamed = embed(images[:K], jnp.array([2, 0, 1, 2, 0, 0]), CLS)  # classes renamed 0->2, 1->0, 2->1
    np.testing.assert_allclose(renamed, a, rtol=1e-5, atol=1e-5)
    r = embed(images[:K], reg_y, REG)
    np.testing.assert_allclose(embed(images[:K][perm], reg_y[perm], REG), r, rtol=1e-5, atol=1e-5)

    # a new task's adapters: the same from its support set alone or alongside another task's
    weights = jax.jit(lambda z: FM3.hyper_vit.apply({"params": params["backbone"]}, z, method="weights"))
    alone, together = weights(jnp.stack([a, a])), weights(jnp.stack([r, a]))  # one compiled shape
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x[0], y[1], rtol=1e-6, atol=1e-6), alone, together)

    # 0 steps: no gradient, an order-invariant head; k steps lower the support loss
    adapt = jax.jit(fs.adapt, static_argnums=(0, 4), static_argnames=("steps",))
    zero = adapt(FM3, params, images[:K], cls_y, CLS)
    zero_p = adapt(FM3, params, images[:K][perm], cls_y[perm], CLS)
    np.testing.assert_allclose(zero.head.w, zero_p.head.w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(zero.embedding, a, rtol=1e-5, atol=1e-5)
    loss = jax.jit(lambda ad, x, y: fs.task_loss(fs.predict(FM3, params, ad, x), y, CLS))
    tuned = adapt(FM3, params, images[:K], cls_y, CLS, steps=3)
    assert float(loss(tuned, images[:K], cls_y)) < float(loss(zero, images[:K], cls_y))
    assert fs.predict(FM3, params, zero, images[K:]).shape == (K, 3)


def test_closed_form_heads_match_numpy():
    rng = np.random.default_rng(1)
    h, y = rng.standard_normal((K, 4)).astype(np.float32), np.array([0, 1, 0, 1, 1, 0])
    head = fs.closed_form_head(jnp.asarray(h), jnp.asarray(y), fs.TaskSpec("c", "classification", 3))
    mu = np.stack([h[y == c].mean(0) for c in (0, 1)])
    logits = np.asarray(fs.head_apply(head, jnp.asarray(h)))
    want = -((h[:, None] - mu[None]) ** 2).sum(-1) / 4  # up to the per-row constant −‖h‖²/D
    np.testing.assert_allclose(logits[:, :2] - logits[:, :1], want - want[:, :1], rtol=1e-4, atol=1e-4)
    assert np.all(logits[:, 2] < -1e8)  # class 2 has no support example
    t = rng.standard_normal(K).astype(np.float32)
    reg = fs.closed_form_head(jnp.asarray(h), jnp.asarray(t), fs.TaskSpec("r", "regression"), ridge=0.5)
    hc, tc = h - h.mean(0), t - t.mean()
    w = np.linalg.solve(hc.T @ hc + 0.5 * K * np.eye(4), hc.T @ tc)
    np.testing.assert_allclose(np.asarray(reg.w)[:, 0], w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(reg.b[0]), t.mean() - h.mean(0) @ w, rtol=1e-4, atol=1e-5)
