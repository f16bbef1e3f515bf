"""The plug interface of the ViT: which layer fills each role, and what every layer is told per call.

The ViT (:mod:`mtljax.models.vit`) is one block loop whose layers are *plugs*: a **factory** per role
(usually ``functools.partial`` of a linen module class, the linen idiom for "a module with these
settings") that the ViT calls as ``factory(name=role, dtype=..., param_dtype=...)`` to create the layer
in place, so a layer's parameters sit under its role's name (``block3/mlp/...``) whatever its kind.

Every pluggable layer is called as ``layer(x, ctx)``:

* ``x``: the tokens ``[B, S, D]``;
* ``ctx``: a :class:`Context`, one small frozen object per forward pass holding everything a layer may
  need besides its input: the train flag (dropout, gate noise), the task of every example
  (``task_ids [B]``: per-task gates, and per-task LoRA / adapters / prefixes / prompts), the MoE
  routing-group size, the slim width index and whether widths are applied by masks;

and returns ``y`` or ``(y, aux)``, with ``aux = {"losses": {name: scalar}, "metrics": {name: scalar}}``
(losses already weighted; :func:`split_aux` reads either form). The ViT merges the aux of all its
layers with :func:`merge_aux` (losses summed, metrics averaged).

Roles (:class:`BlockPlugs`, one per block or one for every block; ``None`` = the ViT's default)::

    x = prompt(x, ctx)                                            # deep prompt tokens (None: nothing)
    x = x + dropout(attention_adapter(attention(norm(x), ctx)))   # adapter: None = identity
    x = x + dropout(mlp_adapter(mlp(norm(x), ctx)))

The ViT itself has a ``norm`` plug (its default LayerNorm, also the final norm) and a ``prompt`` plug
applied once after the position embeddings (prompt / task tokens). Families built on these roles:
dense ViT (all defaults), V-MoE / M³ViT (``mlp`` = MoE MLP in some blocks), Mod-Squad (``attention`` =
MoE attention too), the slim ViT (slimmable attention, MLP and norms), TaskExpert (a dense ViT whose
block outputs are read by memorial MoEs through ``taps``).

Where the parameter-efficient variants go: bottleneck adapters are ``attention_adapter`` /
``mlp_adapter`` plugs; shallow VPT and task tokens the ViT's ``prompt`` (tokens inserted before the
patch tokens are never pooled: pooling reads the last ``N`` tokens or the class token), deep VPT a
block's ``prompt`` (replacing the previous block's prompt tokens); per-task LoRA on the projections
and prefix tuning (per-layer key/value prefixes) are ``attention`` plugs, since both live inside the
attention (:func:`mtljax.models.layers.attend` takes keys and values of another length than the
queries). Per-task parameters are selected per example by ``ctx.task_ids``; the implementations live
in :mod:`mtljax.models.peft` (``config.model.peft``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax

Factory = Callable[..., nn.Module]
Aux = dict


@dataclasses.dataclass(frozen=True)
class Context:
    """Per-call facts every pluggable layer receives (one per forward pass; layers never change it).

    Attributes:
      train: training mode (dropout, gate noise).
      task_ids: ``int32[B]``, the task index of every example, or ``None`` when no layer needs it.
      group_size: examples per MoE routing group for this call (``None``: the layer's own setting).
      width_index: slim layers: index into the trained width multipliers (a Python int: kernels are
        sliced; a traced int with ``masked``: channels are masked).
      masked: slim layers: apply the width by masks (a traced ``width_index``, one compilation).
      shared: values computed once per pass by a wrapper around the ViT and read by the plugs of every
        block (a pytree, e.g. ``{block index: {position: weights}}``): hypernetwork-generated module
        weights, scales shared across layers. ``None`` when no plug reads it.
    """

    train: bool = False
    task_ids: jax.Array | None = None
    group_size: int | None = None
    width_index: Any = -1
    masked: bool = False
    shared: Any = None

    def replace(self, **changes: Any) -> "Context":
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class BlockPlugs:
    """The layers of one ViT block, by role; ``None`` takes the ViT's default for the role.

    ``attention``/``mlp``/``norm`` default to dense multi-head self-attention, the dense MLP and the
    ViT's ``norm``; ``attention_adapter``/``mlp_adapter`` (applied to the branch's output before the
    residual add) and ``prompt`` (applied to the residual stream before the block) default to nothing.
    """

    attention: Factory | None = None
    mlp: Factory | None = None
    norm: Factory | None = None
    attention_adapter: Factory | None = None
    mlp_adapter: Factory | None = None
    prompt: Factory | None = None


class Encoding(NamedTuple):
    """What a backbone returns.

    ``pooled [B, D]`` and ``tokens [B, N, D]`` (the patch tokens; ``None`` for non-image backbones), or
    per-task dicts of them (TaskExpert); ``aux`` (merged losses and metrics of its layers); ``taps``
    (``{block index: residual stream [B, S, D] after that block}`` for the blocks the ViT was asked to tap);
    ``leading`` (the ViT: the final states of the positions before the patch tokens ``[B, S - N, D]`` —
    class token, prompt and task tokens —, read by task-token heads; a slice XLA drops when unread).
    """

    pooled: Any
    tokens: Any
    aux: Aux
    taps: dict | None = None
    leading: Any = None


def empty_aux() -> Aux:
    """An aux dict with no losses and no metrics."""
    return {"losses": {}, "metrics": {}}


def split_aux(out: Any) -> tuple[Any, Aux | None]:
    """``(y, aux)`` from a layer's return value ``y`` or ``(y, aux)`` (``aux=None`` for the former)."""
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        return out
    return out, None


def merge_aux(*auxes: Aux | None) -> Aux:
    """Sum the losses and average the metrics of several layers' aux dicts (``None`` entries skipped)."""
    losses, metrics, counts = {}, {}, {}
    for aux in auxes:
        if aux is None:
            continue
        for k, v in aux.get("losses", {}).items():
            losses[k] = losses.get(k, 0.0) + v
        for k, v in aux.get("metrics", {}).items():
            metrics[k] = metrics.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
    return {"losses": losses, "metrics": {k: v / counts[k] for k, v in metrics.items()}}
