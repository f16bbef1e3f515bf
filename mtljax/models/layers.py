"""Small Flax building blocks with logical axis names on every parameter, and the dense ViT plugs.

The dense plugs of the ViT (:mod:`mtljax.models.plugs`: called as ``layer(x, ctx)``) are
:class:`LayerNorm`, :class:`MlpBlock` and :class:`SelfAttention`. Attention everywhere (dense, slim,
MoE) goes through :func:`attend`, i.e. ``jax.nn.dot_product_attention`` with a selectable
implementation (``config.model.vit.attention_impl``): ``None`` lets JAX choose, ``'xla'`` is the
portable einsum-softmax-einsum, ``'cudnn'`` is cuDNN's fused (flash) attention on NVIDIA GPUs (it needs
``config.model.dtype`` ``bfloat16`` or ``float16``).

Logical names used (mapped to mesh axes by ``mtljax.parallel.rules``): ``embed`` (model width),
``mlp`` (hidden width of MLPs), ``heads``/``kv`` (attention heads and per-head width), ``patch``
(flattened patch pixels), ``tokens`` (sequence positions), ``classes`` (head outputs), ``hidden``
(tabular MLP widths), and ``act_batch``/``act_len``/``act_embed`` for activations.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.models.plugs import Context

Dtype = Any
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}  # config names
default_init = nn.initializers.xavier_uniform()
ATTENTION_IMPLS = (None, "xla", "cudnn")  # jax.nn.dot_product_attention(implementation=...)


def dense(features, axes, *, dtype, param_dtype, name=None, kernel_init=default_init, use_bias=True):
    """``nn.Dense`` whose kernel carries ``axes`` and whose bias carries ``axes[-1]``."""
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        use_bias=use_bias,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[-1],)),
        name=name,
    )


@jax.checkpoint
def gelu(x: jax.Array) -> jax.Array:
    """``nn.gelu`` (tanh form) that keeps only its input for the backward pass and recomputes the rest.

    Same values and same gradients as ``nn.gelu``, bit for bit (the backward replays the same ops), but
    the forward pass is one fused elementwise loop instead of two, and writes no ``tanh`` residual of
    the ``[tokens, mlp]`` hidden activation: the backward reads the pre-activation it needs anyway.
    On XLA:CPU this made the ViT-Ti train step at 64 tokens 1.05–1.12× faster (BENCHMARKS.md, issue
    15); the transformer MLPs (dense, slim, LoRA, MoE experts) use it.
    """
    return nn.gelu(x)


def layer_norm(*, dtype, param_dtype, name=None, axis="embed"):
    return nn.LayerNorm(
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis,)),
        name=name,
    )


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last axis (``embed``) as a ViT plug: ``(x, ctx) -> y``."""

    scale_init: Any = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
    bias_init: Any = nn.with_logical_partitioning(nn.initializers.zeros, ("embed",))

    def __call__(self, x: jax.Array, ctx: Context | None = None) -> jax.Array:  # noqa: D102
        return super().__call__(x)


class MlpBlock(nn.Module):
    """Transformer MLP: Dense(embed→mlp) · GELU · dropout · Dense(mlp→embed); ``[B, S, D] -> [B, S, D]``."""

    mlp_dim: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, ctx: Context = Context()) -> jax.Array:
        width = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = dense(self.mlp_dim, ("embed", "mlp"), name="fc1", **kw)(x)
        h = nn.with_logical_constraint(gelu(h), ("act_batch", "act_len", "mlp"))
        h = nn.Dropout(self.dropout, deterministic=not ctx.train)(h)
        return dense(width, ("mlp", "embed"), name="fc2", **kw)(h)


def check_attention_impl(impl: str | None) -> str | None:
    """``impl`` if it is a known ``jax.nn.dot_product_attention`` implementation; else a ValueError."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"config.model.vit.attention_impl: unknown {impl!r}; choose from {list(ATTENTION_IMPLS)}")
    return impl


def attend(q: jax.Array, k: jax.Array, v: jax.Array, impl: str | None = None) -> jax.Array:
    """Softmax attention ``softmax(q·kᵀ/√h)·v`` per head: ``q [B, T, N, h]``, ``k``/``v`` ``[B, S, K, h]``.

    ``N`` query heads share ``K`` key/value heads (``N`` a multiple of ``K``: grouped-query attention,
    ``K = 1``: multi-query). Logits and softmax are float32 (``jax.nn.dot_product_attention``);
    returns ``[B, T, N, h]`` in ``v``'s dtype.
    """
    impl = check_attention_impl(impl)
    if q.dtype == jnp.float16 and impl != "cudnn" and jax.default_backend() == "cpu":
        # XLA's CPU dot has no float16 x float16 -> float32 form (the float32 logits): there, float16
        # attention runs in float32 and returns float16 (GPUs and TPUs keep the float16 inputs)
        return jax.nn.dot_product_attention(q.astype(jnp.float32), k.astype(jnp.float32),
                                            v.astype(jnp.float32), implementation=impl).astype(v.dtype)
    return jax.nn.dot_product_attention(q, k, v, implementation=impl)


class SelfAttention(nn.Module):
    """Multi-head self-attention with (embed, heads, kv) projections; ``[B, S, D] -> [B, S, D]``.

    ``head_dim`` defaults to ``D // num_heads``.
    """

    num_heads: int
    head_dim: int | None = None
    attention_impl: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, ctx: Context = Context()) -> jax.Array:
        width = x.shape[-1]
        head_dim = attention_head_dim(width, self.num_heads, self.head_dim)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q, k, v = (heads_projection(self.num_heads, head_dim, name=n, **kw)(x) for n in ("query", "key", "value"))
        out = attend(q, k, v, self.attention_impl)  # [B, S, H, h]
        return output_projection(width, name="out", **kw)(out)


def attention_head_dim(width: int, num_heads: int, head_dim: int | None = None) -> int:
    """``head_dim``, or ``width // num_heads`` when it is ``None`` (a ValueError if that does not divide)."""
    if head_dim is None and width % num_heads:
        raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
    return head_dim or width // num_heads


def heads_projection(num_heads: int, head_dim: int, *, dtype, param_dtype, name=None) -> nn.DenseGeneral:
    """A query/key/value projection ``[..., D] -> [..., H, h]`` (kernel ``(embed, heads, kv)``)."""
    return nn.DenseGeneral(
        (num_heads, head_dim),
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(default_init, ("embed", "heads", "kv")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")),
        name=name,
    )


def output_projection(width: int, *, dtype, param_dtype, name=None) -> nn.DenseGeneral:
    """The attention output projection ``[..., H, h] -> [..., D]`` (kernel ``(heads, kv, embed)``)."""
    return nn.DenseGeneral(
        width,
        axis=(-2, -1),
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(default_init, ("heads", "kv", "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )
