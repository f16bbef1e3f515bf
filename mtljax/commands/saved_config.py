"""A run's saved ``config.json`` as a config file: ``--config=<this file>:<run>/config.json``.

``mtljax eval`` / ``routing`` / ``slim`` given ``--workdir`` and no ``--config`` read the run's own
``config.json`` through this loader (the run directories ``mtljax merge`` writes have no config file
of their own). The saved values go over :func:`mtljax.config.base_config`, so keys added to mtljax
since the run was written keep their defaults.
"""

from __future__ import annotations

import copy
import json

import ml_collections as mlc

from mtljax.config import base_config


def update_config(node: mlc.ConfigDict, values: dict) -> None:
    """Set ``values`` (nested dicts, e.g. a saved config.json) into ``node``, section by section; keys
    ``node`` lacks are added."""
    for k, v in values.items():
        if isinstance(v, dict) and k in node and isinstance(node[k], mlc.ConfigDict):
            update_config(node[k], v)
        else:
            node[k] = copy.deepcopy(v)


def get_config(path=None):
    if not path:
        raise ValueError("saved_config.py needs the path of a run's config.json after ':'")
    with open(path) as f:
        saved = json.load(f)
    saved.pop("state_format", None)
    saved.pop("dist", None)  # how the run's processes found each other is not this command's business
    c = base_config()
    update_config(c, saved)
    return c
