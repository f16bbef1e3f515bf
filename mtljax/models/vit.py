"""The Vision Transformer (Dosovitskiy et al., 2021), pre-LayerNorm, with pluggable layers per block.

One ViT serves every ViT family of mtljax: the dense ViT, V-MoE / M³ViT (MoE MLPs), Mod-Squad (MoE
attention too), the slim ViT (slimmable attention, MLP and norms) and TaskExpert (memorial MoEs on
block outputs). Each block's layers are plugs (:mod:`mtljax.models.plugs`): ``blocks`` gives one
:class:`~mtljax.models.plugs.BlockPlugs` for every block or one per block; roles left ``None`` are the
dense defaults (:class:`~mtljax.models.layers.SelfAttention` with ``num_heads``,
:class:`~mtljax.models.layers.MlpBlock` with ``mlp_dim``, the ViT's ``norm``).

``ViT(...)(images [B, H, W, C], ctx) -> Encoding(pooled [B, D], tokens [B, N, D], aux, taps, leading)``:
images are cut into non-overlapping ``patch_size²`` patches (H and W must be multiples), linearly
embedded, given an optional class token (``pool='cls'``) and learned position embeddings, then the
optional ``prompt`` plug (prompt / task tokens, inserted before the patch tokens), ``depth`` blocks and
the final norm (``final_norm=False``: none, and no ``ln_final`` parameters). ``pooled`` is the class
token or the mean of the ``N`` patch tokens (the last ``N`` tokens), ``tokens`` the patch tokens (for
dense heads), ``leading`` the final states before them (class, prompt, task tokens), ``aux`` the
merged aux of every layer (MoE balancing losses, routing metrics) and ``taps`` the residual stream
after each block in ``taps`` (read by TaskExpert's memorial MoEs).

Variants follow the usual table (width, depth, heads, MLP width): Ti (192, 12, 3, 768),
S (384, 12, 6, 1536), B (768, 12, 12, 3072), L (1024, 24, 16, 4096); ``variant='custom'`` takes the
four numbers from the config (tiny models in tests).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.models.layers import Dtype, LayerNorm, MlpBlock, SelfAttention, dense
from mtljax.models.plugs import BlockPlugs, Context, Encoding, Factory, merge_aux, split_aux

VARIANTS = {
    "Ti": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    "S": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "L": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
}
_ACT = ("act_batch", "act_len", "act_embed")


class Block(nn.Module):
    """One pre-norm transformer block over resolved plugs (every role a factory, adapters optional).

    ``one_residual_dropout``: one dropout module (one random stream) for both residual branches, as the
    MoE ViTs had before the plug redesign, so their training runs with dropout stay reproducible; the
    other families use one module per branch.
    """

    plugs: BlockPlugs
    dropout: float = 0.0
    one_residual_dropout: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, ctx: Context) -> tuple[jax.Array, dict]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        p = self.plugs
        auxes = []

        def run(factory, name, h):
            h, aux = split_aux(factory(name=name, **kw)(h, ctx))
            auxes.append(aux)
            return h

        if p.prompt is not None:
            x = run(p.prompt, "prompt", x)
        drop_attn = nn.Dropout(self.dropout, deterministic=not ctx.train)
        h = run(p.attention, "attn", run(p.norm, "ln1", x))
        if p.attention_adapter is not None:
            h = run(p.attention_adapter, "attn_adapter", h)
        x = x + drop_attn(h)
        h = run(p.mlp, "mlp", run(p.norm, "ln2", x))
        if p.mlp_adapter is not None:
            h = run(p.mlp_adapter, "mlp_adapter", h)
        drop_mlp = drop_attn if self.one_residual_dropout else nn.Dropout(self.dropout, deterministic=not ctx.train)
        x = x + drop_mlp(h)
        return nn.with_logical_constraint(x, _ACT), merge_aux(*auxes)


class ViT(nn.Module):
    """The ViT backbone; see the module docstring. ``head_dim`` defaults to ``width // num_heads``."""

    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    pool: str = "gap"
    dropout: float = 0.0
    blocks: BlockPlugs | Sequence[BlockPlugs] = BlockPlugs()
    norm: Factory | None = None  # default norm of every block and the final norm (None: LayerNorm)
    final_norm: bool = True
    prompt: Factory | None = None  # after the position embeddings: (x [B, S, D], ctx) -> [B, S', D]
    taps: Sequence[int] = ()
    head_dim: int | None = None
    attention_impl: str | None = None  # default attention: jax.nn.dot_product_attention(implementation=)
    one_residual_dropout: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def stride(self) -> int:
        """Pixels per token side (the patch size)."""
        return self.patch_size

    def block_plugs(self, i: int) -> BlockPlugs:
        """Block ``i``'s plugs with every default role filled in (adapters and prompt stay optional)."""
        if isinstance(self.blocks, BlockPlugs):
            plugs = self.blocks
        else:
            if len(self.blocks) != self.depth:
                raise ValueError(f"ViT: {len(self.blocks)} block plug sets for depth {self.depth}")
            plugs = self.blocks[i]
        return dataclasses.replace(
            plugs,
            attention=plugs.attention or functools.partial(SelfAttention, self.num_heads, self.head_dim,
                                                           self.attention_impl),
            mlp=plugs.mlp or functools.partial(MlpBlock, self.mlp_dim, self.dropout),
            norm=plugs.norm or self.norm or LayerNorm)

    @nn.compact
    def __call__(self, images: jax.Array, ctx: Context = Context()) -> Encoding:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x, n = self._embed(images)
        if self.prompt is not None:
            x, _ = split_aux(self.prompt(name="prompt", **kw)(x, ctx))
        x = nn.Dropout(self.dropout, deterministic=not ctx.train)(x)
        taps, auxes = {}, []
        for i in range(self.depth):
            block = Block(self.block_plugs(i), self.dropout, self.one_residual_dropout, name=f"block{i}", **kw)
            x, aux = block(x, ctx)
            auxes.append(aux)
            if i in self.taps:
                taps[i] = x
        if self.final_norm:
            x = (self.norm or LayerNorm)(name="ln_final", **kw)(x, ctx)
        tokens = x[:, -n:]
        pooled = x[:, 0] if self.pool == "cls" else jnp.mean(tokens, axis=1)
        return Encoding(pooled, tokens, merge_aux(*auxes), taps, x[:, :x.shape[1] - n])

    def _embed(self, images: jax.Array) -> tuple[jax.Array, int]:
        """Patch embedding, optional class token and position embeddings: ``(tokens [B, N(+1), D], N)``."""
        b, h, w, c = images.shape
        p, d = self.patch_size, self.width
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of patch_size {p}")
        x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, (h // p) * (w // p), p * p * c).astype(self.dtype)
        x = dense(d, ("patch", "embed"), name="embedding", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        n = x.shape[1]
        if self.pool == "cls":
            cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.zeros, (None, None, "embed")),
                             (1, 1, d), self.param_dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(self.dtype), x], axis=1)
        pos = self.param("pos_embedding",
                         nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "tokens", "embed")),
                         (1, x.shape[1], d), self.param_dtype)
        return nn.with_logical_constraint(x + pos.astype(self.dtype), _ACT), n


def vit_dims(cfg) -> dict:
    """Width, depth, heads and MLP width of ``config.model.vit`` (a named variant or custom)."""
    if cfg.variant == "custom":
        return dict(width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim)
    if cfg.variant not in VARIANTS:
        raise ValueError(
            f"config.model.vit.variant: unknown {cfg.variant!r}; choose from {sorted(VARIANTS)} or 'custom'"
        )
    return dict(VARIANTS[cfg.variant])
