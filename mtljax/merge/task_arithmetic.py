"""Task arithmetic (Ilharco et al., 2023, "Editing Models with Task Arithmetic").

With task vectors ``τ_t = θ_t − θ_0`` (:mod:`mtljax.merge.vectors`):

* addition (multi-task merge, the paper's §4): ``θ = θ_0 + λ Σ_t τ_t``; the paper picks one ``λ``
  on held-out data (``λ ≈ 0.3`` is the usual choice for eight CLIP experts). Here ``scale`` may also
  be one ``λ_t`` per task, ``θ = θ_0 + Σ_t λ_t τ_t`` (the task-wise form that AdaMerging learns);
* negation (forgetting, the paper's §3): ``θ = θ_0 − λ τ``.

Deviations: none beyond the optional per-task ``λ``. The sum is formed in the leaves' own dtype (a
``λ`` given as a float32 array promotes it) and the result is cast back to the pretrained dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from mtljax.merge.vectors import MergeError, PyTree, check_compatible, check_finetuned


def check_scale(scale, num_tasks: int, name: str = "scale"):
    """``scale`` as a scalar (Python number or 0-d array) or a per-task sequence / 1-d array of length
    ``num_tasks``; returns ``None`` for a scalar, else the list/array of ``λ_t``. Checks shapes only,
    so traced arrays pass."""
    if isinstance(scale, (list, tuple)):
        if len(scale) != num_tasks:
            raise MergeError(f"{name}: needs one value per fine-tuned model ({num_tasks}), got {len(scale)}")
        return list(scale)
    shape = tuple(np.shape(scale))
    if shape == ():
        return None
    if shape != (num_tasks,):
        raise MergeError(f"{name}: must be a scalar or have shape ({num_tasks},), got shape {shape}")
    return [scale[t] for t in range(num_tasks)]


def task_arithmetic(pretrained: PyTree, finetuned: Sequence[PyTree], scale=0.3) -> PyTree:
    """``θ_0 + λ Σ_t (θ_t − θ_0)``, or ``θ_0 + Σ_t λ_t (θ_t − θ_0)`` when ``scale`` is a sequence (or a
    1-d array) of one ``λ_t`` per model of ``finetuned``."""
    finetuned = check_finetuned(pretrained, finetuned)
    per_task = check_scale(scale, len(finetuned))
    lambdas = per_task if per_task is not None else [scale] * len(finetuned)

    def merge(p, *xs):
        delta = sum(lam * (x - p) for lam, x in zip(lambdas, xs))
        return (p + delta).astype(p.dtype)

    return jax.tree.map(merge, pretrained, *finetuned)


def negate(pretrained: PyTree, finetuned_one: PyTree, scale=1.0) -> PyTree:
    """``θ_0 − λ (θ_t − θ_0)``: move away from one task's fine-tuning (forget the task)."""
    check_compatible(pretrained, finetuned_one, name="finetuned_one")
    if tuple(np.shape(scale)) != ():
        raise MergeError(f"scale: must be a scalar, got shape {tuple(np.shape(scale))}")
    return jax.tree.map(lambda p, x: (p - scale * (x - p)).astype(p.dtype), pretrained, finetuned_one)

