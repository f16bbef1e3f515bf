"""Parameter-efficient per-task modules on the one ViT: LoRA, bottleneck adapters, prefix tuning, VPT,
task tokens, soft injection of task embeddings.

``config.model.peft.method`` (``""`` for none, one of ``lora``, ``adapter``, ``prefix``, ``vpt``,
``task_tokens``, ``inject``, or several joined by ``+``) puts per-task modules into the ViT of
``config.model.name='hps'``, ``backbone='vit'``, through its plugs (:mod:`mtljax.models.plugs`):

=================  ==========================  ======================================================
module             plug                        keys of ``config.model.peft``
=================  ==========================  ======================================================
``lora``           ``attention`` / ``mlp``     ``rank``, ``alpha``, ``targets`` (query key value out
                                               fc1 fc2); :func:`merge` folds one task into the kernels;
                                               ``routing`` (``""``, ``gate``, ``phatgoose``), ``top_k``
``phatgoose``      (inside ``lora``)           PHATGOOSE (Muqeeth et al., 2024): a gate ``v_t`` per task
                                               and projection; ``gate``: the task's LoRA scaled per token
                                               by σ(v_tᵀx); ``phatgoose``: every token mixes the top-k
                                               of all tasks' LoRA by ⟨std(x), std(v_t)⟩/√d (no task ids);
                                               :func:`phatgoose_weights`, :func:`stack_lora_experts`
``adapter``        ``attention_adapter`` /     ``adapter_dim``, ``adapter_positions`` (attention, mlp)
                   ``mlp_adapter``
``prefix``         ``attention``               ``prefix_length`` (key/value prefixes per block)
``prompt`` (vpt)   the ViT's ``prompt``,       ``prompt_length``, ``deep`` (new tokens every block)
                   deep: blocks' ``prompt``
``task_tokens``    the ViT's ``prompt`` +      ``task_tokens`` (tokens per task; all tasks' tokens in
                   :class:`TaskTokenViT`       one pass, each head reads its own)
``scalearn``       ``attention_adapter`` /     ``scalearn.source`` / ``source_tasks`` / ``variant``
                   ``mlp_adapter`` (``++``:    (ScaLearn: frozen source-task adapters scaled per
                   :class:`SharedScalesViT`)   target task; ``adapter_dim``/``_positions`` the source's)
``hyperformer``    ``attention_adapter`` /     ``hyper.*`` (HyperFormer++: one shared hypernetwork
                   ``mlp_adapter`` +           generates every block's adapters from task, layer and
                   :class:`HyperViT`           position embeddings; only ``task_embed [T, E]`` per task)
``inject``         ``attention``               ``inject_logit_init`` (SITE: per-task, per-head
                                               embeddings mixed into the heads by gates σ(θ));
                                               :func:`init_from_mean`
``poly``           ``attention`` / ``mlp``     ``poly.skills``, ``poly.heads``, ``poly.rank``, ``poly.alpha``,
                                               ``poly.targets``, ``poly.temperature``: Polytropon / MHR,
                                               per-task LoRA mixed from K shared skills by routing
                                               logits ``poly_routing [T, h, K]`` (the only per-task
                                               part); :func:`routing_matrices`, :func:`routing_uniform`
``attention``      ``attention``               the attention plug carrying LoRA, prefixes, injection
``select``         —                           the per-task gather by ``ctx.task_ids``
``checks``         —                           :func:`check_peft` (called by ``check_model``)
=================  ==========================  ======================================================

Every module is per task: its parameters have a leading task axis ``[T, ...]`` and each example
reads its own task's slice (``ctx.task_ids``, one gather, no loop over tasks) — except task tokens,
which every example carries for all tasks, and LoRA routed by PHATGOOSE (``routing='phatgoose'``), whose
tokens each mix the top-k of all tasks' LoRA experts (:mod:`~mtljax.models.peft.phatgoose`; then the
LoRA parameters are shared, not task-specific), and Polytropon / MHR, whose skill inventory is shared by
all tasks and whose only per-task parameters are the routing logits ``poly_routing [T, heads, skills]``. The model runs one backbone pass per task by default
(``MultiTaskModel(task_passes=True)``, every task's head reads its own pass; not for task tokens alone
or PHATGOOSE-routed LoRA alone, which need no task ids); a batch that carries ``task_ids``
(heterogeneous mixtures: every example belongs to one task) runs once, each example with its own
task's modules.

Parameter paths: the base ViT's parameters keep exactly their paths and shapes (a pretrained
checkpoint loads into them); every per-task parameter lies under a scope whose name contains its
kind — ``lora_<projection>`` (its ``a``, ``b`` and, with routing, ``gate``: train only the gates
with ``config.optim.trainable = ("lora_\\w+/gate",)``), ``attn_adapter`` / ``mlp_adapter``,
``prefix``, ``prompt``, ``prompt/task_tokens``, ``attn/inject``, ``poly_<projection>/poly_routing``
(the skills ``poly_<projection>/skills_a``, ``skills_b`` are shared), ``task_embed`` (HyperFormer++'s task
embeddings; its shared ``hypernet/...`` is not task-specific) — so :data:`SCOPES` (and the
trainer's freezing patterns) find them, and the objective marks them task-specific like the heads (left out of Gramians; each
task's slice gets its own task's gradient — for task tokens, other tasks' losses reach them too).
"""

from __future__ import annotations

import functools

import flax.linen as nn

from mtljax.config import require, section
from mtljax.models.peft.adapter import POSITIONS, Adapter
from mtljax.models.peft.attention import PeftAttention
from mtljax.models.peft.checks import METHODS, check_peft, methods_of, projection_dims
from mtljax.models.peft.hyper import HyperAdapter, HyperNet, HyperViT, adapter_width
from mtljax.models.peft.inject import SoftInject, init_from_mean
from mtljax.models.peft.lora import (
    ATTENTION_TARGETS,
    MLP_TARGETS,
    TARGETS,
    LoraDelta,
    LoraMlp,
    merge,
)
from mtljax.models.peft.phatgoose import (
    ROUTINGS,
    phatgoose_scores,
    phatgoose_weights,
    stack_lora_experts,
    standardise,
    top_k_weights,
)
from mtljax.models.peft.poly import ROUTING as POLY_ROUTING
from mtljax.models.peft.poly import PolyDelta, PolySettings, routing_matrices, routing_uniform
from mtljax.models.peft.prefix import Prefix
from mtljax.models.peft.prompt import PromptTokens
from mtljax.models.peft.scalearn import VARIANTS as SCALEARN_VARIANTS
from mtljax.models.peft.scalearn import ScaLearn, SharedScalesViT, scalearn_plugs, shared_scales
from mtljax.models.peft.task_tokens import TaskTokens, TaskTokenViT
from mtljax.models.plugs import BlockPlugs
from mtljax.models.vit import ViT

# every per-task parameter's path has a key containing one
SCOPES = ("lora", "adapter", "prefix", "prompt", "task_token", "inject", POLY_ROUTING, "scalearn", "task_embed")


def peft_plugs(p, num_tasks: int, *, depth: int, num_heads: int, mlp_dim: int, pool: str, dropout: float = 0.0,
               attention_impl: str | None = None, head_dim: int | None = None) -> dict:
    """ViT keyword arguments (``blocks``, ``prompt``) with the modules of ``p = config.model.peft`` for
    ``num_tasks`` tasks; ``{}`` when no module is created (no method, or only zero-length prefixes /
    prompts). The ViT's dimensions and settings are those of its builder."""
    methods = methods_of(p.method)
    targets = tuple(p.targets) if "lora" in methods else ()
    attn_targets = tuple(t for t in targets if t in ATTENTION_TARGETS)
    mlp_targets = tuple(t for t in targets if t in MLP_TARGETS)
    prefix = p.prefix_length if "prefix" in methods else 0
    prompt = p.prompt_length if "vpt" in methods else 0
    inject = "inject" in methods
    poly = PolySettings.of(p.poly) if "poly" in methods else None
    poly_attn = poly and any(t in ATTENTION_TARGETS for t in poly.targets)
    poly_mlp = poly and any(t in MLP_TARGETS for t in poly.targets)
    routing, top_k = lora_routing(p)
    if routing == "phatgoose":
        with section("model.peft"):
            require(top_k <= num_tasks, "top_k", f"{top_k} is more than the {num_tasks} LoRA experts (one per task)")
    attention = mlp = adapter = shallow = deep = None
    if attn_targets or prefix or inject or poly_attn:
        attention = functools.partial(PeftAttention, num_heads, num_tasks, head_dim, attention_impl,
                                      lora_rank=p.rank, lora_alpha=float(p.alpha), lora_targets=attn_targets,
                                      prefix_length=prefix, inject=inject,
                                      inject_logit_init=float(p.inject_logit_init) if inject else -20.0,
                                      lora_routing=routing, lora_top_k=top_k, poly=poly if poly_attn else None)
    if mlp_targets or poly_mlp:
        mlp = functools.partial(LoraMlp, mlp_dim, num_tasks, p.rank, float(p.alpha), mlp_targets, dropout,
                                routing, top_k, poly=poly if poly_mlp else None)
    if "adapter" in methods:
        adapter = functools.partial(Adapter, num_tasks, p.adapter_dim)
    positions = tuple(p.adapter_positions) if adapter else ()
    adapters = {pos: adapter for pos in positions}
    if "scalearn" in methods:  # frozen source adapters scaled per target task (the adapter plugs)
        adapters = scalearn_plugs(p, num_tasks)
    hyper = tuple(p.hyper.positions) if "hyperformer" in methods else ()  # HyperFormer++: generated adapters

    def adapter_at(i, position):
        if hyper:
            return (functools.partial(HyperAdapter, i, position, hyper, bool(p.hyper.layer_norm))
                    if position in hyper else None)
        return adapters.get(position)
    if prompt:
        start = 1 if pool == "cls" else 0
        shallow = functools.partial(PromptTokens, num_tasks, prompt, start)
        deep = functools.partial(PromptTokens, num_tasks, prompt, start, replace=True) if p.deep else None
    if task_token_count(p):  # check_peft refuses it together with vpt (both are the ViT's prompt plug)
        shallow = functools.partial(TaskTokens, num_tasks, p.task_tokens, 1 if pool == "cls" else 0)
    if not (attention or mlp or adapters or shallow or hyper):
        return {}
    blocks = tuple(BlockPlugs(attention=attention, mlp=mlp,
                              attention_adapter=adapter_at(i, "attention"), mlp_adapter=adapter_at(i, "mlp"),
                              prompt=deep if i > 0 else None) for i in range(depth))
    return dict(blocks=blocks, prompt=shallow)


def task_token_count(p) -> int:
    """Task tokens per task of ``p = config.model.peft`` (0 when ``task_tokens`` is not a method)."""
    return int(p.task_tokens) if "task_tokens" in methods_of(p.method) else 0


def peft_vit(p, task_names, **vit) -> tuple[nn.Module, bool]:
    """The backbone of ``hps`` + ``vit`` with the modules of ``p = config.model.peft`` for the tasks
    ``task_names``, and whether it needs one pass per task (task ids); ``vit`` are the ViT's keyword
    arguments. Task tokens wrap the ViT in :class:`TaskTokenViT` (its parameter tree stays the ViT's)."""
    plugs = peft_plugs(p, len(task_names), depth=vit["depth"], num_heads=vit["num_heads"], mlp_dim=vit["mlp_dim"],
                       pool=vit["pool"], dropout=vit.get("dropout", 0.0), attention_impl=vit.get("attention_impl"),
                       head_dim=vit.get("head_dim"))
    backbone = shared_scales(p, ViT(**vit, **plugs), len(task_names))
    n = task_token_count(p)
    if n:
        backbone = TaskTokenViT(backbone, tuple(task_names), n)
    if "hyperformer" in methods_of(p.method):
        h = p.hyper
        backbone = HyperViT(backbone, len(task_names), adapter_width(vit["width"], h.reduction_factor),
                            tuple(h.positions), h.task_dim, h.hidden_dim, h.projected_dim, bool(h.layer_norm))
    return backbone, needs_task_ids(p)


def lora_routing(p) -> tuple[str, int]:
    """``(routing, top_k)`` of LoRA in ``p = config.model.peft`` (``("", 2)`` without LoRA or without the
    keys: configs older than them)."""
    if "lora" not in methods_of(p.method):
        return "", 2
    return str(p.get("routing", "")), int(p.get("top_k", 2))


def needs_task_ids(p) -> bool:
    """Whether ``p = config.model.peft`` creates a module that reads each example's task (all but task
    tokens, and LoRA routed by PHATGOOSE: ``routing='phatgoose'``)."""
    m = methods_of(p.method)
    return (("lora" in m and lora_routing(p)[0] != "phatgoose") or "poly" in m or "adapter" in m or "inject" in m
            or "hyperformer" in m or ("prefix" in m and p.prefix_length > 0) or ("vpt" in m and p.prompt_length > 0)
            or "scalearn" in m)


__all__ = ["ATTENTION_TARGETS", "METHODS", "MLP_TARGETS", "POSITIONS", "ROUTINGS", "SCALEARN_VARIANTS", "SCOPES",
           "TARGETS", "Adapter", "HyperAdapter", "HyperNet", "HyperViT", "LoraDelta", "LoraMlp", "PeftAttention",
           "PolyDelta", "PolySettings", "Prefix", "PromptTokens", "ScaLearn", "SharedScalesViT", "SoftInject",
           "TaskTokenViT", "TaskTokens", "adapter_width",
           "check_peft", "init_from_mean", "lora_routing", "merge", "methods_of", "needs_task_ids", "peft_plugs",
           "peft_vit", "phatgoose_scores", "phatgoose_weights", "projection_dims", "routing_matrices", "routing_uniform", "stack_lora_experts", "standardise",
           "task_token_count", "top_k_weights"]
