"""Per-task compact sub-models of a task-gated MoE ViT (Mod-Squad §3.4; also M³ViT's single-task path).

A task-gated MoE (``model.name`` = ``m3vit`` or ``mod_squad``) lets every task use only some experts.
Given how often the task's gate picks each expert on some data (:func:`expert_usage`),
:func:`extract_task_model` keeps, in every MoE layer, the experts whose share of the task's choices is
above ``threshold`` (at least ``k`` of them, the most used, as Mod-Squad does) and returns a standalone
single-task model with only those experts, that task's gate and that task's head.

Exactness: the sub-model's gates keep all ``E`` logits (they are tiny), so the gate probabilities and
the top-k choice are the full model's whenever the chosen experts were kept, and MoE MLPs keep the
full model's capacity; the sub-model then gives **exactly** the full model's output for that task. With
``threshold=0`` and the usage measured on the inputs at hand, that holds for those inputs by
construction; a larger threshold trades exactness on rare routes for a smaller model.

The FLOPs a sub-model saves are measured with :func:`mtljax.cost.compiled_flops`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mtljax.models.hps import HEAD_PREFIX, MultiTaskModel
from mtljax.models.moe.attention import MoeAttention
from mtljax.models.moe.mlp import MoeMlp
from mtljax.models.vit import ViT


def _moe_paths(intermediates) -> dict[tuple[str, ...], np.ndarray]:
    out = {}

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "usage":
                    out[path] = np.asarray(sum(v))
                else:
                    walk(v, path + (k,))

    walk(intermediates, ())
    return out


def expert_usage(model: MultiTaskModel, params, inputs, task: str, batch_size: int = 256) -> dict:
    """``{module path: counts [E]}``: how often ``task``'s gates chose each expert on ``inputs``."""
    index = [t.name for t in model.tasks].index(task)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, task=task, mutable=["intermediates"])[1])
    # (one compiled program per distinct batch size)
    total: dict = {}
    for start in range(0, len(inputs), batch_size):
        found = _moe_paths(apply(params, jnp.asarray(inputs[start:start + batch_size]))["intermediates"])
        for path, counts in found.items():
            total[path] = total.get(path, 0) + counts[index]
    return total


def _keep(counts: np.ndarray, k: int, threshold: float) -> tuple[int, ...]:
    share = counts / max(float(counts.sum()), 1e-12)
    keep = set(np.flatnonzero(share > threshold).tolist())
    keep |= set(np.argsort(-share, kind="stable")[:k].tolist())  # never fewer than k experts
    return tuple(sorted(keep))


def _is_moe(factory) -> bool:
    return isinstance(factory, functools.partial) and factory.func in (MoeMlp, MoeAttention)


def _single_task(factory: functools.partial, kept: tuple[int, ...] | None) -> functools.partial:
    """The layer factory for one task's sub-model: one gate (``num_tasks=1``) and the ``kept`` experts."""
    return functools.partial(factory.func, *factory.args, **{**factory.keywords, "num_tasks": 1, "experts_kept": kept})


def extract_task_model(model: MultiTaskModel, params, task: str, usage: dict, threshold: float = 0.0):
    """``(sub_model, sub_params, kept)``: ``task``'s standalone model with only the experts it uses.

    ``kept`` maps each MoE module path to the kept expert indices of the full layer.
    """
    backbone = model.backbone
    names = [t.name for t in model.tasks]
    if task not in names:
        raise ValueError(f"task={task!r}: unknown task; the model has {names}")
    if not model.task_passes or not isinstance(backbone, ViT):
        raise ValueError("extract_task_model needs a task-gated MoE ViT (config.model.name 'm3vit' or 'mod_squad')")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    t = names.index(task)
    kept, blocks = {}, []
    for i in range(backbone.depth):
        plugs, changes = backbone.block_plugs(i), {}
        for role, part in (("mlp", "mlp"), ("attention", "attn")):
            factory = getattr(plugs, role)
            if not _is_moe(factory):
                continue
            path = ("backbone", f"block{i}", part)
            if path in usage:
                kept[path] = _keep(usage[path], factory.keywords["k"], threshold)
            changes[role] = _single_task(factory, kept.get(path))
        blocks.append(dataclasses.replace(plugs, **changes))
    sub_backbone = backbone.clone(blocks=tuple(blocks))
    sub_model = model.clone(backbone=sub_backbone, tasks=(model.tasks[t],))
    sub_params = _slice_params(params, kept, t, task)
    return sub_model, sub_params, kept


def _slice_params(params, kept: dict, t: int, task: str) -> Any:
    def visit(node, path):
        if not isinstance(node, dict):
            return node
        if path in kept:
            idx = np.asarray(kept[path])
            node = {k: (v[idx] if k in ("wi", "bi", "wo", "bo", "wq") and v.ndim >= 2 else v) for k, v in node.items()}
        out = {}
        for k, v in node.items():
            if path == () and k.startswith(HEAD_PREFIX) and k != HEAD_PREFIX + task:
                continue
            if k == "gate":
                out[k] = _slice_gate(v, t)
            else:
                out[k] = visit(v, path + (k,))
        return out

    return visit(dict(params), ())


def _slice_gate(gate: dict, t: int) -> dict:
    out = dict(gate)
    if "kernel" in out and out["kernel"].ndim == 3:  # per-task gates [T, D, E]
        out["kernel"] = out["kernel"][t:t + 1]
    if "task_mlp0" in out:  # task-conditioned gate: the one-hot input shrinks to this task's row
        out["task_mlp0"] = {**out["task_mlp0"], "kernel": out["task_mlp0"]["kernel"][t:t + 1]}
    return out
