"""CelebA: 40 binary face-attribute tasks (Liu et al., 2015), the classic multi-task benchmark.

Each of CelebA's ~200k aligned face photos (218 × 178 pixels) is annotated with 40 yes/no
attributes (``Smiling``, ``Eyeglasses``, ``Male``, ...); every attribute is one ``binary`` task, named
by the attribute in lower case (``smiling``, ``5_o_clock_shadow``). All images carry all 40 labels, so
masks are all ones. ``config.data.attributes`` (optional list, any case) keeps only some attributes
as tasks.

Data is read through ``tfds.data_source('celeb_a')`` (prepared once, array_record format) with its
official splits ``train`` (162,770), ``validation`` (19,867) and ``test`` (19,962). Pre-processing is
done in numpy, without TensorFlow: the central 178 × 178 square is cropped, then resized to
``config.data.image_size`` (default 64) by *area averaging* — each output pixel is the mean of the
source pixels its footprint covers (fractional overlaps weighted), written as two small matrices
``R`` so that a batch resizes as ``R @ image @ Rᵀ``. Inputs are ``float32[S, S, 3]`` in [0, 1].
"""

from __future__ import annotations

import numpy as np

from mtljax.config import ConfigError
from mtljax.data.base import Dataset
from mtljax.data.tfds_util import open_source, read_examples
from mtljax.tasks import Task

TFDS_NAME = "celeb_a"
SPLITS = ("train", "validation", "test")
ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)


def area_matrix(src: int, dst: int) -> np.ndarray:
    """``dst × src`` matrix averaging a length-``src`` signal onto ``dst`` equal cells (rows sum to 1)."""
    edges = np.arange(dst + 1, dtype=np.float64) * (src / dst)  # output cell borders in source units
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = np.arange(src, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(hi, pix + 1) - np.maximum(lo, pix), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def center_crop_resize(images: np.ndarray, size: int) -> np.ndarray:
    """``uint8[B, H, W, C]`` -> ``float32[B, size, size, C]`` in [0, 1]: central square, area resize."""
    _, h, w, _ = images.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = images[:, top:top + side, left:left + side].astype(np.float32) / 255.0
    if side == size:
        return square
    r = area_matrix(side, size)
    return np.einsum("ih,bhwc,jw->bijc", r, square, r, optimize=True).astype(np.float32)


def select_attributes(requested) -> tuple[str, ...]:
    """The tfds attribute names for ``config.data.attributes`` (any case); all 40 when empty."""
    if not requested:
        return ATTRIBUTES
    by_lower = {a.lower(): a for a in ATTRIBUTES}
    unknown = [a for a in requested if str(a).lower() not in by_lower]
    if unknown:
        raise ConfigError(f"unknown CelebA attribute(s) {unknown}; choose from {sorted(by_lower)}", "attributes")
    chosen = [by_lower[str(a).lower()] for a in requested]
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"repeated attribute(s) in {list(requested)}", "attributes")
    return tuple(chosen)


class CelebASource:
    """One CelebA split; ``get_batch`` reads the examples in one call, then crops and resizes them."""

    def __init__(self, source, attributes: tuple[str, ...], image_size: int):
        self._source = source
        self._attributes = attributes
        self._size = image_size

    def __len__(self) -> int:
        return len(self._source)

    def get_batch(self, indices: np.ndarray) -> dict:
        records = read_examples(self._source, indices)
        n = len(records)
        if n:
            x = center_crop_resize(np.stack([np.asarray(r["image"]) for r in records]), self._size)
            labels = np.array([[bool(r["attributes"][a]) for a in self._attributes] for r in records],
                              np.int32)
        else:
            x = np.zeros((0, self._size, self._size, 3), np.float32)
            labels = np.zeros((0, len(self._attributes)), np.int32)
        names = [a.lower() for a in self._attributes]
        return {
            "inputs": x,
            "targets": {name: labels[:, i] for i, name in enumerate(names)},
            "masks": {name: np.ones(n, np.float32) for name in names},
        }


def build(cfg) -> Dataset:
    """Config keys (``config.data``): data_dir (empty = tfds' default), image_size (default 64),
    attributes (optional list of attribute names; empty = all 40)."""
    size = int(cfg.get("image_size", 64))
    if not 1 <= size <= 178:
        raise ConfigError(f"{size}: CelebA images are resized to 1..178 pixels", "image_size")
    attributes = select_attributes(list(cfg.get("attributes", ()) or ()))
    data_dir = cfg.get("data_dir", "") or None
    splits = {
        split: CelebASource(open_source("celeba", TFDS_NAME, split, data_dir), attributes, size)
        for split in SPLITS
    }
    tasks = tuple(Task(a.lower(), "binary") for a in attributes)
    return Dataset("celeba", tasks, (size, size, 3), splits, info={"attributes": attributes})
