"""The base experiment config and its validation.

``base_config()`` is the default experiment (HPS ViT on multi-digits); files in ``configs/`` start from
it and change what they need. ``validate(config)`` checks everything that can be checked without
compiling anything and raises :class:`ConfigError` with one line naming the offending key.
"""

from __future__ import annotations

import os

import ml_collections as mlc


class ConfigError(ValueError):
    """A configuration mistake, reported as one line naming the config key."""


def base_config() -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.seed = 0
    c.workdir = "runs/default"

    c.data = mlc.ConfigDict()
    c.data.name = "multi_digits"
    c.data.batch_size = 128  # global batch
    c.data.eval_batch_size = 256
    c.data.tasks = ()  # subset of the dataset's tasks; empty = all
    c.data.prefetch = 2
    c.data.data_dir = ""  # for tfds datasets
    c.data.seed = 0  # seed of generated datasets (the training order uses config.seed)
    # multi_digits
    c.data.num_train = 20_000
    c.data.num_test = 4_000
    c.data.image_size = 16
    c.data.jitter = 3
    c.data.test_fraction = 0.3
    # scenes
    c.data.max_objects = 4

    c.model = mlc.ConfigDict()
    c.model.name = "hps"
    c.model.backbone = "vit"
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"
    c.model.dropout = 0.0
    c.model.head_hidden = 0
    c.model.dense_head = "linear"  # dense tasks: linear (unpatchify each token) | upsample (conv, 2x stages)
    c.model.vit = mlc.ConfigDict(
        dict(variant="custom", patch_size=4, pool="gap", width=64, depth=4, num_heads=4, mlp_dim=128,
             # jax.nn.dot_product_attention implementation: None (JAX chooses) | xla | cudnn (NVIDIA GPUs,
             # needs model.dtype bfloat16 or float16)
             attention_impl=mlc.FieldReference(None, field_type=str))
    )
    c.model.mlp = mlc.ConfigDict(dict(hidden=(256, 256)))
    # mixture of experts (model.name = m3vit | mod_squad, or backbone = moe_vit); see mtljax.models.moe
    c.model.moe = mlc.ConfigDict(dict(
        num_experts=8, top_k=2, expert_dim=0,  # expert_dim 0 = mlp_dim // top_k (active width of the dense MLP)
        router="tokens_choose",  # tokens_choose | experts_choose | soft
        capacity_factor=1.25, batch_priority=True, renormalize=False, slots_per_expert=1,
        noise_std=1.0,  # gate noise std in training = noise_std / num_experts
        dispatch="gather",  # gather | einsum (one-hot, TPU) | ragged (dropless, jax.lax.ragged_dot, no expert sharding)
        group_size=1,  # examples per routing group
        gate="task",  # m3vit: task | task_conditioned (hps + moe_vit: always shared)
        gate_zero_init=False,
        every=2, layers=(),  # MoE MLP in every `every`-th block ending with the last, or these blocks
        importance_weight=0.01, load_weight=0.01, z_loss_weight=0.0, mi_weight=0.0,
        attn_experts=0, attn_top_k=0, attn_head_dim=0, attn_every=1,  # mod_squad: MoE attention
    ))
    c.model.task_expert = mlc.ConfigDict(dict(num_experts=4, expert_dim=0, every=2, layers=()))

    c.optim = mlc.ConfigDict()
    c.optim.name = "adamw"
    c.optim.learning_rate = 3e-3
    c.optim.schedule = "cosine"  # cosine | constant
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 1e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.grad_clip = 1.0  # global norm; 0 disables
    c.optim.task_weights = mlc.ConfigDict()  # {task: weight}; missing tasks weigh 1
    c.optim.method = "equal"  # multi-task method: see mtljax.optim.METHODS
    c.optim.method_kwargs = mlc.ConfigDict()  # the method's hyperparameters, e.g. {'c': 0.4}
    c.optim.level = "param"  # param | gramian | rep (where per-task gradients are taken)
    c.optim.chunk_size = 0  # tasks per batched pullback; 0 = all at once
    c.optim.head_grads = "task"  # task | weighted
    c.optim.sam = "none"  # none | sam (Foret et al.) | flat (task-based flat regions, Phan et al.)
    c.optim.sam_rho = 0.05
    c.optim.sam_adaptive = False  # ASAM-style perturbation for sam='flat'
    c.optim.rep_mtl = False  # add the Rep-MTL saliency regulariser (Wang et al., 2025)
    c.optim.rep_mtl_kwargs = mlc.ConfigDict(dict(lambda_entropy=0.9, lambda_align=0.9, temperature=0.1))

    c.train = mlc.ConfigDict()
    c.train.steps = 1500
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.eval_max_examples = 0  # 0 = the whole split
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.progress = True

    c.mesh = mlc.ConfigDict()
    c.mesh.shape = mlc.ConfigDict({"data": -1, "expert": 1, "model": 1})
    c.mesh.rules = ()  # [[logical, mesh_axis], ...]; empty = mtljax.parallel.rules.DEFAULT_RULES

    c.baselines = mlc.ConfigDict()
    c.baselines.train = False  # train one single-task model per task first, then report Δm
    c.baselines.file = ""  # JSON {task: {metric: value}} of single-task results
    return c


def use_dataset(c: mlc.ConfigDict, name: str) -> mlc.ConfigDict:
    """Point a config at ``digits`` (multi-digits, the default) or ``scenes`` (dense segmentation, depth,
    edges on generated 32×32 scenes), with the sizes the model configs in ``configs/`` use."""
    if name in ("digits", "multi_digits"):
        return c
    if name == "scenes":
        c.data.name = "scenes"
        c.data.image_size = 32
        c.data.num_train, c.data.num_test = 10_000, 2_000
        c.data.batch_size = 32
        c.train.steps = 1500
        return c
    raise ValueError(f"config argument: unknown dataset {name!r}; choose 'digits' or 'scenes'")


def _positive(config, key: str):
    value = config
    for part in key.split("."):
        value = value[part]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"config.{key} must be a positive integer, got {value!r}")


def validate(config, num_devices: int | None = None) -> None:
    """Check a config before anything is built or compiled. Raises ConfigError (one line)."""
    from mtljax.data import DATASETS
    from mtljax.models import BACKBONES, DTYPES, MOE_MODELS, check_name
    from mtljax.models.layers import ATTENTION_IMPLS
    from mtljax.models.vit import VARIANTS
    from mtljax.parallel.mesh import resolve_shape
    from mtljax.train.optimizer import OPTIMIZERS, SCHEDULES

    for key in ("data.batch_size", "data.eval_batch_size", "train.steps", "train.log_every",
                "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints"):
        _positive(config, key)
    if config.data.name not in DATASETS:
        raise ConfigError(f"config.data.name: unknown dataset {config.data.name!r}; choose from {sorted(DATASETS)}")
    m = config.model
    try:
        check_name(m.name)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if m.backbone not in BACKBONES:
        raise ConfigError(f"config.model.backbone: unknown backbone {m.backbone!r}; choose from {list(BACKBONES)}")
    for key in ("dtype", "param_dtype"):
        if m[key] not in DTYPES:
            raise ConfigError(f"config.model.{key}: unknown dtype {m[key]!r}; choose from {sorted(DTYPES)}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"config.model.dropout must be in [0, 1), got {m.dropout}")
    if m.name == "slim":  # slimmable encoder-decoders: the config.model.slim section
        from mtljax.slim.config import validate_slim

        validate_slim(config)
    if m.backbone in ("vit", "moe_vit"):
        v = m.vit
        if v.variant != "custom" and v.variant not in VARIANTS:
            raise ConfigError(f"config.model.vit.variant: unknown {v.variant!r}; choose from {sorted(VARIANTS)} or 'custom'")
        keys = ["patch_size"] + (["width", "depth", "num_heads", "mlp_dim"] if v.variant == "custom" else [])
        for key in keys:
            _positive(config, f"model.vit.{key}")
        if v.variant == "custom" and v.width % v.num_heads:
            raise ConfigError(f"config.model.vit.width={v.width} is not divisible by config.model.vit.num_heads={v.num_heads}")
        if v.pool not in ("gap", "cls"):
            raise ConfigError(f"config.model.vit.pool must be 'gap' or 'cls', got {v.pool!r}")
        if v.get("attention_impl") not in ATTENTION_IMPLS:
            raise ConfigError(f"config.model.vit.attention_impl: unknown {v.attention_impl!r}; choose from "
                              f"{list(ATTENTION_IMPLS)}")
        if v.get("attention_impl") == "cudnn" and m.dtype == "float32":
            raise ConfigError("config.model.vit.attention_impl='cudnn' needs config.model.dtype 'bfloat16' or "
                              "'float16' (cuDNN's fused attention has no float32 kernel)")
    if m.dense_head not in ("linear", "upsample"):
        raise ConfigError(f"config.model.dense_head must be 'linear' or 'upsample', got {m.dense_head!r}")
    if m.dense_head == "upsample" and m.vit.patch_size & (m.vit.patch_size - 1):
        raise ConfigError(f"config.model.dense_head='upsample' needs a power-of-two config.model.vit.patch_size, "
                          f"got {m.vit.patch_size}")
    if m.name in MOE_MODELS or m.backbone == "moe_vit":
        _validate_moe(config)
    if m.name == "task_expert":
        te = m.task_expert
        for key in ("num_experts",):
            _positive(config, f"model.task_expert.{key}")
        if not isinstance(te.expert_dim, int) or te.expert_dim < 0:
            raise ConfigError(f"config.model.task_expert.expert_dim must be an integer >= 0, got {te.expert_dim!r}")
    if m.name in ("m3vit", "mod_squad", "task_expert") and m.backbone != "vit":
        raise ConfigError(f"config.model.name={m.name!r} is a ViT; set config.model.backbone='vit', got {m.backbone!r}")
    if m.backbone == "mlp":
        if not m.mlp.hidden or any((not isinstance(h, int)) or h <= 0 for h in m.mlp.hidden):
            raise ConfigError(f"config.model.mlp.hidden must be positive integers, got {tuple(m.mlp.hidden)}")
    o = config.optim
    if o.name not in OPTIMIZERS:
        raise ConfigError(f"config.optim.name: unknown optimizer {o.name!r}; choose from {sorted(OPTIMIZERS)}")
    if o.schedule not in SCHEDULES:
        raise ConfigError(f"config.optim.schedule: unknown schedule {o.schedule!r}; choose from {sorted(SCHEDULES)}")
    if not o.learning_rate > 0:
        raise ConfigError(f"config.optim.learning_rate must be > 0, got {o.learning_rate}")
    from mtljax.optim import METHODS
    from mtljax.train.step import HEAD_GRADS, LEVELS

    if o.method not in METHODS:
        raise ConfigError(f"config.optim.method: unknown method {o.method!r}; choose from {sorted(METHODS)}")
    if o.level not in LEVELS:
        raise ConfigError(f"config.optim.level: unknown level {o.level!r}; choose from {list(LEVELS)}")
    if o.head_grads not in HEAD_GRADS:
        raise ConfigError(f"config.optim.head_grads: unknown value {o.head_grads!r}; choose from {list(HEAD_GRADS)}")
    from mtljax.train.step import SAM_MODES

    if o.sam not in SAM_MODES:
        raise ConfigError(f"config.optim.sam: unknown mode {o.sam!r}; choose from {list(SAM_MODES)}")
    if o.sam != "none" and not o.sam_rho > 0:
        raise ConfigError(f"config.optim.sam_rho must be > 0 when config.optim.sam={o.sam!r}, got {o.sam_rho}")
    if o.sam == "flat" and o.level != "param":
        raise ConfigError(f"config.optim.level={o.level!r}: config.optim.sam='flat' needs level 'param'")
    for key, value in o.rep_mtl_kwargs.items():
        if key in ("lambda_entropy", "lambda_align") and not value >= 0:
            raise ConfigError(f"config.optim.rep_mtl_kwargs.{key} must be >= 0, got {value}")
        if key == "temperature" and not value > 0:
            raise ConfigError(f"config.optim.rep_mtl_kwargs.temperature must be > 0, got {value}")
    if m.name in ("m3vit", "mod_squad", "task_expert") and (o.level == "rep" or o.rep_mtl):
        key = "config.optim.level='rep'" if o.level == "rep" else "config.optim.rep_mtl"
        raise ConfigError(f"{key} needs one shared representation, but config.model.name={m.name!r} gives every "
                          "task its own; use level 'param' or 'gramian'")
    if not isinstance(o.chunk_size, int) or o.chunk_size < 0:
        raise ConfigError(f"config.optim.chunk_size must be an integer >= 0, got {o.chunk_size!r}")
    for name, w in o.task_weights.items():
        if not w >= 0:
            raise ConfigError(f"config.optim.task_weights.{name} must be >= 0, got {w}")

    import jax

    from mtljax.parallel.rules import rules_from_config

    n = jax.device_count() if num_devices is None else num_devices
    try:
        sizes = resolve_shape(dict(config.mesh.shape), n)
        rules = rules_from_config(config.mesh.rules)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    shards = 1
    batch_axes = dict(rules).get("act_batch")
    for a in (batch_axes,) if isinstance(batch_axes, str) else (batch_axes or ()):
        shards *= sizes.get(a, 1)
    for key in ("batch_size", "eval_batch_size"):
        if config.data[key] % shards:
            raise ConfigError(
                f"config.data.{key}={config.data[key]} is not divisible by the {shards} batch shards "
                f"of config.mesh.shape={sizes}"
            )
    if m.name in MOE_MODELS or m.backbone == "moe_vit":
        _validate_moe_mesh(config, sizes, shards)
    check_workdir(config.workdir)


def _validate_moe(config) -> None:
    from mtljax.models.moe import DISPATCH, GATES, ROUTERS

    e = config.model.moe
    for key in ("num_experts", "top_k", "group_size", "slots_per_expert"):
        _positive(config, f"model.moe.{key}")
    if e.router not in ROUTERS:
        raise ConfigError(f"config.model.moe.router: unknown router {e.router!r}; choose from {list(ROUTERS)}")
    if e.dispatch not in DISPATCH:
        raise ConfigError(f"config.model.moe.dispatch: unknown {e.dispatch!r}; choose from {list(DISPATCH)}")
    if e.gate not in GATES:
        raise ConfigError(f"config.model.moe.gate: unknown gate {e.gate!r}; choose from {list(GATES)}")
    if config.model.name == "m3vit" and e.gate == "shared":
        raise ConfigError("config.model.moe.gate='shared' is not M³ViT; use 'task' or 'task_conditioned' "
                          "(or config.model.name='hps' with config.model.backbone='moe_vit')")
    if e.top_k > e.num_experts:
        raise ConfigError(f"config.model.moe.top_k={e.top_k} is larger than config.model.moe.num_experts={e.num_experts}")
    if not e.capacity_factor > 0:
        raise ConfigError(f"config.model.moe.capacity_factor must be > 0, got {e.capacity_factor}")
    if e.dispatch == "ragged" and e.router != "tokens_choose":
        raise ConfigError(f"config.model.moe.dispatch='ragged' (dropless) needs router 'tokens_choose', got {e.router!r}")
    if not isinstance(e.expert_dim, int) or e.expert_dim < 0:
        raise ConfigError(f"config.model.moe.expert_dim must be an integer >= 0, got {e.expert_dim!r}")
    for key in ("importance_weight", "load_weight", "z_loss_weight", "mi_weight", "noise_std"):
        if not e[key] >= 0:
            raise ConfigError(f"config.model.moe.{key} must be >= 0, got {e[key]}")
    depth = config.model.vit.depth if config.model.vit.variant == "custom" else None
    if depth is not None and any((not isinstance(i, int)) or not 0 <= i < depth for i in e.layers):
        raise ConfigError(f"config.model.moe.layers={tuple(e.layers)} must index blocks 0..{depth - 1}")
    if config.model.name == "mod_squad":
        if e.attn_experts < 0 or e.attn_top_k < 0:
            raise ConfigError("config.model.moe.attn_experts and attn_top_k must be >= 0")
        heads = config.model.vit.num_heads if config.model.vit.variant == "custom" else None
        k = e.attn_top_k or heads
        if e.attn_experts and k is not None and k > e.attn_experts:
            raise ConfigError(f"config.model.moe.attn_top_k={k} is larger than config.model.moe.attn_experts={e.attn_experts}")


def _validate_moe_mesh(config, sizes: dict, shards: int) -> None:
    e = config.model.moe
    n_exp = sizes.get("expert", 1)
    if e.num_experts % n_exp:
        raise ConfigError(f"config.model.moe.num_experts={e.num_experts} is not divisible by "
                          f"config.mesh.shape.expert={n_exp}")
    if e.dispatch == "ragged" and (n_exp > 1 or sizes.get("model", 1) > 1):
        raise ConfigError("config.model.moe.dispatch='ragged' keeps experts whole on every device; use 'einsum' "
                          "with config.mesh.shape.expert or .model > 1")
    for key in ("batch_size", "eval_batch_size"):
        if (config.data[key] // shards) % e.group_size:
            raise ConfigError(f"config.model.moe.group_size={e.group_size} does not divide the per-device batch "
                              f"of config.data.{key}={config.data[key]} over {shards} shards")


def check_workdir(workdir: str) -> None:
    if not workdir:
        raise ConfigError("config.workdir is empty")
    if "://" in workdir:  # remote storage (gs://...): checked by orbax when it writes
        return
    path = os.path.abspath(workdir)
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"config.workdir={workdir!r} is not writable ({probe} is not a writable directory)")
