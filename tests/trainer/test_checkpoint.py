"""Checkpointer: the train state and the grain iterator, saved together and restored together."""

import os

import grain
import jax.numpy as jnp
import numpy as np

from mtljax.trainer.checkpoint import Checkpointer


def _iterator():
    return iter(grain.MapDataset.range(100).shuffle(seed=3).batch(4).to_iter_dataset())


def test_iterator_resumes_where_it_was_saved(tmp_path):
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.asarray(7)}
    it = _iterator()
    for _ in range(5):
        next(it)
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2, async_save=True)
    ckpt.save(5, state, it)
    expected = [next(it) for _ in range(3)]  # advancing right after save does not change what was saved
    ckpt.wait()
    ckpt.close()
    assert os.path.exists(tmp_path / "ckpt" / "5" / "data" / "process_0-of-1.json")

    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
    fresh = _iterator()
    restored = ckpt.restore(ckpt.latest_step(), state, fresh)
    for want in expected:
        assert np.array_equal(next(fresh), want)
    assert np.array_equal(restored["w"], state["w"]) and int(restored["step"]) == 7
    # without an iterator only the state is read (evaluation, slimming, routing reports)
    assert np.array_equal(ckpt.restore(5, state)["w"], state["w"])
    ckpt.close()
