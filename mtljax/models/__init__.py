"""Models by name: ``config.model.name`` picks the multi-task architecture, ``config.model.backbone``
its shared trunk. ``build_model(model_config, tasks, input_shape)`` returns a Flax module whose
``apply`` gives ``(outputs_by_task, aux)``."""

from __future__ import annotations

import jax.numpy as jnp

from mtljax.models.hps import MultiTaskModel
from mtljax.models.mlp import MLP
from mtljax.models.vit import VARIANTS, ViT

MODELS = ("hps", "controllable")
BACKBONES = ("vit", "mlp")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def vit_dims(cfg) -> dict:
    """Width, depth, heads and MLP width of ``config.model.vit`` (a named variant or custom)."""
    if cfg.variant == "custom":
        return dict(width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim)
    if cfg.variant not in VARIANTS:
        raise ValueError(
            f"config.model.vit.variant: unknown {cfg.variant!r}; choose from {sorted(VARIANTS)} or 'custom'"
        )
    return dict(VARIANTS[cfg.variant])


def build_model(cfg, tasks, input_shape) -> MultiTaskModel:
    if cfg.name not in MODELS:
        raise ValueError(f"config.model.name: unknown model {cfg.name!r}; choose from {MODELS}")
    if cfg.name == "controllable":  # slimmable encoder + per-task slimmable decoders (config.model.slim)
        from mtljax.models.controllable import build_controllable

        return build_controllable(cfg, tasks, input_shape)
    if cfg.backbone not in BACKBONES:
        raise ValueError(f"config.model.backbone: unknown backbone {cfg.backbone!r}; choose from {BACKBONES}")
    for key in ("dtype", "param_dtype"):
        if cfg[key] not in DTYPES:
            raise ValueError(f"config.model.{key}: unknown dtype {cfg[key]!r}; choose from {sorted(DTYPES)}")
    kw = dict(dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype])
    grid, patch = None, 1
    if cfg.backbone == "vit":
        if len(input_shape) != 3:
            raise ValueError(f"config.model.backbone='vit' needs image inputs [H, W, C], got shape {input_shape}")
        patch = cfg.vit.patch_size
        backbone = ViT(patch_size=patch, pool=cfg.vit.pool, dropout=cfg.dropout, **vit_dims(cfg.vit), **kw)
        grid = (input_shape[0] // patch, input_shape[1] // patch)
    else:
        backbone = MLP(hidden=tuple(cfg.mlp.hidden), dropout=cfg.dropout, **kw)
    return MultiTaskModel(backbone, tuple(tasks), head_hidden=cfg.head_hidden, dense_grid=grid,
                          patch_size=patch, **kw)


__all__ = ["BACKBONES", "MLP", "MODELS", "MultiTaskModel", "ViT", "build_model", "vit_dims"]
