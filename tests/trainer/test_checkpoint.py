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


def test_newest_good_step_moves_unusable_ones_aside(tmp_path):
    """A non-finite step is moved aside in one line and the iterator follows the step used; with no
    usable step the iterator is back where it was; a moved step number can be saved again."""
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=3)
    it, good = _iterator(), {"w": jnp.ones(3)}
    next(it)
    ckpt.save(1, good, it)
    expected = next(it)  # what follows step 1
    ckpt.save(2, {"w": jnp.array([1.0, jnp.nan, 1.0])}, it)
    ckpt.close()
    assert all(os.path.exists(tmp_path / "ckpt" / s / "checksums.json") for s in ("1", "2"))

    ckpt, fresh, lines = Checkpointer(str(tmp_path / "ckpt"), keep=3), _iterator(), []
    step, state = ckpt.restore_newest_good(good, fresh, lines.append)
    assert step == 1 and np.array_equal(state["w"], good["w"]) and np.array_equal(next(fresh), expected)
    assert lines == [(f"warning: checkpoint step 2 in {tmp_path}/ckpt is unusable (non-finite values in ['w']); "
                      f"moved to {tmp_path}/ckpt_unusable/2; resuming from step 1")]
    assert ckpt.manager.all_steps() == [1] and os.listdir(tmp_path / "ckpt_unusable" / "2")
    ckpt.save(2, good, fresh)  # the same step number again
    ckpt.close()

    os.remove(tmp_path / "ckpt" / "1" / "state" / "_METADATA")
    os.remove(tmp_path / "ckpt" / "2" / "data" / "process_0-of-1.json")
    ckpt, fresh, lines = Checkpointer(str(tmp_path / "ckpt"), keep=3), _iterator(), []
    assert ckpt.restore_newest_good(good, fresh, lines.append) == (None, None)
    assert np.array_equal(next(fresh), next(_iterator()))
    assert [line.split("(")[1].split(")")[0] for line in lines] == [
        "missing data/process_0-of-1.json", "missing state/_METADATA"]
    assert all(line.endswith("starting from step 0") for line in lines)
    assert sorted(os.listdir(tmp_path / "ckpt_unusable")) == ["1", "2", "2.2"] and ckpt.latest_step() is None
    ckpt.close()
