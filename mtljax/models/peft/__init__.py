"""Parameter-efficient per-task modules on the one ViT: LoRA, bottleneck adapters, prefix tuning, VPT.

``config.model.peft.method`` (``""`` for none, one of ``lora``, ``adapter``, ``prefix``, ``vpt``, or
several joined by ``+``) puts per-task modules into the ViT of ``config.model.name='hps'``,
``backbone='vit'``, through its plugs (:mod:`mtljax.models.plugs`):

=================  ==========================  ======================================================
module             plug                        keys of ``config.model.peft``
=================  ==========================  ======================================================
``lora``           ``attention`` / ``mlp``     ``rank``, ``alpha``, ``targets`` (query key value out
                                               fc1 fc2); :func:`merge` folds one task into the kernels
``adapter``        ``attention_adapter`` /     ``adapter_dim``, ``adapter_positions`` (attention, mlp)
                   ``mlp_adapter``
``prefix``         ``attention``               ``prefix_length`` (key/value prefixes per block)
``prompt`` (vpt)   the ViT's ``prompt``,       ``prompt_length``, ``deep`` (new tokens every block)
                   deep: blocks' ``prompt``
``attention``      ``attention``               the attention plug carrying LoRA and prefixes
``select``         —                           the per-task gather by ``ctx.task_ids``
``checks``         —                           :func:`check_peft` (called by ``check_model``)
=================  ==========================  ======================================================

Every module is per task: its parameters have a leading task axis ``[T, ...]`` and each example
reads its own task's slice (``ctx.task_ids``, one gather, no loop over tasks). The model runs one
backbone pass per task by default (``MultiTaskModel(task_passes=True)``, every task's head reads its
own pass); a batch that carries ``task_ids`` (heterogeneous mixtures: every example belongs to one
task) runs once, each example with its own task's modules.

Parameter paths: the base ViT's parameters keep exactly their paths and shapes (a pretrained
checkpoint loads into them); every per-task parameter lies under a scope whose name contains its
kind — ``lora_<projection>``, ``attn_adapter`` / ``mlp_adapter``, ``prefix``, ``prompt`` — so
:data:`SCOPES` (and the trainer's freezing patterns) find them, and the objective marks them
task-specific like the heads (left out of Gramians; each task's slice gets its own task's gradient).
"""

from __future__ import annotations

import functools

from mtljax.models.peft.adapter import POSITIONS, Adapter
from mtljax.models.peft.attention import PeftAttention
from mtljax.models.peft.checks import METHODS, check_peft, methods_of, projection_dims
from mtljax.models.peft.lora import ATTENTION_TARGETS, MLP_TARGETS, TARGETS, LoraDelta, LoraMlp, merge
from mtljax.models.peft.prefix import Prefix
from mtljax.models.peft.prompt import PromptTokens
from mtljax.models.plugs import BlockPlugs

SCOPES = ("lora", "adapter", "prefix", "prompt")  # every per-task parameter's path has a key containing one


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
    attention = mlp = adapter = shallow = deep = None
    if attn_targets or prefix:
        attention = functools.partial(PeftAttention, num_heads, num_tasks, head_dim, attention_impl,
                                      lora_rank=p.rank, lora_alpha=float(p.alpha), lora_targets=attn_targets,
                                      prefix_length=prefix)
    if mlp_targets:
        mlp = functools.partial(LoraMlp, mlp_dim, num_tasks, p.rank, float(p.alpha), mlp_targets, dropout)
    if "adapter" in methods:
        adapter = functools.partial(Adapter, num_tasks, p.adapter_dim)
    positions = tuple(p.adapter_positions) if adapter else ()
    if prompt:
        start = 1 if pool == "cls" else 0
        shallow = functools.partial(PromptTokens, num_tasks, prompt, start)
        deep = functools.partial(PromptTokens, num_tasks, prompt, start, replace=True) if p.deep else None
    if not (attention or mlp or adapter or shallow):
        return {}
    blocks = tuple(BlockPlugs(attention=attention, mlp=mlp,
                              attention_adapter=adapter if "attention" in positions else None,
                              mlp_adapter=adapter if "mlp" in positions else None,
                              prompt=deep if i > 0 else None) for i in range(depth))
    return dict(blocks=blocks, prompt=shallow)


__all__ = ["ATTENTION_TARGETS", "METHODS", "MLP_TARGETS", "POSITIONS", "SCOPES", "TARGETS", "Adapter", "LoraDelta",
           "LoraMlp", "PeftAttention", "Prefix", "PromptTokens", "check_peft", "merge", "methods_of", "peft_plugs",
           "projection_dims"]
