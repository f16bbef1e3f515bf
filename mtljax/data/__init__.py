"""Datasets: multi-digits (bundled), MultiTab-Bench, scenes and factors (generated), CIFAR100-MTL and CelebA
(tfds), task mixtures; grain pipelines with checkpointable iterators and per-host slices."""

from __future__ import annotations

from mtljax.data.base import ArraySource, Dataset, eval_batches, train_dataset, train_iterator
from mtljax.data.registry import DATASETS, build_dataset

__all__ = ["ArraySource", "DATASETS", "Dataset", "build_dataset", "eval_batches", "train_dataset",
           "train_iterator"]
