"""Start a run from another run's checkpoint (``config.init``): pretrain, then adapt.

``config.init.checkpoint`` names an earlier run directory (or its ``checkpoints/`` folder) and
``config.init.step`` one of its steps (``0``: the newest whose files match their checksums; a named step
that fails them is an error; see :mod:`mtljax.trainer.checkpoint`). A fresh run then starts from the parameters
the two trees share *by path* (``backbone/block0/attention/query/kernel``): those are *loaded*; the
model's parameters the checkpoint lacks (new heads, LoRA factors, prompts) keep their fresh
initialisation (*new*); the checkpoint's parameters the model lacks (the pretraining heads) are
*ignored*. The optimizer state starts fresh. A parameter present in both with another shape is an
error naming its path, raised by :func:`plan` when the experiment is built: before compilation and
before anything is written. The source checkpoint is opened read-only and never modified; only the
parameters that are loaded are read (an orbax partial restore), placed straight onto the mesh.

Per-task parameters (LoRA factors, adapters, prefixes, VPT prompts, task tokens, soft-injection
embeddings and gates, MULTI-LANE lanes, Polytropon / MHR routing logits — not their shared skills —:
the parameters the objective marks task-specific, heads excepted) carry a leading task axis ``[T, ...]`` in the order of the run's tasks. They are matched *by
task name*: slot ``i`` of this run (task ``tasks[i]``) takes the source run's slot of the same task
when the source had that task, whatever its position there; the slots of tasks the source lacks are
filled as ``config.init.task_init`` says (multitask prompt initialisation, Shen et al., MVLPT):

* ``"fresh"`` (default): keep this run's fresh initialisation;
* ``"mean"``: the mean over all of the source's slots;
* the name of one source task: that task's slot (MVLPT's single best source task).

The source run's task names come from ``<source run>/config.json`` (``data.tasks``; an empty list
means the dataset's default tasks, :func:`mtljax.data.registry.default_task_names`). A per-task
parameter is one with a leading dimension equal to the number of tasks in both runs (the rest of
its shape must match, else the same one-line error as any shape mismatch). When both runs have the
same tasks in the same order the parameters load by path, as any other. Without a ``config.json``
in the source run the per-task parameters load by path too (by position). Heads (``heads_<task>``)
load by path, i.e. by task name; the heads of new tasks stay fresh. The slot selection and means are
computed on the host after restoring the source's stacked arrays, and placed with this run's sharding.

A run that already has checkpoints of its own resumes from them and ignores ``config.init``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mtljax.config import ConfigError, require
from mtljax.data.registry import default_task_names
from mtljax.merge.vectors import unflatten
from mtljax.optim.trainable import path_string
from mtljax.trainer.checkpoint import verify_manifest

TASK_INIT = ("fresh", "mean")  # or the name of one source task


@dataclasses.dataclass(frozen=True)
class InitPlan:
    """What :func:`load` will do: the source state directory and the parameter paths by fate."""

    state_dir: str
    step: int
    loaded: tuple[str, ...]
    new: tuple[str, ...]
    ignored: tuple[str, ...]
    loaded_size: int
    # per-task parameters matched by task name (see the module docstring): their paths, and for every
    # task of this run where its slot comes from: ``"source:<task>"``, ``"mean"`` or ``"fresh"``
    per_task: tuple[str, ...] = ()
    task_map: tuple[tuple[str, str], ...] = ()
    source_tasks: tuple[str, ...] = ()
    task_init: str = "fresh"

    def mapping(self) -> str:
        """``'count' <- source 'count', 'texture' <- mean of 3 source tasks, ...``."""
        def fate(src):
            if src == "mean":
                return f"mean of {len(self.source_tasks)} source tasks"
            if src == "fresh":
                return "fresh"
            return f"source {src.split(':', 1)[1]!r}"

        return ", ".join(f"{t!r} <- {fate(src)}" for t, src in self.task_map)

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
                f"{groups(self.new, True)}; ignored {len(self.ignored)}: {groups(self.ignored, True)}"
                + (f"; per-task {len(self.per_task)} arrays ({groups(self.per_task, True)}): {self.mapping()}"
                   if self.per_task else ""))

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
    if step == 0:  # the newest step whose files match their checksums (mtljax.trainer.checkpoint)
        reasons = {}
        for s in reversed(steps):
            reasons[s] = verify_manifest(os.path.join(directory, str(s)))
            if reasons[s] is None:
                step = s
                break
        require(step != 0, "checkpoint", f"{path!r}: no checkpoint matches its checksums (step {steps[-1]}: "
                f"{reasons[steps[-1]]})")
    require(step in steps, "step", f"{path!r} has no step {step}; it has {steps}")
    reason = verify_manifest(os.path.join(directory, str(step)))
    require(reason is None, "step", f"step {step} of {path!r} is corrupted ({reason})")
    return os.path.join(directory, str(step), "state"), step


class _StepMetadataNote(logging.Filter):
    """Drops orbax's note that ``<step>/state`` has no ``_CHECKPOINT_METADATA``: a checkpoint manager
    keeps that file one level up, in ``<step>/``, and a plain Checkpointer opening the item looks for it
    in the item's own directory. Nothing is missing."""

    def filter(self, record):
        return "_CHECKPOINT_METADATA" not in record.getMessage()


@contextlib.contextmanager
def _reading_item():
    logger, note = logging.getLogger("absl"), _StepMetadataNote()
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)


def source_shapes(state_dir: str) -> dict[str, tuple[tuple[int, ...], Any]]:
    """``{path: (shape, dtype)}`` of the checkpoint's parameters (metadata only; nothing is read)."""
    try:
        with _reading_item():
            tree = ocp.StandardCheckpointer().metadata(state_dir).item_metadata.tree
    except Exception as e:  # noqa: BLE001 - any unreadable metadata is the same user error
        raise ConfigError(f"cannot read the checkpoint metadata in {state_dir} ({type(e).__name__}: {e})",
                          "checkpoint") from None
    if not isinstance(tree, dict) or "params" not in tree:
        raise ConfigError(f"{state_dir} is not an mtljax train state (no 'params')", "checkpoint")
    leaves = jax.tree_util.tree_flatten_with_path(tree["params"])[0]
    return {path_string(p): (tuple(m.shape), m.dtype) for p, m in leaves}


def run_config_path(state_dir: str) -> str | None:
    """The ``config.json`` of the run that wrote ``state_dir`` (``<run>/checkpoints/<step>/state``, or
    ``<run>/<step>/state``), or ``None``."""
    steps_dir = os.path.dirname(os.path.dirname(state_dir))
    for run in (os.path.dirname(steps_dir), steps_dir):
        path = os.path.join(run, "config.json")
        if os.path.isfile(path):
            return path
    return None


def source_task_names(state_dir: str) -> tuple[str, ...] | None:
    """The task names, in order, of the run that wrote ``state_dir`` (``<run>/checkpoints/<step>/state``),
    read from its ``config.json``; ``None`` when there is none or its dataset's default tasks cannot be
    named without building it."""
    path = run_config_path(state_dir)
    if path is None:
        return None
    try:
        with open(path) as f:
            data = json.load(f).get("data", {})
    except (OSError, ValueError, AttributeError):
        return None
    names = data.get("tasks") or default_task_names(data)
    return tuple(str(n) for n in names) if names else None


def _per_task_paths(target, specific, num_tasks: int) -> list[str]:
    """Paths of the parameters marked task-specific (``specific``: booleans like the parameters) outside
    the heads whose leading dimension is ``num_tasks``."""
    if specific is None:
        return []
    marked = {path_string(p) for p, m in jax.tree_util.tree_flatten_with_path(specific)[0] if m}
    return [p for p, x in target.items() if p in marked and not p.split("/")[0].startswith("heads_")
            and len(x.shape) >= 1 and x.shape[0] == num_tasks]


def _task_map(tasks, source_tasks, task_init) -> tuple[tuple[str, str], ...]:
    """Where every task's slot comes from (``"source:<task>"``, ``"mean"`` or ``"fresh"``)."""
    def origin(name):
        if name in source_tasks:
            return f"source:{name}"
        if task_init in TASK_INIT:
            return task_init
        return f"source:{task_init}"

    return tuple((t, origin(t)) for t in tasks)


def plan(init_config, param_shapes, *, tasks=(), specific=None) -> InitPlan | None:
    """The :class:`InitPlan` of ``config.init`` for a model with parameters ``param_shapes`` (a pytree
    of ``ShapeDtypeStruct``) for the tasks named ``tasks`` (in order), whose task-specific parameters
    ``specific`` marks (a boolean pytree like ``param_shapes``, e.g. the objective's ``specific``;
    ``None``: no per-task transfer, everything by path), or ``None`` when ``config.init.checkpoint`` is
    empty."""
    if not init_config.checkpoint:
        return None
    task_init = init_config.get("task_init", "fresh")
    require(isinstance(task_init, str) and bool(task_init), "task_init",
            f"must be 'fresh', 'mean' or the name of a source task, got {task_init!r}")
    state_dir, step = checkpoint_dir(init_config.checkpoint, int(init_config.get("step", 0)))
    source = source_shapes(state_dir)
    target = {path_string(p): x for p, x in jax.tree_util.tree_flatten_with_path(param_shapes)[0]}
    tasks = tuple(tasks)
    source_tasks = source_task_names(state_dir)
    if task_init not in TASK_INIT:
        require(source_tasks is not None, "task_init",
                f"{task_init!r} names a source task, but the task names of {state_dir} are unknown (no config.json "
                "with data.tasks in its run directory); use 'fresh' or 'mean'")
        require(task_init in source_tasks, "task_init",
                f"no source task {task_init!r}; the source run's tasks are {list(source_tasks)} (or use 'fresh' or "
                "'mean')")
    by_name = bool(tasks) and source_tasks is not None and tuple(source_tasks) != tasks
    stacked = {p for p in _per_task_paths(target, specific, len(tasks)) if p in source} if tasks else set()
    per_task = stacked if by_name else set()
    loaded, new, mapped = [], [], []
    for path, x in target.items():
        if path not in source:
            new.append(path)
            continue
        shape = tuple(source[path][0])
        if path in per_task:
            if len(shape) < 1 or shape[0] != len(source_tasks) or shape[1:] != tuple(x.shape[1:]):
                raise ConfigError(f"{path}: shape {shape} in the checkpoint ({len(source_tasks)} source tasks), "
                                  f"{tuple(x.shape)} in this model ({len(tasks)} tasks) ({state_dir})", "checkpoint")
            mapped.append(path)
            continue
        if shape != tuple(x.shape):
            hint = ("; a per-task parameter, but the source run's task names are unknown (no config.json with "
                    "data.tasks in its run directory)" if path in stacked and source_tasks is None else "")
            raise ConfigError(f"{path}: shape {shape} in the checkpoint, {tuple(x.shape)} in this model "
                              f"({state_dir}){hint}", "checkpoint")
        loaded.append(path)
    task_map = _task_map(tasks, source_tasks, task_init) if mapped else ()
    if mapped and all(src == "fresh" for _, src in task_map):  # nothing to take from the source
        new += mapped
        mapped = []
    require(bool(loaded or mapped), "checkpoint", f"no parameter path of this model is in {state_dir} "
            f"(the checkpoint has e.g. {sorted(source)[:2]}, the model {sorted(target)[:2]})")
    ignored = [p for p in source if p not in target]
    size = sum(int(np.prod(target[p].shape)) for p in loaded)
    return InitPlan(state_dir, step, tuple(loaded), tuple(new), tuple(ignored), size, tuple(mapped),
                    task_map if mapped else (), tuple(source_tasks or ()), task_init)


def _fill(fresh: np.ndarray, source: np.ndarray, init_plan: InitPlan) -> np.ndarray:
    """The per-task array ``fresh [T, ...]`` with its slots replaced as ``init_plan.task_map`` says from
    the source's ``source [S, ...]`` (means in float64, then this run's dtype)."""
    out = np.array(fresh, copy=True)
    index = {name: i for i, name in enumerate(init_plan.source_tasks)}
    for i, (_, src) in enumerate(init_plan.task_map):
        if src == "mean":
            out[i] = source.astype(np.float64).mean(0).astype(out.dtype)
        elif src.startswith("source:"):
            out[i] = source[index[src.split(":", 1)[1]]].astype(out.dtype)
    return out


def restore_arrays(state_dir: str, targets: dict[str, jax.ShapeDtypeStruct]) -> dict[str, Any]:
    """``{path: array}`` of the parameters ``targets`` names (``ShapeDtypeStruct`` with an optional
    sharding: placed straight onto it; without one, on the default device), read from the train state
    in ``state_dir`` (an orbax partial restore: nothing else is read; the checkpoint is not modified)."""
    item = {"params": unflatten(targets)}
    with _reading_item():
        restored = ocp.PyTreeCheckpointer().restore(
            state_dir, args=ocp.args.PyTreeRestore(
                item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
    return {path_string(p): x for p, x in jax.tree_util.tree_flatten_with_path(restored["params"])[0]}


def load(init_plan: InitPlan, params, param_shardings):
    """``params`` with every loaded path replaced by the checkpoint's value and every per-task path's
    slots filled by task name (dtype of ``params``, sharded as ``param_shardings``)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    shardings = treedef.flatten_up_to(param_shardings)
    wanted, per_task = set(init_plan.loaded), set(init_plan.per_task)
    source = source_shapes(init_plan.state_dir) if per_task else {}
    item = {}
    for (p, x), s in zip(flat, shardings):
        path = path_string(p)
        if path in wanted:
            item[path] = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
        elif path in per_task:  # the whole stacked source array, on the host
            item[path] = jax.ShapeDtypeStruct(*source[path])
    values = restore_arrays(init_plan.state_dir, item)
    out = []
    for (p, x), s in zip(flat, shardings):
        path = path_string(p)
        if path in per_task:
            filled = _fill(np.asarray(jax.device_get(x)), np.asarray(values[path]), init_plan)
            out.append(jax.device_put(filled, s))
        else:
            out.append(values.get(path, x))
    return jax.tree_util.tree_unflatten(treedef, out)


__all__ = ["TASK_INIT", "InitPlan", "checkpoint_dir", "load", "plan", "restore_arrays", "run_config_path",
           "source_shapes", "source_task_names"]
