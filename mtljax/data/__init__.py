"""Datasets by name. Each entry is a module with ``build(config.data) -> Dataset``."""

from __future__ import annotations

import importlib

from mtljax.data.base import ArraySource, Dataset, eval_batches, train_dataset, train_iterator

DATASETS = {
    "multi_digits": "mtljax.data.digits",
    "multitab": "mtljax.data.multitab",
    "cifar100_mtl": "mtljax.data.cifar100_mtl",
    "celeba": "mtljax.data.celeba",
    "scenes": "mtljax.data.scenes",
    "mixture": "mtljax.data.mixture",
}


def build_dataset(data_config) -> Dataset:
    """Build the dataset named by ``data_config.name``."""
    name = data_config.name
    if name not in DATASETS:
        raise ValueError(f"config.data.name: unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    return importlib.import_module(DATASETS[name]).build(data_config)


__all__ = ["ArraySource", "DATASETS", "Dataset", "build_dataset", "eval_batches", "train_dataset",
           "train_iterator"]
