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
    module = importlib.import_module(DATASETS[name])
    shots = data_config.get("shots", 0)
    if shots and not getattr(module, "FEW_SHOT", False):
        raise ConfigError(f"{name} has no few-shot training sets (data.shots is for factors); set it to 0", "shots")
    return module.build(data_config)


def default_task_names(data_config) -> tuple[str, ...] | None:
    """The names of the tasks a dataset has when ``config.data.tasks`` is empty, from ``data_config``
    (a ``config.data`` or its JSON dict) without building the dataset: for the datasets whose module
    defines ``default_task_names(data_config)``; ``None`` for the others (and unknown names)."""
    name = data_config.get("name")
    if name not in DATASETS:
        return None
    fn = getattr(importlib.import_module(DATASETS[name]), "default_task_names", None)
    return tuple(fn(data_config)) if fn is not None else None
