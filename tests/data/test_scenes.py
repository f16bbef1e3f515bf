"""Scenes: deterministic, fresh test images, targets consistent with what is drawn."""

import ml_collections as mlc
import numpy as np
import pytest

from mtljax.data import build_dataset
from mtljax.data.scenes import FAR, NEAR, edges_of, render


def _cfg(**kw):
    c = dict(name="scenes", num_train=200, num_test=50, image_size=32, max_objects=4, seed=0)
    c.update(kw)
    return mlc.ConfigDict(c)


def test_build_shapes_tasks_and_determinism():
    ds = build_dataset(_cfg())
    assert [t.name for t in ds.tasks] == ["segment", "depth", "edges"]
    assert all(t.is_dense for t in ds.tasks) and ds.input_shape == (32, 32, 3)
    b = ds.splits["train"].get_batch(np.arange(8))
    assert b["inputs"].shape == (8, 32, 32, 3) and b["inputs"].dtype == np.float32
    assert b["targets"]["segment"].shape == (8, 32, 32) and b["targets"]["depth"].dtype == np.float32
    again = build_dataset(_cfg()).splits["train"].get_batch(np.arange(8))
    np.testing.assert_array_equal(b["inputs"], again["inputs"])
    other = build_dataset(_cfg(seed=1)).splits["train"].get_batch(np.arange(8))
    assert not np.array_equal(b["inputs"], other["inputs"])
    test = ds.splits["test"].get_batch(np.arange(50))["inputs"]
    train = ds.splits["train"].get_batch(np.arange(200))["inputs"]
    assert not any((np.abs(train - t).max(axis=(1, 2, 3)) < 1e-6).any() for t in test)  # no copies


def test_targets_describe_the_scene():
    x, seg, depth, edges = render(300, 32, 3, np.random.default_rng(0))
    assert set(np.unique(seg)) == {0, 1, 2, 3}
    assert NEAR <= depth.min() and depth.max() <= FAR
    floor = seg == 0
    rows = np.broadcast_to(np.arange(32)[None, :, None], seg.shape)
    # the floor recedes: its depth falls from the top row to the bottom row
    assert depth[floor & (rows == 0)].mean() > depth[floor & (rows == 31)].mean() + 3
    # an object has one depth, and the farther it stands the smaller it looks
    sizes, depths = [], []
    for i in range(300):
        for c in (1, 2, 3):
            m = seg[i] == c
            if m.sum() and len(np.unique(depth[i][m])) == 1:
                sizes.append(m.sum())
                depths.append(depth[i][m][0])
    assert np.corrcoef(np.log(sizes), np.log(depths))[0, 1] < -0.5
    # edges are exactly the pixels next to a change of segment or of depth
    np.testing.assert_array_equal(edges, edges_of(seg, depth))
    assert 0.02 < edges.mean() < 0.3


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="image_size"):
        render(2, 4, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="max_objects"):
        render(2, 16, 0, np.random.default_rng(0))
