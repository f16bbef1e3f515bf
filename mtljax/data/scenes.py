"""Scenes: generated images with per-pixel segmentation, depth and edge targets (dense multi-task, CPU-sized).

A small stand-in for NYUv2 / PASCAL-Context that needs no download and trains on a CPU in minutes.
Every ``image_size × image_size`` RGB image shows a floor receding to the horizon and 1..``max_objects``
shapes (square, disk, upward triangle) standing at random depths ``d ∈ [1.5, 5.5]``:

* an object's apparent size shrinks as ``1/d`` and its colour fades into grey haze with depth, so
  depth can be read from the image (as in real scenes: size and aerial perspective);
* nearer objects occlude farther ones (painted far to near);
* the floor's depth grows linearly from 1.5 at the bottom row to 6 at the top, shaded and textured.

Tasks (all dense, per pixel):

* ``segment``: 4 classes (0 floor, 1 square, 2 disk, 3 triangle); metrics mIoU and pixel accuracy;
* ``depth``: the depth map; L1 loss, metrics absolute and relative error;
* ``edges``: 2 classes, 1 where the segment or the depth changes (> 0.25) between a pixel and one of its
  4 neighbours (occlusion and object boundaries, as PASCAL-Context's edge task); mIoU, pixel accuracy.

Train and test images are drawn from independent random streams of ``config.data.seed``; inputs are
``float32[H, W, 3]`` in [0, 1].
"""

from __future__ import annotations

import numpy as np

from mtljax.config import ConfigError
from mtljax.data.base import ArraySource, Dataset
from mtljax.tasks import Task

CLASSES = ("floor", "square", "disk", "triangle")
_COLOURS = np.array([[0.9, 0.25, 0.2], [0.2, 0.8, 0.3], [0.25, 0.35, 0.95]], np.float32)
_HAZE = np.array([0.62, 0.62, 0.66], np.float32)
NEAR, FAR = 1.5, 6.0


def render(num: int, image_size: int, max_objects: int, rng: np.random.Generator):
    """``num`` scenes: ``(images [N, H, W, 3], segment [N, H, W] int32, depth [N, H, W] float32, edges)``."""
    if image_size < 8:
        raise ConfigError(f"{image_size} is too small for scenes (>= 8)", "image_size")
    if max_objects < 1:
        raise ConfigError(f"must be >= 1, got {max_objects}", "max_objects")
    s = image_size
    yy, xx = np.meshgrid((np.arange(s) + 0.5) / s, (np.arange(s) + 0.5) / s, indexing="ij")
    depth = np.broadcast_to(FAR - (FAR - NEAR) * yy, (num, s, s)).astype(np.float32).copy()
    texture = 0.06 * rng.standard_normal((num, s, s)).astype(np.float32)
    shade = (0.75 - 0.35 * (depth - NEAR) / (FAR - NEAR) + texture)[..., None]
    images = shade * np.array([0.55, 0.5, 0.42], np.float32)
    segment = np.zeros((num, s, s), np.int32)

    count = rng.integers(1, max_objects + 1, num)
    cls = rng.integers(1, len(CLASSES), (num, max_objects))
    d = rng.uniform(NEAR, 5.5, (num, max_objects)).astype(np.float32)
    cx = rng.uniform(0.15, 0.85, (num, max_objects))
    cy = rng.uniform(0.2, 0.85, (num, max_objects))
    radius = 0.42 / d * rng.uniform(0.85, 1.15, (num, max_objects))
    jitter = rng.uniform(-0.08, 0.08, (num, max_objects, 3)).astype(np.float32)
    present = np.arange(max_objects)[None, :] < count[:, None]
    order = np.argsort(-np.where(present, d, -np.inf), axis=1)  # far to near, absent ones last
    n = np.arange(num)
    for j in range(max_objects):
        o = order[:, j]
        c, dj, r = cls[n, o], d[n, o], radius[n, o]
        dx, dy = xx[None] - cx[n, o][:, None, None], yy[None] - cy[n, o][:, None, None]
        rr = r[:, None, None]
        square = (np.abs(dx) < rr) & (np.abs(dy) < rr)
        disk = dx ** 2 + dy ** 2 < rr ** 2
        triangle = (np.abs(dy) < rr) & (np.abs(dx) < (dy + rr) / 2)
        mask = np.where((c == 1)[:, None, None], square, np.where((c == 2)[:, None, None], disk, triangle))
        mask &= present[n, o][:, None, None]
        haze = ((dj - NEAR) / (FAR - NEAR))[:, None]
        colour = (1 - haze) * np.clip(_COLOURS[c - 1] + jitter[n, o], 0, 1) + haze * _HAZE
        images = np.where(mask[..., None], colour[:, None, None, :], images)
        segment = np.where(mask, c[:, None, None], segment)
        depth = np.where(mask, dj[:, None, None], depth)
    images = np.clip(images + 0.02 * rng.standard_normal(images.shape).astype(np.float32), 0, 1)
    return images.astype(np.float32), segment, depth.astype(np.float32), edges_of(segment, depth)


def edges_of(segment: np.ndarray, depth: np.ndarray, depth_step: float = 0.25) -> np.ndarray:
    """1 where a 4-neighbour has another segment or a depth more than ``depth_step`` away."""
    edge = np.zeros(segment.shape, bool)
    for axis in (1, 2):
        ds = np.diff(segment, axis=axis) != 0
        dd = np.abs(np.diff(depth, axis=axis)) > depth_step
        change = ds | dd
        pad_lo = [(0, 0)] * 3
        pad_hi = [(0, 0)] * 3
        pad_lo[axis], pad_hi[axis] = (1, 0), (0, 1)
        edge |= np.pad(change, pad_lo) | np.pad(change, pad_hi)
    return edge.astype(np.int32)


def build(cfg) -> Dataset:
    """Config keys (``config.data``): num_train, num_test, image_size, max_objects, seed."""
    streams = np.random.SeedSequence(cfg.seed).spawn(2)
    splits = {}
    for split, num, seq in (("train", cfg.num_train, streams[0]), ("test", cfg.num_test, streams[1])):
        x, seg, dep, edge = render(num, cfg.image_size, cfg.max_objects, np.random.default_rng(seq))
        splits[split] = ArraySource(x, {"segment": seg, "depth": dep, "edges": edge})
    tasks = (Task("segment", "dense", num_classes=len(CLASSES)), Task("depth", "dense", out_dim=1),
             Task("edges", "dense", num_classes=2))
    return Dataset("scenes", tasks, (cfg.image_size, cfg.image_size, 3), splits)
