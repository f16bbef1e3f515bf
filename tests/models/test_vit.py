"""The one ViT and its plug interface: every layer gets the call's context, aux is merged, optional roles
(adapters, prompts) and taps work, and attention is softmax(q·kᵀ/√h)·v by the formula."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import print_saved_residuals
import numpy as np
import pytest

from mtljax.models.layers import SelfAttention, attend, gelu
from mtljax.models.plugs import BlockPlugs, Context, merge_aux
from mtljax.models.vit import ViT

IMAGES = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 2))
TINY = dict(patch_size=4, width=8, depth=2, num_heads=2, mlp_dim=16)


class Adapter(nn.Module):
    """A residual bottleneck adapter (``up`` = 0 makes it the identity); reports the task ids it saw."""

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, ctx):
        h = nn.Dense(2, param_dtype=self.param_dtype, name="down")(x)
        y = x + nn.Dense(x.shape[-1], param_dtype=self.param_dtype, name="up")(h)
        return y, {"losses": {"adapter": jnp.sum(ctx.task_ids).astype(jnp.float32)}, "metrics": {"seen": 1.0}}


class PromptTokens(nn.Module):
    """Two learned prompt tokens inserted before the sequence."""

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, ctx):
        p = self.param("tokens", nn.initializers.normal(1.0), (2, x.shape[-1]), self.param_dtype)
        return jnp.concatenate([jnp.broadcast_to(p, (x.shape[0], *p.shape)), x], axis=1)


def _init(vit, ctx=Context()):
    """Random parameters of ``vit`` from their shapes (no init compilation)."""
    shapes = jax.eval_shape(lambda: nn.unbox(vit.init(jax.random.PRNGKey(1), IMAGES, ctx)["params"]))
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda a: (0.3 * rng.standard_normal(a.shape)).astype(np.float32), shapes)


def _apply(vit, params, ctx=Context()):
    return jax.jit(lambda p, x: vit.apply({"params": p}, x, ctx))(params, IMAGES)


def test_dense_defaults_and_taps():
    vit = ViT(**TINY, taps=(0, 1))
    params = _init(vit)
    assert set(params) == {"embedding", "pos_embedding", "block0", "block1", "ln_final"}
    assert set(params["block0"]) == {"ln1", "attn", "ln2", "mlp"}
    enc = _apply(vit, params)
    chex.assert_shape([enc.pooled, enc.tokens], [(3, 8), (3, 4, 8)])
    assert enc.aux == {"losses": {}, "metrics": {}} and set(enc.taps) == {0, 1}
    # the last tap is the residual stream before the final norm
    ln = nn.LayerNorm().apply({"params": params["ln_final"]}, enc.taps[1])
    chex.assert_trees_all_close(ln, enc.tokens, atol=1e-6)
    without = ViT(**TINY, final_norm=False)
    assert "ln_final" not in _init(without)


def test_adapters_and_prompts_plug_in_with_the_context_and_their_aux_is_merged():
    ids = jnp.array([0, 1, 1])
    ctx = Context(task_ids=ids)
    plugs = BlockPlugs(attention_adapter=Adapter, mlp_adapter=Adapter)
    vit = ViT(**TINY, blocks=plugs, prompt=PromptTokens)
    params = _init(vit, ctx)
    assert {"attn_adapter", "mlp_adapter"} <= set(params["block1"]) and "prompt" in params
    run = jax.jit(lambda p: vit.apply({"params": p}, IMAGES, ctx))
    enc = run(params)
    # four adapters each report sum(task_ids) = 2: losses add up, metrics average
    assert float(enc.aux["losses"]["adapter"]) == 8.0 and float(enc.aux["metrics"]["seen"]) == 1.0
    # adapters whose up-projection is zero are identities: the network without them gives the same output
    zero = jax.tree_util.tree_map_with_path(
        lambda path, a: a * 0 if any(getattr(k, "key", None) == "up" for k in path) else a, params)
    plain = ViT(**TINY, prompt=PromptTokens)
    base = {k: {r: v for r, v in b.items() if "adapter" not in r} if k.startswith("block") else b
            for k, b in params.items()}
    without = _apply(plain, base, ctx).pooled
    chex.assert_trees_all_close(without, run(zero).pooled, atol=1e-6)
    assert not np.allclose(without, enc.pooled)
    # prompt tokens come before the patch tokens and are not pooled
    assert enc.tokens.shape == (3, 4, 8)


def test_per_block_plugs_and_defaults():
    mlp = functools.partial(nn.Dense, 8)  # not a plug (no ctx): only to see that block 1 took it

    class WithCtx(nn.Dense):
        def __call__(self, x, ctx):
            return super().__call__(x)

    vit = ViT(**TINY, blocks=(BlockPlugs(), BlockPlugs(mlp=functools.partial(WithCtx, 8))))
    params = _init(vit)
    assert set(params["block0"]["mlp"]) == {"fc1", "fc2"} and set(params["block1"]["mlp"]) == {"kernel", "bias"}
    with pytest.raises(ValueError, match="2 block plug sets for depth 3"):
        _init(ViT(**{**TINY, "depth": 3}, blocks=(BlockPlugs(), BlockPlugs(mlp=mlp))))


def test_merge_aux_sums_losses_and_averages_metrics():
    a = {"losses": {"x": 1.0}, "metrics": {"m": 2.0}}
    b = {"losses": {"x": 2.0, "y": 1.0}, "metrics": {}}
    c = {"losses": {}, "metrics": {"m": 4.0}}
    assert merge_aux(a, None, b, c) == {"losses": {"x": 3.0, "y": 1.0}, "metrics": {"m": 3.0}}


def test_gelu_keeps_only_its_input_and_equals_flax_gelu_bit_for_bit(capsys):
    x = np.linspace(-6, 6, 97, dtype=np.float64)
    u = np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)  # the tanh form, in float64
    ref = 0.5 * x * (1 + np.tanh(u))
    dref = 0.5 * (1 + np.tanh(u)) + 0.5 * x * (1 - np.tanh(u) ** 2) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * x**2)
    grad = jax.jit(jax.vmap(jax.grad(gelu)))
    xs = jnp.asarray(x, jnp.float32)
    np.testing.assert_allclose(gelu(xs), ref, atol=1e-6)
    np.testing.assert_allclose(grad(xs), dref, atol=2e-5)  # float32 cancellation in 1 + tanh near x = -6
    for dtype in (jnp.float32, jnp.bfloat16):  # same ops as flax's: identical values and gradients
        xd = xs.astype(dtype)
        np.testing.assert_array_equal(jax.jit(gelu)(xd), jax.jit(nn.gelu)(xd))
        np.testing.assert_array_equal(grad(xd), jax.jit(jax.vmap(jax.grad(nn.gelu)))(xd))
    print_saved_residuals(gelu, xs)  # the backward keeps x only and recomputes the rest
    assert capsys.readouterr().out.strip().splitlines() == ["f32[97] from the argument x"]


@pytest.mark.parametrize("impl", [None, "xla"])
def test_attention_is_softmax_of_scaled_dot_products(impl):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 5, n, 4)).astype(np.float32) for n in (6, 2, 2))  # 3 queries per kv head
    got = attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), impl)
    kk, vv = np.repeat(k, 3, axis=2), np.repeat(v, 3, axis=2)  # query head n reads kv head n // 3
    logits = np.einsum("bqnh,bknh->bnqk", q, kk) / 2.0
    w = np.exp(logits - logits.max(-1, keepdims=True))
    ref = np.einsum("bnqk,bknh->bqnh", w / w.sum(-1, keepdims=True), vv)
    chex.assert_trees_all_close(got, ref, atol=1e-5)
    layer = SelfAttention(num_heads=2, attention_impl=impl)
    x = jnp.asarray(rng.standard_normal((2, 5, 8)).astype(np.float32))
    p = nn.unbox(layer.init(jax.random.PRNGKey(0), x)["params"])
    proj = {n: np.einsum("bsd,dhk->bshk", x, p[n]["kernel"]) + p[n]["bias"] for n in ("query", "key", "value")}
    logits = np.einsum("bqhd,bkhd->bhqk", proj["query"], proj["key"]) / np.sqrt(4)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    heads = np.einsum("bhqk,bkhd->bqhd", w / w.sum(-1, keepdims=True), proj["value"])
    ref = np.einsum("bqhd,hdo->bqo", heads, p["out"]["kernel"]) + p["out"]["bias"]
    chex.assert_trees_all_close(layer.apply({"params": p}, x), ref, atol=1e-5)
    with pytest.raises(ValueError, match="attention_impl: unknown 'flash'"):
        attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), "flash")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
def test_cudnn_attention_equals_xla_in_bfloat16():
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 64, n, 32)), jnp.bfloat16) for n in (4, 1, 1))
    fast, ref = (jax.jit(functools.partial(attend, impl=impl))(q, k, v) for impl in ("cudnn", "xla"))
    chex.assert_trees_all_close(fast.astype(jnp.float32), ref.astype(jnp.float32), atol=2e-2)
