"""Multi-digits: disjoint source pools, labels match the digits placed, deterministic."""

import ml_collections as mlc
import numpy as np
import pytest

from mtljax.data import build_dataset
from mtljax.data.digits import compose, load_digit_pools


def _cfg(**kw):
    c = dict(name="multi_digits", num_train=300, num_test=100, image_size=16, jitter=3, test_fraction=0.3, seed=0)
    c.update(kw)
    return mlc.ConfigDict(c)


def test_source_pools_are_disjoint():
    from sklearn.datasets import load_digits

    raw = load_digits().images.astype(np.float32) / 16.0
    (tr, _), (te, _) = load_digit_pools(0.3)
    assert len(tr) + len(te) == len(raw)
    assert len(te) == round(0.3 * len(raw))
    # every source image is used by exactly one split (matched by content, index-free)
    keys = lambda imgs: {im.tobytes() for im in imgs}  # noqa: E731
    all_keys = [im.tobytes() for im in raw]
    dup = {k for k in all_keys if all_keys.count(k) > 1}
    assert not (keys(tr) & keys(te)) - dup


def test_labels_match_placed_digits():
    (img, lab), _ = load_digit_pools(0.3)
    rng = np.random.default_rng(0)
    x, left, right = compose(img, lab, 50, image_size=16, jitter=0, rng=rng)
    assert x.shape == (50, 16, 16, 1) and x.dtype == np.float32
    lookup = {im.tobytes(): l for im, l in zip(img, lab)}
    for i in range(50):
        for half, label in ((x[i, :, :8, 0], left[i]), (x[i, :, 8:, 0], right[i])):
            rows = [r for r in range(9) if half[r:r + 8].tobytes() in lookup]
            assert rows, "placed digit not found"
            assert any(lookup[half[r:r + 8].tobytes()] == label for r in rows)


def test_dataset_shapes_and_determinism():
    a, b = build_dataset(_cfg()), build_dataset(_cfg())
    assert [t.name for t in a.tasks] == ["left", "right"]
    assert a.input_shape == (16, 16, 1)
    ba, bb = a.splits["test"].get_batch(np.arange(10)), b.splits["test"].get_batch(np.arange(10))
    np.testing.assert_array_equal(ba["inputs"], bb["inputs"])
    np.testing.assert_array_equal(ba["targets"]["left"], bb["targets"]["left"])
    assert 0.0 <= ba["inputs"].min() and ba["inputs"].max() <= 1.0
    c = build_dataset(_cfg(seed=1)).splits["test"].get_batch(np.arange(10))
    assert not np.array_equal(c["inputs"], ba["inputs"])


def test_too_small_canvas():
    with pytest.raises(ValueError, match="image_size"):
        build_dataset(_cfg(image_size=9, jitter=3))


def test_rgb_and_upscaled_canvas_is_the_small_one_enlarged():
    small = build_dataset(_cfg()).splits["test"].get_batch(np.arange(6))
    big = build_dataset(_cfg(image_size=32, upscale=2, channels=3)).splits["test"].get_batch(np.arange(6))
    assert big["inputs"].shape == (6, 32, 32, 3)
    want = np.kron(small["inputs"][..., 0], np.ones((2, 2), np.float32))  # each pixel a 2 x 2 block
    for c in range(3):
        np.testing.assert_array_equal(big["inputs"][..., c], want)
    np.testing.assert_array_equal(big["targets"]["left"], small["targets"]["left"])
    with pytest.raises(ValueError, match="config.data.upscale"):
        build_dataset(_cfg(image_size=32, upscale=3))
    with pytest.raises(ValueError, match="config.data.channels"):
        build_dataset(_cfg(channels=2))
