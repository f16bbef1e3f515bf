"""Start a run from another run's checkpoint (``config.init``): pretrain, then adapt.

``config.init.checkpoint`` names an earlier run directory (or its ``checkpoints/`` folder) and
``config.init.step`` one of its steps (``0``: the newest). A fresh run then starts from the parameters
the two trees share *by path* (``backbone/block0/attention/query/kernel``): those are *loaded*; the
model's parameters the checkpoint lacks (new heads, LoRA factors, prompts) keep their fresh
initialisation (*new*); the checkpoint's parameters the model lacks (the pretraining heads) are
*ignored*. The optimizer state starts fresh. A parameter present in both with another shape is an
error naming its path, raised by :func:`plan` when the experiment is built: before compilation and
before anything is written. The source checkpoint is opened read-only and never modified; only the
parameters that are loaded are read (an orbax partial restore), placed straight onto the mesh.

A run that already has checkpoints of its own resumes from them and ignores ``config.init``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mtljax.config import ConfigError, require
from mtljax.optim.trainable import path_string


@dataclasses.dataclass(frozen=True)
class InitPlan:
    """What :func:`load` will do: the source state directory and the parameter paths by fate."""

    state_dir: str
    step: int
    loaded: tuple[str, ...]
    new: tuple[str, ...]
    ignored: tuple[str, ...]
    loaded_size: int

    def summary(self) -> str:
        """One line: loaded paths counted by their first component; new and ignored ones by module
        (block numbers folded: ``backbone/block*/attn/lora_query (8)``)."""
        def groups(paths, fine):
            counts: dict[str, int] = {}
            for p in paths:
                head = re.sub(r"(?<=block)\d+", "*", p.rsplit("/", 1)[0]) if fine and "/" in p else p.split("/")[0]
                counts[head] = counts.get(head, 0) + 1
            return ", ".join(f"{k} ({n})" for k, n in counts.items()) or "-"

        return (f"init from {self.state_dir} (step {self.step}): loaded {len(self.loaded)} arrays "
                f"({self.loaded_size:,} values): {groups(self.loaded, False)}; new {len(self.new)}: "
                f"{groups(self.new, True)}; ignored {len(self.ignored)}: {groups(self.ignored, True)}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _steps(directory: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit() and
                  os.path.isdir(os.path.join(directory, d, "state")))


def checkpoint_dir(path: str, step: int) -> tuple[str, int]:
    """``(state_dir, step)`` of ``config.init.checkpoint`` / ``config.init.step`` (keys relative to
    ``config.init``)."""
    require(isinstance(path, str) and bool(path), "checkpoint", "is empty")
    require(isinstance(step, int) and step >= 0, "step", f"must be an integer >= 0 (0: the newest), got {step!r}")
    root = os.path.abspath(path)
    require(os.path.isdir(root), "checkpoint", f"{path!r} is not a directory")
    directory = os.path.join(root, "checkpoints") if os.path.isdir(os.path.join(root, "checkpoints")) else root
    steps = _steps(directory)
    require(bool(steps), "checkpoint", f"{path!r} holds no checkpoint (expected <run>/checkpoints/<step>/state)")
    if step == 0:
        step = steps[-1]
    require(step in steps, "step", f"{path!r} has no step {step}; it has {steps}")
    return os.path.join(directory, str(step), "state"), step


def source_shapes(state_dir: str) -> dict[str, tuple[tuple[int, ...], Any]]:
    """``{path: (shape, dtype)}`` of the checkpoint's parameters (metadata only; nothing is read)."""
    try:
        tree = ocp.StandardCheckpointer().metadata(state_dir).item_metadata.tree
    except Exception as e:  # noqa: BLE001 - any unreadable metadata is the same user error
        raise ConfigError(f"cannot read the checkpoint metadata in {state_dir} ({type(e).__name__}: {e})",
                          "checkpoint") from None
    if not isinstance(tree, dict) or "params" not in tree:
        raise ConfigError(f"{state_dir} is not an mtljax train state (no 'params')", "checkpoint")
    leaves = jax.tree_util.tree_flatten_with_path(tree["params"])[0]
    return {path_string(p): (tuple(m.shape), m.dtype) for p, m in leaves}


def plan(init_config, param_shapes) -> InitPlan | None:
    """The :class:`InitPlan` of ``config.init`` for a model with parameters ``param_shapes`` (a pytree
    of ``ShapeDtypeStruct``), or ``None`` when ``config.init.checkpoint`` is empty."""
    if not init_config.checkpoint:
        return None
    state_dir, step = checkpoint_dir(init_config.checkpoint, int(init_config.get("step", 0)))
    source = source_shapes(state_dir)
    target = {path_string(p): x for p, x in jax.tree_util.tree_flatten_with_path(param_shapes)[0]}
    loaded, new = [], []
    for path, x in target.items():
        if path not in source:
            new.append(path)
            continue
        shape = source[path][0]
        if tuple(shape) != tuple(x.shape):
            raise ConfigError(f"{path}: shape {tuple(shape)} in the checkpoint, {tuple(x.shape)} in this model "
                              f"({state_dir})", "checkpoint")
        loaded.append(path)
    require(bool(loaded), "checkpoint", f"no parameter path of this model is in {state_dir} "
            f"(the checkpoint has e.g. {sorted(source)[:2]}, the model {sorted(target)[:2]})")
    ignored = [p for p in source if p not in target]
    size = sum(int(np.prod(target[p].shape)) for p in loaded)
    return InitPlan(state_dir, step, tuple(loaded), tuple(new), tuple(ignored), size)


def _nested(paths_values: dict[str, Any]) -> dict:
    out: dict = {}
    for path, v in paths_values.items():
        node = out
        *parents, leaf = path.split("/")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = v
    return out


def load(init_plan: InitPlan, params, param_shardings):
    """``params`` with every loaded path replaced by the checkpoint's value (dtype of ``params``,
    sharded as ``param_shardings``)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    shardings = treedef.flatten_up_to(param_shardings)
    wanted = set(init_plan.loaded)
    item = {path_string(p): jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
            for (p, x), s in zip(flat, shardings) if path_string(p) in wanted}
    item = {"params": _nested(item)}
    restored = ocp.PyTreeCheckpointer().restore(
        init_plan.state_dir, args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
    values = {path_string(p): x for p, x in jax.tree_util.tree_flatten_with_path(restored["params"])[0]}
    return jax.tree_util.tree_unflatten(treedef, [values.get(path_string(p), x) for p, x in flat])


__all__ = ["InitPlan", "checkpoint_dir", "load", "plan", "source_shapes"]
