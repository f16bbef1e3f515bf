"""Task specification: what a task predicts, how it is scored, and which way is better.

The trainer, the heads and the metrics only ever see a task through :class:`Task`. A task has a
*kind*, and the kind fixes the head's output, the loss and the default metrics:

=============  ===================  ==========================  ==================================
kind           head output          loss                        default metrics (direction)
=============  ===================  ==========================  ==================================
binary         1 logit              sigmoid cross-entropy       accuracy (+)
multiclass     ``num_classes``      softmax cross-entropy       accuracy (+)
multilabel     ``num_classes``      mean sigmoid cross-entropy  accuracy (+), f1 (+, micro)
regression     ``out_dim`` values   mean squared error          mse (-), mae (-)
dense          per-pixel, ``num_classes`` classes (segmentation) or ``out_dim`` values (depth...)
               segmentation: softmax CE, metrics miou (+), pixel_acc (+);
               regression: L1, metrics abs_err (-), rel_err (-)
=============  ===================  ==========================  ==================================

Partial labels: every batch carries ``masks[task]`` (1 = labelled). Masks have shape ``(B,)`` or the
shape of the target (per-pixel masks for dense tasks). Losses are masked means; metrics are built from
masked *sufficient statistics* (sums) that add up exactly across batches and devices, so the
evaluation of a split does not depend on how it was batched.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

KINDS = ("binary", "multiclass", "multilabel", "regression", "dense")
Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric computed from summed statistics. ``higher_is_better`` gives its direction."""

    name: str
    higher_is_better: bool
    stats: Callable[["Task", Array, Array, Array], dict[str, Array]]  # (task, out, target, mask)
    finalize: Callable[[Mapping[str, Array]], float]


@dataclasses.dataclass(frozen=True)
class Task:
    """One prediction task.

    Attributes:
      name: unique name; also the key of the task's targets, masks and outputs.
      kind: one of ``KINDS``.
      num_classes: classes (multiclass, dense segmentation) or labels (multilabel).
      out_dim: values per example (regression) or per pixel (dense regression).
      metrics: metric names; default by kind (see the module docstring).
    """

    name: str
    kind: str
    num_classes: int = 0
    out_dim: int = 1
    metrics: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: unknown kind {self.kind!r}; choose from {KINDS}")
        if self.kind in ("multiclass", "multilabel") and self.num_classes < 2:
            raise ValueError(f"task {self.name!r}: kind {self.kind} needs num_classes >= 2")
        if self.out_dim < 1:
            raise ValueError(f"task {self.name!r}: out_dim must be >= 1, got {self.out_dim}")
        if not self.metrics:
            object.__setattr__(self, "metrics", _DEFAULT_METRICS[self._family])
        for m in self.metrics:
            if m not in METRICS:
                raise ValueError(f"task {self.name!r}: unknown metric {m!r}; choose from {sorted(METRICS)}")

    @property
    def _family(self) -> str:
        if self.kind == "dense":
            return "dense_seg" if self.num_classes > 0 else "dense_reg"
        return self.kind

    @property
    def is_dense(self) -> bool:
        return self.kind == "dense"

    @property
    def head_dim(self) -> int:
        """Number of outputs of the head (per example, or per pixel for dense tasks)."""
        if self.kind == "binary":
            return 1
        if self.kind in ("multiclass", "multilabel") or (self.kind == "dense" and self.num_classes):
            return self.num_classes
        return self.out_dim

    def directions(self) -> dict[str, bool]:
        """Metric name -> True when higher is better."""
        return {m: METRICS[m].higher_is_better for m in self.metrics}

    # ----------------------------------------------------------------------------------------- loss
    def loss(self, out: Array, target: Array, mask: Array) -> Array:
        """Masked mean loss of one batch (a scalar; 0 when nothing in the batch is labelled)."""
        elem = self.elementwise_loss(out, target)
        m = broadcast_mask(mask, elem)
        return jnp.sum(elem * m) / jnp.maximum(jnp.sum(m), 1.0)

    def elementwise_loss(self, out: Array, target: Array) -> Array:
        out = out.astype(jnp.float32)
        fam = self._family
        if fam == "binary":
            return _sigmoid_ce(out[..., 0], target.astype(jnp.float32))
        if fam in ("multiclass", "dense_seg"):
            logp = jax.nn.log_softmax(out, axis=-1)
            return -jnp.take_along_axis(logp, target.astype(jnp.int32)[..., None], axis=-1)[..., 0]
        if fam == "multilabel":
            return jnp.mean(_sigmoid_ce(out, target.astype(jnp.float32)), axis=-1)
        target = _match_regression(out, target)
        if fam == "regression":
            return jnp.mean(jnp.square(out - target), axis=-1)
        return jnp.mean(jnp.abs(out - target), axis=-1)  # dense_reg

    def predict(self, out: Array) -> Array:
        fam = self._family
        if fam == "binary":
            return (out[..., 0] > 0).astype(jnp.int32)
        if fam in ("multiclass", "dense_seg"):
            return jnp.argmax(out, axis=-1)
        if fam == "multilabel":
            return (out > 0).astype(jnp.int32)
        return out

    def stats(self, out: Array, target: Array, mask: Array) -> dict[str, dict[str, Array]]:
        """Summed statistics of every metric of this task for one batch."""
        return {m: METRICS[m].stats(self, out, target, mask) for m in self.metrics}

    def finalize(self, stats: Mapping[str, Mapping[str, Array]]) -> dict[str, float]:
        return {m: float(METRICS[m].finalize(stats[m])) for m in self.metrics}


def broadcast_mask(mask: Array, like: Array) -> Array:
    """Expand a ``(B,)`` mask (or one already shaped like ``like``) to ``like``'s shape."""
    mask = mask.astype(jnp.float32)
    mask = mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))
    return jnp.broadcast_to(mask, like.shape)


def _sigmoid_ce(logits: Array, labels: Array) -> Array:
    return jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def _match_regression(out: Array, target: Array) -> Array:
    target = target.astype(jnp.float32)
    return target[..., None] if target.ndim == out.ndim - 1 else target


# ------------------------------------------------------------------------------------------ metrics
def _safe_div(a, b):
    return a / max(float(b), 1e-12) if float(b) > 0 else float("nan")


def _accuracy_stats(task: Task, out, target, mask):
    pred = task.predict(out)
    correct = (pred == target.astype(pred.dtype)).astype(jnp.float32)
    m = broadcast_mask(mask, correct)
    return {"sum": jnp.sum(correct * m), "count": jnp.sum(m)}


def _ratio(stats):
    return _safe_div(stats["sum"], stats["count"])


def _f1_stats(task: Task, out, target, mask):
    pred = task.predict(out).astype(jnp.float32)
    target = target.astype(jnp.float32)
    m = broadcast_mask(mask, pred)
    return {
        "tp": jnp.sum(pred * target * m),
        "fp": jnp.sum(pred * (1 - target) * m),
        "fn": jnp.sum((1 - pred) * target * m),
    }


def _f1(stats):
    tp, fp, fn = (float(stats[k]) for k in ("tp", "fp", "fn"))
    return _safe_div(2 * tp, 2 * tp + fp + fn)


def _err_stats(power: int, relative: bool = False):
    def stats(task: Task, out, target, mask):
        out = out.astype(jnp.float32)
        target = _match_regression(out, target)
        err = jnp.abs(out - target) ** power
        if relative:
            err = err / jnp.maximum(jnp.abs(target), 1e-6)
        err = jnp.mean(err, axis=-1)
        m = broadcast_mask(mask, err)
        return {"sum": jnp.sum(err * m), "count": jnp.sum(m)}

    return stats


def _miou_stats(task: Task, out, target, mask):
    pred = jax.nn.one_hot(task.predict(out), task.num_classes)
    true = jax.nn.one_hot(target.astype(jnp.int32), task.num_classes)
    m = broadcast_mask(mask, pred[..., 0])[..., None]
    axes = tuple(range(pred.ndim - 1))
    inter = jnp.sum(pred * true * m, axis=axes)
    union = jnp.sum(jnp.maximum(pred, true) * m, axis=axes)
    return {"inter": inter, "union": union}


def _miou(stats):
    union = jnp.asarray(stats["union"])
    present = union > 0
    iou = jnp.where(present, jnp.asarray(stats["inter"]) / jnp.maximum(union, 1e-12), 0.0)
    n = float(jnp.sum(present))
    return float(jnp.sum(iou)) / n if n else float("nan")


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", True, _accuracy_stats, _ratio),
    "pixel_acc": Metric("pixel_acc", True, _accuracy_stats, _ratio),
    "f1": Metric("f1", True, _f1_stats, _f1),
    "mse": Metric("mse", False, _err_stats(2), _ratio),
    "mae": Metric("mae", False, _err_stats(1), _ratio),
    "abs_err": Metric("abs_err", False, _err_stats(1), _ratio),
    "rel_err": Metric("rel_err", False, _err_stats(1, relative=True), _ratio),
    "miou": Metric("miou", True, _miou_stats, _miou),
}

_DEFAULT_METRICS = {
    "binary": ("accuracy",),
    "multiclass": ("accuracy",),
    "multilabel": ("accuracy", "f1"),
    "regression": ("mse", "mae"),
    "dense_seg": ("miou", "pixel_acc"),
    "dense_reg": ("abs_err", "rel_err"),
}
