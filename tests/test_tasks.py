"""Task losses respect masks; metrics from summed statistics do not depend on batching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax import metrics as mt
from mtljax.tasks import Task


def _outputs(task, n, rng, hw=None):
    shape = (n,) + ((hw, hw) if hw else ()) + (task.head_dim,)
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _targets(task, n, rng, hw=None):
    shape = (n,) + ((hw, hw) if hw else ())
    if task.kind in ("multiclass",) or (task.kind == "dense" and task.num_classes):
        return jnp.asarray(rng.integers(0, task.num_classes, shape))
    if task.kind == "binary":
        return jnp.asarray(rng.integers(0, 2, shape))
    if task.kind == "multilabel":
        return jnp.asarray(rng.integers(0, 2, shape + (task.num_classes,)))
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


TASKS = [
    (Task("b", "binary"), None),
    (Task("m", "multiclass", num_classes=5), None),
    (Task("ml", "multilabel", num_classes=4), None),
    (Task("r", "regression"), None),
    (Task("seg", "dense", num_classes=3), 4),
    (Task("depth", "dense"), 4),
]


@pytest.mark.parametrize("task,hw", TASKS, ids=[t.name for t, _ in TASKS])
def test_masked_examples_do_not_change_loss(task, hw):
    rng = np.random.default_rng(0)
    out, tgt = _outputs(task, 8, rng, hw), _targets(task, 8, rng, hw)
    mask = jnp.asarray([1, 1, 0, 1, 0, 0, 1, 1], jnp.float32)
    keep = np.asarray(mask, bool)
    full = task.loss(out, tgt, mask)
    only_labelled = task.loss(out[keep], tgt[keep], jnp.ones(int(keep.sum())))
    np.testing.assert_allclose(full, only_labelled, rtol=1e-6)
    # corrupting unlabelled targets changes nothing
    garbage = jnp.where(mask.reshape((-1,) + (1,) * (tgt.ndim - 1)) > 0, tgt, tgt * 0 + 1)
    np.testing.assert_allclose(task.loss(out, garbage, mask), full, rtol=1e-6)
    assert float(task.loss(out, tgt, jnp.zeros(8))) == 0.0


@pytest.mark.parametrize("task,hw", TASKS, ids=[t.name for t, _ in TASKS])
def test_metrics_independent_of_batching(task, hw):
    rng = np.random.default_rng(1)
    out, tgt = _outputs(task, 12, rng, hw), _targets(task, 12, rng, hw)
    mask = jnp.asarray(rng.integers(0, 2, 12), jnp.float32).at[0].set(1.0)
    whole = task.finalize(task.stats(out, tgt, mask))
    total = None
    for s in (slice(0, 5), slice(5, 7), slice(7, 12)):
        total = mt.add_stats(total, task.stats(out[s], tgt[s], mask[s]))
    parts = task.finalize(total)
    assert set(whole) == set(task.metrics)
    for k in whole:
        np.testing.assert_allclose(parts[k], whole[k], rtol=1e-5)


def test_reference_values():
    t = Task("m", "multiclass", num_classes=3)
    logits = jnp.log(jnp.asarray([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    np.testing.assert_allclose(t.loss(logits, jnp.asarray([0, 1]), jnp.ones(2)), -(np.log(0.7) + np.log(0.1)) / 2,
                               rtol=1e-6)
    assert t.finalize(t.stats(logits, jnp.asarray([0, 1]), jnp.ones(2)))["accuracy"] == 0.5
    b = Task("b", "binary")
    np.testing.assert_allclose(b.loss(jnp.zeros((3, 1)), jnp.asarray([0, 1, 1]), jnp.ones(3)), np.log(2), rtol=1e-6)
    seg = Task("s", "dense", num_classes=2)
    pred = jax.nn.one_hot(jnp.asarray([[[0, 1], [1, 1]]]), 2) * 10
    stats = seg.stats(pred, jnp.asarray([[[0, 1], [0, 1]]]), jnp.ones(1))
    # class 0: inter 1, union 2; class 1: inter 2, union 3
    np.testing.assert_allclose(seg.finalize(stats)["miou"], (1 / 2 + 2 / 3) / 2, rtol=1e-6)
    assert b.directions() == {"accuracy": True}
    assert Task("r", "regression").directions() == {"mse": False, "mae": False}


def test_bad_task_specs():
    with pytest.raises(ValueError, match="unknown kind"):
        Task("x", "ranking")
    with pytest.raises(ValueError, match="num_classes"):
        Task("x", "multiclass")
    with pytest.raises(ValueError, match="unknown metric"):
        Task("x", "binary", metrics=("auc",))
