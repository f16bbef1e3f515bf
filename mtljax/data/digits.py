"""Multi-digits: two overlapping handwritten digits per image, MultiMNIST-style, bundled data only.

Source digits are scikit-learn's bundled 8×8 handwritten digits (1,797 images, values 0–16; no
download). The source images are split once, by a fixed seed, into disjoint train and test pools
(``test_fraction`` of them for test), so no source digit appears in both splits. Each example places
one digit from its split's pool at the left of an ``image_size × image_size`` canvas and another at
the right, each at a random offset (rows anywhere, columns within ``jitter`` pixels of their side);
they overlap in the middle and the canvas keeps the brighter pixel. Tasks: ``left`` and ``right``
digit class (10-way each). Pixels are scaled to [0, 1]; inputs are ``float32[H, W, C]`` with ``C =
config.data.channels`` (1 by default; 3 repeats the grey canvas in every channel, so a model made for
RGB images, e.g. one pretrained on ``factors``, reads digits unchanged: ``configs/merge/``).
``config.data.upscale = k`` draws the canvas at ``image_size / k`` and enlarges every pixel to a
``k × k`` block (``image_size`` 32 with ``upscale`` 2: the 16-pixel canvas of the default config, at
the 32×32 input size of the factors ViT).
"""

from __future__ import annotations

import numpy as np

from mtljax.config import ConfigError
from mtljax.data.base import ArraySource, Dataset
from mtljax.tasks import Task

DIGIT = 8  # side of a source digit


def load_digit_pools(test_fraction: float, seed: int = 0):
    """The bundled digits split into disjoint (train, test) pools of (images, labels)."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = raw.images.astype(np.float32) / 16.0
    labels = raw.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(round(len(images) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (images[train], labels[train]), (images[test], labels[test])


def compose(images, labels, num: int, image_size: int, jitter: int, rng: np.random.Generator):
    """``num`` two-digit canvases from a pool; returns (inputs, left labels, right labels)."""
    if image_size < DIGIT + jitter:
        raise ConfigError(f"{image_size} is too small for {DIGIT}px digits and jitter {jitter}", "image_size")
    left_id = rng.integers(0, len(images), num)
    right_id = rng.integers(0, len(images), num)
    rows_l = rng.integers(0, image_size - DIGIT + 1, num)
    rows_r = rng.integers(0, image_size - DIGIT + 1, num)
    cols_l = rng.integers(0, jitter + 1, num)
    cols_r = image_size - DIGIT - rng.integers(0, jitter + 1, num)
    canvas = np.zeros((num, image_size, image_size), np.float32)
    ar = np.arange(DIGIT)
    n = np.arange(num)[:, None, None]
    for ids, rows, cols in ((left_id, rows_l, cols_l), (right_id, rows_r, cols_r)):
        r = rows[:, None, None] + ar[None, :, None]
        c = cols[:, None, None] + ar[None, None, :]
        canvas[n, r, c] = np.maximum(canvas[n, r, c], images[ids])
    return canvas[..., None], labels[left_id], labels[right_id]


def build(cfg) -> Dataset:
    """Config keys (``config.data``): num_train, num_test, image_size, jitter, test_fraction, seed, channels,
    upscale."""
    channels = cfg.get("channels", 1)
    if channels not in (1, 3):
        raise ConfigError(f"must be 1 (grey) or 3 (grey repeated as RGB), got {channels!r}", "channels")
    upscale = cfg.get("upscale", 1)
    if not isinstance(upscale, int) or upscale < 1 or cfg.image_size % upscale:
        raise ConfigError(f"must be an integer >= 1 dividing image_size {cfg.image_size}, got {upscale!r}", "upscale")
    (tr_img, tr_lab), (te_img, te_lab) = load_digit_pools(cfg.test_fraction, seed=0)
    rng = np.random.default_rng(cfg.seed)
    splits = {}
    for split, (img, lab, num) in {
        "train": (tr_img, tr_lab, cfg.num_train),
        "test": (te_img, te_lab, cfg.num_test),
    }.items():
        x, left, right = compose(img, lab, num, cfg.image_size // upscale, cfg.jitter, rng)
        if upscale > 1:  # every pixel of the smaller canvas becomes an upscale × upscale block
            x = x.repeat(upscale, axis=1).repeat(upscale, axis=2)
        if channels > 1:
            x = np.repeat(x, channels, axis=-1)
        splits[split] = ArraySource(x, {"left": left, "right": right})
    tasks = (Task("left", "multiclass", num_classes=10), Task("right", "multiclass", num_classes=10))
    return Dataset("multi_digits", tasks, (cfg.image_size, cfg.image_size, channels), splits)
