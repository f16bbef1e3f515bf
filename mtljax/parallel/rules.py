"""Logical axis rules: which mesh axis each logical parameter/activation axis is sharded over.

Modules name their axes (``embed``, ``mlp``, ``heads``, ``exp``...); a rule list maps each logical name
to a mesh axis (or ``None`` = replicated). The defaults shard the batch over ``data`` (and ``expert``,
so expert-parallel layers see every device as a data shard outside the experts), experts over
``expert``, and the wide MLP / head dimensions over ``model`` (tensor parallelism; size 1 by default).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from mtljax.config import ConfigError

DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("act_batch", ("data", "expert")),
    ("act_len", None),
    ("act_embed", None),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("exp", "expert"),
    ("attn_exp", None),
    ("task_exp", None),
    ("classes", None),
    ("patch", None),
    ("tokens", None),
    ("features", None),
    ("hidden", None),
    ("hidden_in", None),
    ("conv_in", None),
)


def rules_from_config(rules: Sequence | None) -> tuple:
    """Rules given in a config as ``[[logical, mesh_axis_or_list_or_None], ...]`` (or the defaults)."""
    if not rules:
        return DEFAULT_RULES
    out = []
    for item in rules:
        if len(item) != 2:
            raise ConfigError(f"each rule is [logical_name, mesh_axis], got {item!r}", "rules")
        name, axis = item
        out.append((name, tuple(axis) if isinstance(axis, (list, tuple)) else axis))
    return tuple(out)


def _filter_rules(rules, mesh: jax.sharding.Mesh):
    """Drop mesh axes the mesh does not have (e.g. ``expert`` on a data-only mesh)."""
    names = set(mesh.axis_names)
    out = []
    for logical, axis in rules:
        if isinstance(axis, tuple):
            kept = tuple(a for a in axis if a in names)
            axis = kept if len(kept) > 1 else (kept[0] if kept else None)
        elif axis is not None and axis not in names:
            axis = None
        out.append((logical, axis))
    return tuple(out)


def batch_spec(mesh: jax.sharding.Mesh, rules=DEFAULT_RULES) -> P:
    """PartitionSpec of the leading (batch) axis of input arrays."""
    return nn.logical_to_mesh_axes(("act_batch",), _filter_rules(rules, mesh))


def batch_sharding(mesh: jax.sharding.Mesh, rules=DEFAULT_RULES) -> NamedSharding:
    return NamedSharding(mesh, batch_spec(mesh, rules))


def batch_shards(mesh: jax.sharding.Mesh, rules=DEFAULT_RULES) -> int:
    """How many ways the batch axis is split (the batch size must be a multiple)."""
    axis = batch_spec(mesh, rules)[0]
    axes = (axis,) if isinstance(axis, str) else (axis or ())
    n = 1
    for a in axes:
        n *= mesh.shape[a]
    return n


def tree_shardings(abstract_tree, mesh: jax.sharding.Mesh, rules=DEFAULT_RULES):
    """NamedShardings for a pytree whose leaves may be ``nn.LogicallyPartitioned`` boxes."""
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, _filter_rules(rules, mesh))


def filtered(rules, mesh):
    return _filter_rules(rules, mesh)
