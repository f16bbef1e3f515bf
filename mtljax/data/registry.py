"""Datasets by name (``config.data.name``). Each entry is a module with ``build(config.data) -> Dataset``."""

from __future__ import annotations

import importlib

from mtljax.config import ConfigError, section
from mtljax.data.base import Dataset

DATASETS = {
    "multi_digits": "mtljax.data.digits",
    "multitab": "mtljax.data.multitab",
    "cifar100_mtl": "mtljax.data.cifar100_mtl",
    "celeba": "mtljax.data.celeba",
    "scenes": "mtljax.data.scenes",
    "factors": "mtljax.data.factors",
    "mixture": "mtljax.data.mixture",
}


def build_dataset(data_config) -> Dataset:
    """Build the dataset named by ``data_config.name`` (``config.data``). A bad argument raises
    :class:`~mtljax.config.ConfigError` naming its key (``config.data.<key>: ...``)."""
    with section("data"):
        return build_section(data_config)


def build_section(data_config) -> Dataset:
    """:func:`build_dataset` with keys relative to the given section (mixture components)."""
    name = data_config.name
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}", "name")
    return importlib.import_module(DATASETS[name]).build(data_config)
