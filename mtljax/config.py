"""The base experiment config and its validation.

``base_config()`` is the default experiment (HPS ViT on multi-digits); files in ``configs/`` start from
it and change what they need. ``validate(config)`` checks everything that can be checked without
compiling anything and raises :class:`ConfigError` with one line naming the offending key.
"""

from __future__ import annotations

import contextlib
import copy
import os

import ml_collections as mlc


class ConfigError(ValueError):
    """A configuration mistake, reported as one line naming the config key.

    Builders check their own arguments and raise ``ConfigError(message, key="num_experts")`` with the
    key relative to the config section they were given; :func:`section` prefixes the key on the way
    up, so the user reads ``config.model.moe.num_experts: <message>``. Without a key the message is
    shown as it is.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.message, self.key = message, key

    def __str__(self) -> str:
        return f"config.{self.key}: {self.message}" if self.key else self.message

    def within(self, prefix: str) -> "ConfigError":
        """The same error, its key read inside the config section ``prefix``."""
        if self.key is None:
            return self
        err = copy.copy(self)
        err.key = f"{prefix}.{self.key}" if self.key else prefix
        return err


@contextlib.contextmanager
def section(prefix: str):
    """Errors raised inside name their key within config section ``prefix`` (e.g. ``"model.moe"``)."""
    try:
        yield
    except ConfigError as e:
        raise e.within(prefix) from None


def require(condition: bool, key: str, message: str) -> None:
    """Raise ``ConfigError(message, key)`` unless ``condition``."""
    if not condition:
        raise ConfigError(message, key)


def positive_int(value, key: str) -> int:
    """``value`` if it is an integer > 0 (not a bool), else a ConfigError naming ``key``."""
    require(isinstance(value, int) and not isinstance(value, bool) and value > 0, key,
            f"must be a positive integer, got {value!r}")
    return value


def one_of(value, choices, key: str, what: str = "value"):
    """``value`` if it is one of ``choices``, else a ConfigError listing them."""
    require(value in choices, key, f"unknown {what} {value!r}; choose from {list(choices)}")
    return value


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
    # every training example trains one task (position j -> task j mod T) and the batch carries task_ids:
    # per-task modules (LoRA, adapters, prompts, ...) then run the batch once, not once per task
    c.data.task_per_example = False
    c.data.shots = 0  # factors: K > 0 = a balanced few-shot training set, K per class of every classification task
    # multi_digits
    c.data.num_train = 20_000
    c.data.num_test = 4_000
    c.data.image_size = 16
    c.data.jitter = 3
    c.data.test_fraction = 0.3
    c.data.channels = 1  # 3: the grey digits repeated as RGB (for models of RGB images)
    c.data.upscale = 1  # k: draw at image_size / k, every pixel a k x k block
    # scenes, factors (objects per image)
    c.data.max_objects = 4
    # factors (many-factor images, mtljax.data.factors); use image_size 32
    c.data.pixel_noise = 0.02  # std of the Gaussian noise added to every pixel
    # multitab (MultiTab-Bench: T regression tasks of correlation rho; configs/multitab.py)
    c.data.num_tasks = 7
    c.data.num_features = 32
    c.data.rho = 0.4
    c.data.degrees = (1, 3, 2, 3, 4, 2, 3)
    c.data.noise = 0.01

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
        pack_slots=False,  # gather + tokens_choose: skip the empty slots (faster; hides expert FLOPs from cost analysis)
        group_size=1,  # examples per routing group
        gate="task",  # m3vit: task | task_conditioned (hps + moe_vit: always shared)
        gate_zero_init=False,
        every=2, layers=(),  # MoE MLP in every `every`-th block ending with the last, or these blocks
        importance_weight=0.01, load_weight=0.01, z_loss_weight=0.0, mi_weight=0.0,
        attn_experts=0, attn_top_k=0, attn_head_dim=0, attn_every=1,  # mod_squad: MoE attention
    ))
    # parameter-efficient per-task modules on the ViT (model.name = hps, backbone = vit); see mtljax.models.peft
    c.model.peft = mlc.ConfigDict(dict(
        # "" (none) | lora | adapter | prefix | vpt | task_tokens | inject | poly | scalearn | hyperformer, or several
        # joined by "+" (e.g. "lora+vpt")
        method="",
        rank=4, alpha=8.0,  # LoRA: W x + (alpha / rank) B A x, B = 0 at init
        targets=("query", "value"),  # LoRA on these projections: query key value out (attention), fc1 fc2 (MLP)
        adapter_dim=16,  # bottleneck adapters: width m of down (D -> m) and up (m -> D)
        adapter_positions=("attention", "mlp"),  # after attention and/or MLP (Houlsby: both; Pfeiffer: mlp)
        prefix_length=8,  # prefix tuning: key/value prefixes per block and task (0 = the base model)
        prompt_length=8,  # VPT: prompt tokens per task (0 = the base model)
        deep=False,  # deep VPT: every block replaces the previous block's prompt tokens with its own
        task_tokens=1,  # task tokens per task, all tasks' in one pass; each head reads its own (0 = the base model)
        inject_logit_init=-20.0,  # soft injection: gate logit θ_0 of every head, α = σ(θ_0) (-20: exactly the base)
        # LoRA routing (PHATGOOSE, mtljax.models.peft.phatgoose): "" each example its own task's LoRA |
        # gate: its own task's LoRA scaled per token by σ(v_tᵀx), v_t trained (freeze the rest: trainable=("lora_\w+/gate",))
        # | phatgoose: every token mixes the top_k of all tasks' LoRA experts by its gates (no task ids, one pass)
        routing="",
        top_k=2,  # routing=phatgoose: experts per token (the paper's 2)
    ))
    # method "poly": Polytropon (heads=1) / MHR (heads>1), mtljax.models.peft.poly: K shared LoRA skills per target,
    # per-task routing logits poly_routing [T, heads, skills] (MHR-z: trainable=("poly_routing", "^heads_"))
    c.model.peft.poly = mlc.ConfigDict(dict(skills=8, heads=1, rank=4, alpha=8.0, targets=("query", "value"),
                                            temperature=1.0))  # Gumbel-sigmoid temperature in training
    # ScaLearn (method = scalearn): frozen source adapters scaled per target task; see mtljax.models.peft.scalearn
    c.model.peft.scalearn = mlc.ConfigDict(dict(
        source="",  # the source adapter run's directory (a run of configs/adapt_adapter.py)
        source_tasks=(),  # which of its tasks' adapters, in this order (empty = all of them)
        variant="scalearn",  # scalearn | uniform | scalearn++ | uniform++ (vector / scalar ω; ++: shared by all blocks)
    ))
    # HyperFormer++ (method "hyperformer", mtljax.models.peft.hyper): one shared hypernetwork generates every
    # block's adapters from [task embedding; layer embedding; position embedding] (hyperformer++.json defaults)
    c.model.peft.hyper = mlc.ConfigDict(dict(
        task_dim=64,  # task (and layer-id, position) embedding size E; the only per-task parameters: T·E
        hidden_dim=128,  # task projector MLP hidden width
        projected_dim=64,  # ι: the projector's output (after its LayerNorm), input of the weight generators
        reduction_factor=32,  # adapter bottleneck m = max(1, ViT width // reduction_factor)
        positions=("attention", "mlp"),  # adapters after the attention and/or the MLP of every block
        layer_norm=True,  # conditional LayerNorm on the adapter's output (γ, β generated from ι)
    ))
    # MULTI-LANE (model.name = multi_lane): a frozen ViT, one lane per task; see mtljax.models.lanes
    c.model.multi_lane = mlc.ConfigDict(dict(
        selectors=4,  # k learned selector tokens per lane and block summarising the patches
        prefix_length=8,  # per-lane key/value prefixes (0 = none) ...
        prefix_blocks=2,  # ... in the first prefix_blocks blocks
    ))
    c.model.task_expert = mlc.ConfigDict(dict(num_experts=4, expert_dim=0, every=2, layers=()))
    # the slim model (model.name = slim; what every key means: mtljax.models.slim)
    c.model.slim = mlc.ConfigDict(dict(
        backbone="vit",  # vit (slimmable heads and MLP width) | conv (slimmable conv net)
        encoder_widths=(0.25, 0.5, 0.75, 1.0), decoder_widths=(0.25, 0.5, 0.75, 1.0),
        decoder_hidden=64, decoder_depth=2, switchable_norm=True,
        num_random=2,  # random configurations per step besides the largest and the smallest (sandwich)
        cikd_weight=1.0, cikd_distance="normalized", cikd_start=0, cikd_ramp=0,
        conv_channels=(32, 64, 128), conv_dim=128,
    ))

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
    c.optim.level = "param"  # param | gramian | rep | autogram (where per-task gradients are taken)
    c.optim.chunk_size = 0  # tasks per batched pullback; 0 = all at once
    c.optim.head_grads = ""  # task | weighted | "" (the method's own: weighted for loss weightings and Nash-MTL)
    c.optim.sam = "none"  # none | sam (Foret et al.) | flat (task-based flat regions, Phan et al.)
    c.optim.sam_rho = 0.05
    c.optim.sam_adaptive = False  # ASAM-style perturbation for sam='flat'
    c.optim.sam_balls = "separate"  # sam='flat': rho-balls per shared part and per head (reference) | joint
    c.optim.rep_mtl = False  # add the Rep-MTL saliency regulariser (Wang et al., 2025)
    c.optim.rep_mtl_kwargs = mlc.ConfigDict(dict(lambda_entropy=0.9, lambda_align=0.9, temperature=0.1))
    # parameters that train: regular expressions searched in the parameter paths ("lora", "^heads_");
    # empty = all. The others are frozen: no gradients, no optimizer state (mtljax.optim.trainable)
    c.optim.trainable = ()
    # tasks whose own parameters (heads, rows of per-task modules) stay unchanged: add a task to a trained
    # model without changing the earlier ones (freeze the shared parameters too; mtljax.optim.trainable)
    c.optim.frozen_tasks = ()

    # start a fresh run from another run's parameters, matched by path (mtljax.trainer.warm_start)
    # task_init: per-task parameters (prompts, LoRA, ...) of tasks the source run lacks: fresh | mean (of the
    # source's tasks) | <a source task's name> (MVLPT-style prompt initialisation); shared tasks map by name
    c.init = mlc.ConfigDict(dict(checkpoint="", step=0, task_init="fresh"))  # run directory; step 0 = its newest

    # mtljax merge: one model from task experts fine-tuned from one pretrained run (mtljax.merge,
    # mtljax.commands.merge); the keys each method reads are listed there
    c.merge = mlc.ConfigDict(dict(
        scale=0.3,  # λ of task arithmetic, TIES, DARE (the task vectors' scaling)
        density=0.2,  # TIES: fraction of each task vector's entries kept (top magnitudes), in (0, 1]
        drop=0.5,  # DARE: probability p of dropping an entry, in [0, 1)
        dare_base="task_arithmetic",  # DARE then task_arithmetic | ties
        init=0.3,  # AdaMerging: initial coefficient (clamped to [0, 1] while learning)
        steps=200,  # learned-coefficient methods (AdaMerging, aTLAS, Self Positioning), PHATGOOSE gates
        learning_rate=1e-3,  # AdaMerging / aTLAS (Adam); Self Positioning uses SGD with momentum
        batch_size=64,  # examples per task per step of the learned-coefficient methods
        shots=16,  # aTLAS / Self Positioning: labelled training examples per task
        top_k=2,  # PHATGOOSE: experts mixed per token
        seed=0,  # DARE's drops, the examples drawn for the learned coefficients
    ))

    c.train = mlc.ConfigDict()
    c.train.steps = 1500
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.eval_max_examples = 0  # 0 = the whole split
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.progress = True
    # loss scaling (mtljax.optim.loss_scale): 'auto' = dynamic when model.dtype is float16, else none |
    # 'dynamic' | 'none' | a number (static scale)
    c.train.loss_scale = "auto"

    c.mesh = mlc.ConfigDict()
    c.mesh.shape = mlc.ConfigDict({"data": -1, "expert": 1, "model": 1})
    c.mesh.rules = ()  # [[logical, mesh_axis], ...]; empty = mtljax.parallel.rules.DEFAULT_RULES

    # multi-process runs (mtljax.parallel.distributed): "" / 0 / -1 = from the environment (JAX_COORDINATOR_ADDRESS,
    # JAX_NUM_PROCESSES, JAX_PROCESS_ID, JAX_LOCAL_DEVICE_IDS) or the cluster (TPU slice, SLURM, Open MPI, k8s)
    c.dist = mlc.ConfigDict(dict(
        coordinator="",  # host:port of process 0
        num_processes=0,
        process_id=-1,
        local_device_ids="",  # e.g. "0" or "0,1": the accelerators this process drives
        cpu_devices=0,  # (simulated) CPU devices per process; 0 = JAX's default
        heartbeat_timeout=20,  # s without a heartbeat before a process counts as lost (then all exit, rc 1)
        init_timeout=300,  # s to wait for every process to join
        # host memory (mtljax.parallel.host): 'system' = glibc's defaults | 'retain' = keep freed memory for
        # the next step and run steps in the calling thread (no page faults on a step buffer above 32 MiB;
        # a run of small steps loses its loop's overlap with the step: see the module)
        host_allocator="system",
    ))

    c.baselines = mlc.ConfigDict()
    c.baselines.train = False  # train one single-task model per task first, then report Δm
    c.baselines.file = ""  # JSON {task: {metric: value}} of single-task results
    return c


# free-form sections: their keys are the user's (task names, a method's hyperparameters), so
# ``--config.optim.method_kwargs.c=0.4`` adds a key; what it means is checked where it is read
FREE_FORM_KEYS = ("optim.task_weights", "optim.method_kwargs")


def load_config(spec: str) -> mlc.ConfigDict:
    """The config of a file as the command line names it: ``"configs/m3vit.py"`` or
    ``"configs/multitab.py:conflict"`` (its ``get_config(arg)``)."""
    import importlib.util

    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"no config file {path!r}")
    module_spec = importlib.util.spec_from_file_location(f"mtljax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


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
