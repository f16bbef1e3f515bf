"""Task vectors of per-task LoRA experts (Hu et al., 2022, "LoRA: Low-Rank Adaptation of Large Language
Models", eq. 3; the layout of :mod:`mtljax.models.peft.lora`).

A LoRA model of :mod:`mtljax.models.peft.lora` stores, for every adapted projection ``<proj>``, factors
``a [T, *in, r]`` and ``b [T, r, *out]`` under the sibling scope ``lora_<proj>``. Task ``t``'s model
is the base model with the kernel ``W + ΔW_t``, where

    ``ΔW_t = (α/r) · A_t B_t``  (``A_t`` reshaped to ``[d_in, r]``, ``B_t`` to ``[r, d_out]``, the
    product reshaped to the kernel's ``[*in, *out]``; the paper writes it ``B A`` for ``W x``).

So the task vector of expert ``t`` against the base model is ``ΔW_t`` on every adapted kernel and 0 on
every other parameter (:func:`lora_task_vector`), a tree with exactly the base model's paths. Those
vectors (or the experts ``θ_0 + ΔW_t`` of :func:`lora_experts`) go into any dense merging method of
:mod:`mtljax.merge`.

Why per-task products, never averaged factors: the merge must combine ``ΔW_t = B_t A_t`` whole.
Averaging (or summing) the ``A``'s and the ``B``'s separately and multiplying afterwards gives
``(Σ_t A_t)(Σ_t B_t) = Σ_t A_t B_t + Σ_{s≠t} A_s B_t``: the cross terms ``A_s B_t`` pair one task's
down-projection with another's up-projection and belong to no expert — the pitfall reported for peft's
weighted adapter merging (huggingface/peft issues #1155 and #3004). The products are formed here in
full precision (``HIGHEST``) as in :func:`mtljax.models.peft.lora.merge`, which folds the same
``ΔW_t`` into the kernels.

Deviation from "``merge(params, t, α) − base``": the vector is built directly from the factors, so it
is exact (no rounding from adding to and subtracting from ``W``); it equals that difference up to that
rounding. ``alpha`` must be the ``α`` the model was trained with (the rank is read from the factors).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from mtljax.merge.vectors import MergeError
from mtljax.models.peft.lora import PREFIX


def _num_tasks(tree: Mapping[str, Any]) -> int | None:
    """The ``T`` of the LoRA factors in ``tree`` (checked consistent); ``None`` if there are none."""
    found: list[tuple[str, int]] = []

    def walk(node, path):
        if not isinstance(node, Mapping):
            return
        for key, value in node.items():
            where = f"{path}/{key}" if path else str(key)
            if isinstance(key, str) and key.startswith(PREFIX):
                base = key[len(PREFIX):]
                if not isinstance(value, Mapping) or "a" not in value or "b" not in value:
                    raise MergeError(f"lora_params: {where!r} lacks the factors 'a' and 'b'")
                sibling = node.get(base)
                if not isinstance(sibling, Mapping) or "kernel" not in sibling:
                    raise MergeError(f"lora_params: {where!r} has no sibling kernel {base + '/kernel'!r}")
                a, b, kernel = value["a"], value["b"], sibling["kernel"]
                sa, sb, sk = jnp.shape(a), jnp.shape(b), jnp.shape(kernel)
                if (len(sa) < 2 or len(sb) < 2 or sa[0] != sb[0] or sa[-1] != sb[1]
                        or tuple(sa[1:-1]) + tuple(sb[2:]) != tuple(sk)):
                    raise MergeError(f"lora_params: {where!r} has a {tuple(sa)} and b {tuple(sb)}, which do not "
                                     f"fit the kernel {tuple(sk)}")
                found.append((where, sa[0]))
            else:
                walk(value, where)

    walk(tree, "")
    if not found:
        return None
    counts = {n for _, n in found}
    if len(counts) > 1:
        raise MergeError(f"lora_params: the LoRA scopes disagree on the number of tasks: {sorted(counts)}")
    return found[0][1]


def _check(lora_params, task) -> int:
    if not isinstance(lora_params, Mapping):
        raise MergeError(f"lora_params: must be a nested dict of parameters, got {type(lora_params).__name__}")
    num_tasks = _num_tasks(lora_params)
    if num_tasks is None:
        raise MergeError(f"lora_params: has no {PREFIX}<projection> scope")
    if isinstance(task, bool) or (isinstance(task, numbers.Integral) and not 0 <= int(task) < num_tasks):
        raise MergeError(f"task: must be in [0, {num_tasks}), got {task}")
    return num_tasks


def base_params(lora_params: Mapping[str, Any]) -> dict:
    """``lora_params`` without its ``lora_*`` scopes: the base model's tree ``θ_0``."""
    return {k: (base_params(v) if isinstance(v, Mapping) else v) for k, v in lora_params.items()
            if not (isinstance(k, str) and k.startswith(PREFIX))}


def lora_task_vector(lora_params: Mapping[str, Any], task: int | jax.Array, alpha: float) -> dict:
    """Task ``task``'s dense task vector: ``(α/r) A_t B_t`` (reshaped) for every kernel with a
    ``lora_<proj>`` sibling, zeros for every other leaf; the base model's structure and dtypes.
    ``task`` may be traced (then it is not range-checked)."""
    _check(lora_params, task)

    def build(node):
        out = {}
        for key, value in node.items():
            if isinstance(key, str) and key.startswith(PREFIX):
                continue
            if not isinstance(value, Mapping):
                out[key] = jnp.zeros_like(value)
                continue
            sub = build(value)
            lora = node.get(PREFIX + key) if isinstance(key, str) else None
            if lora is not None:
                a, b = lora["a"][task], lora["b"][task]  # [*in, r], [r, *out]
                r = a.shape[-1]
                kernel = value["kernel"]
                delta = jnp.matmul(a.reshape(-1, r), b.reshape(r, -1), precision=jax.lax.Precision.HIGHEST)
                sub["kernel"] = (alpha / r * delta).reshape(kernel.shape).astype(kernel.dtype)
            out[key] = sub
        return out

    return build(lora_params)


def lora_task_vectors(lora_params: Mapping[str, Any], alpha: float) -> list[dict]:
    """:func:`lora_task_vector` for every task ``0 … T−1``."""
    num_tasks = _check(lora_params, 0)
    return [lora_task_vector(lora_params, t, alpha) for t in range(num_tasks)]


def lora_experts(lora_params: Mapping[str, Any], alpha: float) -> tuple[dict, list[dict]]:
    """``(θ_0, [θ_0 + ΔW_t for every task])``: the ``pretrained`` and ``finetuned`` arguments of the
    dense merging methods, for a LoRA model's experts."""
    base = base_params(lora_params)
    experts = [jax.tree.map(lambda p, v: (p + v).astype(p.dtype), base, vec)
               for vec in lora_task_vectors(lora_params, alpha)]
    return base, experts
