"""Vision Transformer backbone (Dosovitskiy et al., 2021), pre-LayerNorm, for any patch size.

Variants follow the usual table (width, depth, heads, MLP width): Ti (192, 12, 3, 768),
S (384, 12, 6, 1536), B (768, 12, 12, 3072), L (1024, 24, 16, 4096); ``variant='custom'`` takes the
four numbers from the config (tiny models in tests). Images ``[B, H, W, C]`` are cut into non-overlapping
``patch_size²`` patches (H and W must be multiples), linearly embedded, given learned position
embeddings and an optional class token. Returns the pooled representation ``[B, width]`` (``pool='cls'``
or ``'gap'``) and the patch tokens ``[B, N, width]`` (for dense heads).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mtljax.models.layers import Dtype, MlpBlock, SelfAttention, dense, layer_norm

VARIANTS = {
    "Ti": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    "S": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "L": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
}


class EncoderBlock(nn.Module):
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = SelfAttention(self.num_heads, name="attn", **kw)(layer_norm(name="ln1", **kw)(x))
        x = x + nn.Dropout(self.dropout, deterministic=not train)(h)
        h = MlpBlock(self.mlp_dim, self.dropout, name="mlp", **kw)(layer_norm(name="ln2", **kw)(x), train=train)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))


class ViT(nn.Module):
    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    pool: str = "gap"
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x, n = embed_patches(self, images, self.patch_size, self.width, self.pool, **kw)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout, name=f"block{i}", **kw)(x, train=train)
        return pool_tokens(self, x, n, self.pool, **kw)


def embed_patches(module: nn.Module, images, patch_size: int, width: int, pool: str, *, dtype, param_dtype):
    """Patch embedding, optional class token and position embeddings, created in ``module``'s scope.

    Returns ``(tokens [B, N(+1), width], N)`` where ``N`` is the number of patches.
    """
    b, h, w, c = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of patch_size {p}")
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, (h // p) * (w // p), p * p * c).astype(dtype)
    x = dense(width, ("patch", "embed"), name="embedding", dtype=dtype, param_dtype=param_dtype)(x)
    n = x.shape[1]
    if pool == "cls":
        cls = module.param("cls", nn.with_logical_partitioning(nn.initializers.zeros, (None, None, "embed")),
                           (1, 1, width), param_dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, width)).astype(dtype), x], axis=1)
    pos = module.param(
        "pos_embedding",
        nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "tokens", "embed")),
        (1, x.shape[1], width),
        param_dtype,
    )
    return nn.with_logical_constraint(x + pos.astype(dtype), ("act_batch", "act_len", "act_embed")), n


def pool_tokens(module: nn.Module, x, n: int, pool: str, *, dtype, param_dtype):
    """Final LayerNorm, then ``(pooled [B, width], patch tokens [B, N, width])``."""
    x = layer_norm(name="ln_final", dtype=dtype, param_dtype=param_dtype)(x)
    tokens = x[:, -n:]
    return (x[:, 0] if pool == "cls" else jnp.mean(tokens, axis=1)), tokens


def vit_dims(cfg) -> dict:
    """Width, depth, heads and MLP width of ``config.model.vit`` (a named variant or custom)."""
    if cfg.variant == "custom":
        return dict(width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim)
    if cfg.variant not in VARIANTS:
        raise ValueError(
            f"config.model.vit.variant: unknown {cfg.variant!r}; choose from {sorted(VARIANTS)} or 'custom'"
        )
    return dict(VARIANTS[cfg.variant])
