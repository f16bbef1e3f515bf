"""Models by name: ``config.model.name`` picks the multi-task architecture, ``config.model.backbone``
its shared trunk. ``build_model(model_config, tasks, input_shape)`` returns a Flax module whose
``apply`` gives ``(outputs_by_task, aux)``.

=============  =================================================================================
name           architecture
=============  =================================================================================
hps            hard parameter sharing: backbone ``vit`` | ``mlp`` | ``moe_vit`` (V-MoE trunk,
               shared gate) and one head per task
m3vit          M³ViT: MoE MLP every ``moe.every`` blocks, per-task or task-conditioned gates
mod_squad      Mod-Squad: MoE attention and MoE MLP, per-task gates, mutual-information loss
task_expert    TaskExpert: memorial mixture-of-experts decoding per-task features from a ViT
slim           slimmable encoder and per-task decoders, widths chosen at run time (Aich et al., 2023)
=============  =================================================================================
"""

from __future__ import annotations

from mtljax.models.hps import MultiTaskModel
from mtljax.models.layers import DTYPES
from mtljax.models.mlp import MLP
from mtljax.models.moe_vit import MoeViT
from mtljax.models.moe.task_expert import TaskExpertViT
from mtljax.models.slim import build_slim
from mtljax.models.vit import VARIANTS, ViT, vit_dims  # noqa: F401  (VARIANTS re-exported)

MODELS = ("hps", "m3vit", "mod_squad", "task_expert", "slim")
RENAMED = {"controllable": "slim"}  # old model names, refused with a one-line hint
MOE_MODELS = ("m3vit", "mod_squad")
BACKBONES = ("vit", "mlp", "moe_vit")


def moe_layers(every: int, depth: int, layers=()) -> tuple[int, ...]:
    """Blocks with an MoE layer: ``layers`` if given, else every ``every``-th block ending with the last."""
    if layers:
        return tuple(sorted(set(int(i) for i in layers)))
    if every <= 0:
        return ()
    return tuple(i for i in range(depth) if (depth - 1 - i) % every == 0)


def moe_settings(cfg, num_tasks: int, mlp_dim: int, gate: str) -> tuple:
    """``MoeMlp`` keyword arguments (as hashable pairs) from ``config.model.moe``."""
    m = cfg.moe
    return tuple(sorted(dict(
        num_experts=m.num_experts, expert_dim=m.expert_dim or max(1, mlp_dim // m.top_k), router=m.router,
        k=m.top_k, capacity_factor=m.capacity_factor, batch_priority=m.batch_priority, renormalize=m.renormalize,
        noise_std=m.noise_std, slots_per_expert=m.slots_per_expert, dispatch=m.dispatch, group_size=m.group_size,
        num_tasks=num_tasks, gate=gate, gate_zero_init=m.gate_zero_init, importance_weight=m.importance_weight,
        load_weight=m.load_weight, z_loss_weight=m.z_loss_weight, mi_weight=m.mi_weight if gate != "shared" else 0.0,
    ).items()))


def attn_moe_settings(cfg, num_tasks: int, width: int, num_heads: int) -> tuple:
    m = cfg.moe
    return tuple(sorted(dict(
        num_experts=m.attn_experts, k=m.attn_top_k or num_heads, head_dim=m.attn_head_dim or width // num_heads,
        num_tasks=num_tasks, gate="task", gate_zero_init=m.gate_zero_init, noise_std=0.0, mi_weight=m.mi_weight,
        z_loss_weight=m.z_loss_weight,
    ).items()))


def check_name(name: str) -> None:
    """Raise ``ValueError`` naming ``config.model.name`` for an unknown or renamed model."""
    if name in RENAMED:
        raise ValueError(f"config.model.name={name!r} was renamed to {RENAMED[name]!r}")
    if name not in MODELS:
        raise ValueError(f"config.model.name: unknown model {name!r}; choose from {MODELS}")


def build_model(cfg, tasks, input_shape) -> MultiTaskModel:
    check_name(cfg.name)
    if cfg.name == "slim":  # slimmable encoder + per-task slimmable decoders (config.model.slim)
        return build_slim(cfg, tasks, input_shape)
    if cfg.backbone not in BACKBONES:
        raise ValueError(f"config.model.backbone: unknown backbone {cfg.backbone!r}; choose from {BACKBONES}")
    for key in ("dtype", "param_dtype"):
        if cfg[key] not in DTYPES:
            raise ValueError(f"config.model.{key}: unknown dtype {cfg[key]!r}; choose from {sorted(DTYPES)}")
    kw = dict(dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype])
    grid, patch, task_passes = None, 1, False
    image_model = cfg.name != "hps" or cfg.backbone != "mlp"
    if image_model:
        if len(input_shape) != 3:
            raise ValueError(f"config.model.name={cfg.name!r} with a ViT needs image inputs [H, W, C], got shape {input_shape}")
        patch = cfg.vit.patch_size
        grid = (input_shape[0] // patch, input_shape[1] // patch)
        dims = vit_dims(cfg.vit)
        common = dict(patch_size=patch, pool=cfg.vit.pool, dropout=cfg.dropout, **dims, **kw)
    t = len(tasks)
    if cfg.name == "hps" and cfg.backbone == "vit":
        backbone = ViT(**common)
    elif cfg.name == "hps" and cfg.backbone == "moe_vit":
        backbone = MoeViT(moe=moe_settings(cfg, t, dims["mlp_dim"], "shared"),
                          moe_layers=moe_layers(cfg.moe.every, dims["depth"], cfg.moe.layers), **common)
    elif cfg.name in MOE_MODELS:
        gate = cfg.moe.gate if cfg.name == "m3vit" else "task"
        attn = cfg.name == "mod_squad" and cfg.moe.attn_experts > 0
        backbone = MoeViT(
            moe=moe_settings(cfg, t, dims["mlp_dim"], gate),
            moe_layers=moe_layers(cfg.moe.every, dims["depth"], cfg.moe.layers),
            attn_moe=attn_moe_settings(cfg, t, dims["width"], dims["num_heads"]) if attn else None,
            attn_moe_layers=moe_layers(cfg.moe.attn_every, dims["depth"]) if attn else (), **common)
        task_passes = backbone.task_gated
    elif cfg.name == "task_expert":
        te = cfg.task_expert
        backbone = TaskExpertViT(
            tuple(x.name for x in tasks), num_experts=te.num_experts, expert_dim=te.expert_dim or dims["width"],
            layers=moe_layers(te.every, dims["depth"], te.layers), **common)
    else:
        backbone = MLP(hidden=tuple(cfg.mlp.hidden), dropout=cfg.dropout, **kw)
    return MultiTaskModel(backbone, tuple(tasks), head_hidden=cfg.head_hidden, dense_grid=grid, patch_size=patch,
                          task_passes=task_passes, dense_upsample=cfg.dense_head == "upsample", **kw)


__all__ = ["BACKBONES", "MLP", "MODELS", "MOE_MODELS", "MoeViT", "MultiTaskModel", "TaskExpertViT", "ViT",
           "build_model", "moe_layers", "vit_dims"]
