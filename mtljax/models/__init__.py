"""Models by name: ``config.model.name`` picks the multi-task architecture, ``config.model.backbone``
its shared trunk. ``build_model(model_config, tasks, input_shape)`` returns a Flax module whose
``apply(variables, inputs, *, task=None, train, rngs)`` gives ``(outputs_by_task, aux)``.

Every ViT-based model is the one :class:`~mtljax.models.vit.ViT` with its layers plugged in per role
and block (:mod:`mtljax.models.plugs`); this module turns ``config.model`` into those plugs.

=============  =================================================================================
name           architecture
=============  =================================================================================
hps            hard parameter sharing: backbone ``vit`` | ``mlp`` | ``moe_vit`` (V-MoE trunk,
               shared gate) and one head per task
m3vit          M³ViT: MoE MLP every ``moe.every`` blocks, per-task or task-conditioned gates
mod_squad      Mod-Squad: MoE attention and MoE MLP, per-task gates, mutual-information loss
task_expert    TaskExpert: memorial mixture-of-experts decoding per-task features from a ViT's blocks
slim           slimmable encoder and per-task decoders, widths chosen at run time (Aich et al., 2023)
multi_lane     MULTI-LANE: a frozen ViT and one lane per task reading learned patch summaries
               (De Min et al., 2024; :mod:`mtljax.models.lanes`)
=============  =================================================================================

``config.model.peft.method`` adds parameter-efficient per-task modules (LoRA, bottleneck adapters,
prefix tuning, VPT, task tokens, soft injection; :mod:`mtljax.models.peft`) to the ViT of ``hps``; the
base ViT's parameters keep their paths.
"""

from __future__ import annotations

import functools

from mtljax.config import positive_int, require, section
from mtljax.models.hps import MultiTaskModel
from mtljax.models.lanes import SCOPE as LANE_SCOPE
from mtljax.models.lanes import check_multi_lane, multi_lane_vit
from mtljax.models.layers import ATTENTION_IMPLS, DTYPES
from mtljax.models.mlp import MLP
from mtljax.models.moe.attention import MoeAttention
from mtljax.models.moe.checks import check_moe, check_moe_mesh
from mtljax.models.moe.mlp import MoeMlp
from mtljax.models.moe.task_expert import TaskExpert
from mtljax.models.peft import SCOPES as PEFT_SCOPES
from mtljax.models.peft import check_peft, lora_routing, methods_of, peft_vit
from mtljax.models.plugs import BlockPlugs, Context, Encoding
from mtljax.models.slim import build_slim
from mtljax.models.slim.checks import check_slim
from mtljax.models.vit import VARIANTS, ViT, vit_dims

MODELS = ("hps", "m3vit", "mod_squad", "task_expert", "slim", "multi_lane")
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


def moe_settings(cfg, num_tasks: int, mlp_dim: int, gate: str) -> dict:
    """:class:`~mtljax.models.moe.mlp.MoeMlp` keyword arguments from ``config.model.moe``."""
    m = cfg.moe
    return dict(
        num_experts=m.num_experts, expert_dim=m.expert_dim or max(1, mlp_dim // m.top_k), router=m.router,
        k=m.top_k, capacity_factor=m.capacity_factor, batch_priority=m.batch_priority, renormalize=m.renormalize,
        noise_std=m.noise_std, slots_per_expert=m.slots_per_expert, dispatch=m.dispatch, pack_slots=m.pack_slots,
        group_size=m.group_size,
        num_tasks=num_tasks, gate=gate, gate_zero_init=m.gate_zero_init, importance_weight=m.importance_weight,
        load_weight=m.load_weight, z_loss_weight=m.z_loss_weight, mi_weight=m.mi_weight if gate != "shared" else 0.0)


def attn_moe_settings(cfg, num_tasks: int, width: int, num_heads: int) -> dict:
    """:class:`~mtljax.models.moe.attention.MoeAttention` keyword arguments from ``config.model.moe``."""
    m = cfg.moe
    return dict(
        num_experts=m.attn_experts, k=m.attn_top_k or num_heads, head_dim=m.attn_head_dim or width // num_heads,
        num_tasks=num_tasks, gate="task", gate_zero_init=m.gate_zero_init, noise_std=0.0, mi_weight=m.mi_weight,
        z_loss_weight=m.z_loss_weight, attention_impl=cfg.vit.get("attention_impl"))


def check_name(name: str) -> None:
    """A ConfigError keyed ``name`` for an unknown or renamed model."""
    require(name not in RENAMED, "name", f"{name!r} was renamed to {RENAMED.get(name)!r}")
    require(name in MODELS, "name", f"unknown model {name!r}; choose from {list(MODELS)}")


def _check_vit(v, dtype: str) -> None:
    """``config.model.vit`` (keys relative to it)."""
    require(v.variant == "custom" or v.variant in VARIANTS, "variant",
            f"unknown {v.variant!r}; choose from {sorted(VARIANTS)} or 'custom'")
    for key in ["patch_size"] + (["width", "depth", "num_heads", "mlp_dim"] if v.variant == "custom" else []):
        positive_int(v[key], key)
    if v.variant == "custom":
        require(v.width % v.num_heads == 0, "width", f"{v.width} is not divisible by num_heads={v.num_heads}")
    require(v.pool in ("gap", "cls"), "pool", f"must be 'gap' or 'cls', got {v.pool!r}")
    impl = v.get("attention_impl")
    require(impl in ATTENTION_IMPLS, "attention_impl", f"unknown {impl!r}; choose from {list(ATTENTION_IMPLS)}")
    require(impl != "cudnn" or dtype != "float32", "attention_impl",
            "'cudnn' needs config.model.dtype 'bfloat16' or 'float16' (cuDNN's fused attention has no float32 kernel)")


def check_model(cfg, tasks, input_shape) -> None:
    """Every key of ``config.model`` the model ``cfg.name`` reads, against the tasks and input shape
    (keys relative to ``config.model``)."""
    check_name(cfg.name)
    for key in ("dtype", "param_dtype"):
        require(cfg[key] in DTYPES, key, f"unknown dtype {cfg[key]!r}; choose from {sorted(DTYPES)}")
    require(0.0 <= cfg.dropout < 1.0, "dropout", f"must be in [0, 1), got {cfg.dropout}")
    vit = cfg.name != "hps" or cfg.backbone in ("vit", "moe_vit")
    if cfg.name == "slim":
        require("slim" in cfg, "slim", "is missing: config.model.name='slim' needs it (see mtljax.config.base_config)")
        with section("slim"):
            check_slim(cfg.slim)
        vit = cfg.slim.backbone == "vit"
        require(len(input_shape) == 3, "name", f"'slim' needs image inputs [H, W, C], got shape {tuple(input_shape)}")
        stride = 2 ** (len(cfg.slim.conv_channels) - 1)
        require(vit or (input_shape[0] % stride == 0 and input_shape[1] % stride == 0), "slim.conv_channels",
                f"{len(cfg.slim.conv_channels)} stages downsample by {stride}, which does not divide the "
                f"{input_shape[0]}x{input_shape[1]} images")
    else:
        require(cfg.backbone in BACKBONES, "backbone", f"unknown backbone {cfg.backbone!r}; choose from {list(BACKBONES)}")
        require(cfg.name == "hps" or cfg.backbone == "vit", "name",
                f"{cfg.name!r} is a ViT; set config.model.backbone='vit', got {cfg.backbone!r}")
    if vit:
        with section("vit"):
            _check_vit(cfg.vit, cfg.dtype)
        require(len(input_shape) == 3, "backbone", f"a ViT needs image inputs [H, W, C], got shape {tuple(input_shape)}")
        h, w, _ = input_shape
        p = cfg.vit.patch_size
        require(h % p == 0 and w % p == 0, "vit.patch_size", f"{p} does not divide the {h}x{w} images")
    elif cfg.backbone == "mlp" and cfg.name == "hps":
        require(bool(cfg.mlp.hidden) and all(isinstance(h, int) and h > 0 for h in cfg.mlp.hidden), "mlp.hidden",
                f"must be positive integers, got {tuple(cfg.mlp.hidden)}")
        require(not any(t.is_dense for t in tasks), "backbone", "'mlp' cannot serve dense (per-pixel) tasks; use 'vit'")
    require(cfg.dense_head in ("linear", "upsample"), "dense_head", f"must be 'linear' or 'upsample', got {cfg.dense_head!r}")
    if cfg.dense_head == "upsample":
        p = cfg.vit.patch_size
        require(p & (p - 1) == 0, "dense_head", f"'upsample' needs a power-of-two config.model.vit.patch_size, got {p}")
    custom = cfg.vit.variant == "custom"
    if cfg.name in MOE_MODELS or (cfg.name == "hps" and cfg.backbone == "moe_vit"):
        with section("moe"):
            check_moe(cfg.moe, cfg.name, cfg.vit.depth if custom else None, cfg.vit.num_heads if custom else None)
    if cfg.name == "task_expert":
        te = cfg.task_expert
        with section("task_expert"):
            positive_int(te.num_experts, "num_experts")
            require(isinstance(te.expert_dim, int) and te.expert_dim >= 0, "expert_dim",
                    f"must be an integer >= 0, got {te.expert_dim!r}")
            if custom:
                require(all(isinstance(i, int) and 0 <= i < cfg.vit.depth for i in te.layers), "layers",
                        f"{tuple(te.layers)} must index blocks 0..{cfg.vit.depth - 1}")
    if cfg.name == "multi_lane":
        require("multi_lane" in cfg, "multi_lane", "is missing: config.model.name='multi_lane' needs it "
                                                   "(see mtljax.config.base_config)")
        with section("multi_lane"):
            check_multi_lane(cfg.multi_lane, vit_dims(cfg.vit)["depth"])
    if "peft" in cfg:
        with section("peft"):
            check_peft(cfg.peft, cfg.name, cfg.get("backbone"), vit_dims(cfg.vit) if vit else None, len(tasks))


def check_mesh(cfg, sizes: dict, per_device: dict) -> None:
    """What the model needs of the mesh ``sizes`` (expert parallelism, MoE routing groups);
    ``per_device``: ``{data batch key: examples per device}``. Keys relative to ``config.model``."""
    if cfg.name in MOE_MODELS or (cfg.name == "hps" and cfg.backbone == "moe_vit"):
        with section("moe"):
            check_moe_mesh(cfg.moe, sizes, per_device)


def moe_vit(cfg, num_tasks: int, common: dict) -> tuple[ViT, bool, int]:
    """The MoE ViT of ``hps`` + ``moe_vit`` (shared gate), ``m3vit`` or ``mod_squad``.

    Returns ``(vit, task_gated, routing_group)``: whether any gate depends on the task (then every task
    needs its own backbone pass) and the examples per routing group of the MoE MLPs.
    """
    depth = common["depth"]
    gate = "shared" if cfg.name == "hps" else (cfg.moe.gate if cfg.name == "m3vit" else "task")
    mlp_blocks = moe_layers(cfg.moe.every, depth, cfg.moe.layers)
    attn = cfg.name == "mod_squad" and cfg.moe.attn_experts > 0
    attn_blocks = moe_layers(cfg.moe.attn_every, depth) if attn else ()
    # V-MoE balances the dense softmax; M³ViT (and Shazeer et al.) the top-k gates the tokens are mixed with
    importance = "dense" if gate == "shared" else "sparse"
    mlp = functools.partial(MoeMlp, importance=importance, **moe_settings(cfg, num_tasks, common["mlp_dim"], gate))
    attention = (functools.partial(MoeAttention, **attn_moe_settings(cfg, num_tasks, common["width"],
                                                                      common["num_heads"])) if attn else None)
    blocks = tuple(BlockPlugs(attention=attention if i in attn_blocks else None, mlp=mlp if i in mlp_blocks else None)
                   for i in range(depth))
    task_gated = (bool(mlp_blocks) and gate != "shared") or bool(attn_blocks)
    group = int(cfg.moe.group_size) if mlp_blocks else 1
    # one dropout module for both residual branches, as the MoE ViT had (reproducible runs with dropout)
    return ViT(blocks=blocks, one_residual_dropout=True, **common), task_gated, group


def build_model(cfg, tasks, input_shape) -> MultiTaskModel:
    """The multi-task model of ``config.model`` for ``tasks`` and inputs ``[B, *input_shape]``.

    Every key it reads is checked first: a mistake raises :class:`~mtljax.config.ConfigError`
    ``config.model.<key>: ...``.
    """
    with section("model"):
        check_model(cfg, tasks, input_shape)
    if cfg.name == "slim":  # slimmable encoder + per-task slimmable decoders (config.model.slim)
        return build_slim(cfg, tasks, input_shape)
    kw = dict(dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype])
    grid, patch, task_passes, group, scopes = None, 1, False, 1, ()
    image_model = cfg.name != "hps" or cfg.backbone != "mlp"
    if image_model:
        patch = cfg.vit.patch_size
        grid = (input_shape[0] // patch, input_shape[1] // patch)
        dims = vit_dims(cfg.vit)
        common = dict(patch_size=patch, pool=cfg.vit.pool, dropout=cfg.dropout,
                      attention_impl=cfg.vit.get("attention_impl"), **dims, **kw)
    if cfg.name == "hps" and cfg.backbone == "vit":
        backbone = ViT(**common)
        if "peft" in cfg and methods_of(cfg.peft.method):
            # per-task modules: every task its own backbone pass (or one pass given task_ids), except task tokens
            backbone, task_passes = peft_vit(cfg.peft, [t.name for t in tasks], **common)
            # LoRA routed by PHATGOOSE serves every task: shared, not task-specific
            routed = lora_routing(cfg.peft)[0] == "phatgoose"
            scopes = tuple(s for s in PEFT_SCOPES if not (routed and s == "lora"))
    elif cfg.name in MOE_MODELS or (cfg.name == "hps" and cfg.backbone == "moe_vit"):
        backbone, task_passes, group = moe_vit(cfg, len(tasks), common)
    elif cfg.name == "multi_lane":  # one pass for all lanes (no task ids); lane parameters are task-specific
        backbone, scopes = multi_lane_vit(cfg.multi_lane, [t.name for t in tasks], **common), (LANE_SCOPE,)
    elif cfg.name == "task_expert":
        te = cfg.task_expert
        layers = moe_layers(te.every, dims["depth"], te.layers)
        vit = ViT(final_norm=False, taps=tuple(sorted(set(layers))) or (dims["depth"] - 1,), **common)
        backbone = TaskExpert(vit, tuple(x.name for x in tasks), num_experts=te.num_experts,
                              expert_dim=te.expert_dim or dims["width"], layers=layers, **kw)
    else:
        backbone = MLP(hidden=tuple(cfg.mlp.hidden), dropout=cfg.dropout, **kw)
    return MultiTaskModel(backbone, tuple(tasks), head_hidden=cfg.head_hidden, dense_grid=grid, patch_size=patch,
                          task_passes=task_passes, routing_group=group, dense_upsample=cfg.dense_head == "upsample",
                          specific_scopes=scopes, **kw)


__all__ = ["check_mesh", "check_model", "BACKBONES", "BlockPlugs", "Context", "DTYPES", "Encoding", "MLP", "MODELS", "MOE_MODELS",
           "MultiTaskModel", "TaskExpert", "VARIANTS", "ViT", "build_model", "check_name", "moe_layers", "vit_dims"]
