"""Small Flax building blocks with logical axis names on every parameter.

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

Dtype = Any
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}  # config names
default_init = nn.initializers.xavier_uniform()


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


def layer_norm(*, dtype, param_dtype, name=None, axis="embed"):
    return nn.LayerNorm(
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis,)),
        name=name,
    )


class MlpBlock(nn.Module):
    """Transformer MLP: Dense(embed→mlp) · GELU · Dense(mlp→embed)."""

    mlp_dim: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        width = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = dense(self.mlp_dim, ("embed", "mlp"), name="fc1", **kw)(x)
        h = nn.with_logical_constraint(nn.gelu(h), ("act_batch", "act_len", "mlp"))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return dense(width, ("mlp", "embed"), name="fc2", **kw)(h)


class SelfAttention(nn.Module):
    """Multi-head self-attention with (embed, heads, kv) projections."""

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads

        def proj(name):
            return nn.DenseGeneral(
                (self.num_heads, head_dim),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=nn.with_logical_partitioning(default_init, ("embed", "heads", "kv")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")),
                name=name,
            )(x)

        q, k, v = proj("query"), proj("key"), proj("value")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return nn.DenseGeneral(
            width,
            axis=(-2, -1),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(default_init, ("heads", "kv", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="out",
        )(out)
