"""ScaLearn's source adapters: read from the source run, checked before compilation, loaded by task name.

``config.model.peft.scalearn.source`` names a run of ``configs/adapt_adapter.py`` (its directory or its
``checkpoints/`` folder; its newest step whose files match their checksums). Its bottleneck adapters
``backbone/block<i>/{attn,mlp}_adapter/{down,up}_{kernel,bias}`` carry a leading axis over *its* tasks,
in the order of its ``config.json`` (``data.tasks``). A ScaLearn model (:mod:`mtljax.models.peft.scalearn`)
holds the frozen stacks ``source_{down,up}_{kernel,bias} [S, ...]`` under the same plug scopes; slot ``i``
takes the source run's slot of ``source_tasks[i]`` (by name, in the requested order; an empty
``source_tasks`` is all of the source run's tasks, in its order).

:func:`resolve` reads the source run's metadata (nothing else) when the experiment is built and checks,
as one-line errors naming the key: the directory holds a checkpoint and a ``config.json`` naming its
tasks, it has adapters, the requested tasks are among its tasks, and its adapter width and positions
are ``config.model.peft.adapter_dim`` / ``adapter_positions``; :func:`check` then matches every stack of
the model to a source array of the same shape (width, depth) and refuses a ``config.optim.trainable``
that would train a source. :func:`load` fills the stacks of a fresh run's parameters (an orbax partial
restore of the source's adapter arrays; the checkpoint is opened read-only). A resumed run reads the
stacks from its own checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import re

import jax
import numpy as np

from mtljax.config import ConfigError, require
from mtljax.models.peft.checks import methods_of
from mtljax.models.peft.scalearn import SOURCE_NAMES
from mtljax.optim.trainable import path_string
from mtljax.trainer.warm_start import checkpoint_dir, restore_arrays, source_shapes, source_task_names

ROLES = {"attn_adapter": "attention", "mlp_adapter": "mlp"}  # plug scope -> adapter position
_ADAPTER = re.compile(r"^backbone/block\d+/(attn_adapter|mlp_adapter)/(down_kernel|down_bias|up_kernel|up_bias)$")


@dataclasses.dataclass(frozen=True)
class SourcePlan:
    """The source run's state directory and step, its tasks (in its order) and the chosen ones (in the
    order of the model's stacks)."""

    state_dir: str
    step: int
    run_tasks: tuple[str, ...]
    tasks: tuple[str, ...]

    def summary(self) -> str:
        return (f"scalearn sources from {self.state_dir} (step {self.step}): "
                + ", ".join(f"slot {i} <- {t!r}" for i, t in enumerate(self.tasks)))


def wanted(model_config) -> bool:
    """Whether ``config.model`` is a ScaLearn model."""
    return "peft" in model_config and "scalearn" in methods_of(model_config.peft.method)


def resolve(peft) -> SourcePlan:
    """The :class:`SourcePlan` of ``peft = config.model.peft`` (keys relative to it)."""
    require("scalearn" in peft, "scalearn", "is missing: method 'scalearn' needs it (see mtljax.config.base_config)")
    s = peft.scalearn
    require(isinstance(s.source, str) and bool(s.source), "scalearn.source",
            "is empty; name the source adapter run's directory (a run of configs/adapt_adapter.py)")
    try:
        state_dir, step = checkpoint_dir(s.source, 0)
    except ConfigError as e:
        raise ConfigError(e.message, "scalearn.source") from None
    run_tasks = source_task_names(state_dir)
    require(run_tasks is not None, "scalearn.source",
            f"{s.source!r}: its task names are unknown (no config.json with data.tasks in the run directory)")
    shapes = {p: v for p, v in source_shapes(state_dir).items() if _ADAPTER.match(p)}
    require(bool(shapes), "scalearn.source",
            f"{s.source!r} has no bottleneck adapters (expected a run of configs/adapt_adapter.py)")
    roles = {ROLES[p.split("/")[2]] for p in shapes}
    require(roles == set(peft.adapter_positions), "adapter_positions",
            f"{tuple(peft.adapter_positions)} but the source run {s.source!r} has adapters at {tuple(sorted(roles))}")
    dims = {v[0][-1] for p, v in shapes.items() if p.endswith("down_kernel")}
    require(dims == {peft.adapter_dim}, "adapter_dim",
            f"{peft.adapter_dim} but the source run {s.source!r} has adapters of width {sorted(dims)}")
    tasks = tuple(s.source_tasks) or tuple(run_tasks)
    for t in tasks:
        require(t in run_tasks, "scalearn.source_tasks", f"no task {t!r} in the source run {s.source!r}; its tasks "
                                                         f"are {list(run_tasks)}")
    return SourcePlan(state_dir, step, tuple(run_tasks), tasks)


def model_config(model_config, plan: SourcePlan):
    """A copy of ``config.model`` whose ``peft.scalearn.source_tasks`` are the plan's (all of the
    source run's tasks when the config left it empty)."""
    out = copy.deepcopy(model_config)
    out.peft.scalearn.source_tasks = plan.tasks
    return out


def stack_paths(param_shapes) -> dict[str, str]:
    """``{model path: source run path}`` of the model's frozen source stacks."""
    out = {}
    for p, _ in jax.tree_util.tree_flatten_with_path(param_shapes)[0]:
        path = path_string(p)
        *scope, name = path.split("/")
        if name in SOURCE_NAMES:
            out[path] = "/".join([*scope, name.removeprefix("source_")])
    return out


def check(plan: SourcePlan, param_shapes, trainable=None) -> None:
    """Every stack of the model (``param_shapes``) has its source array, of the same shape but its leading
    axis (the source run's tasks); ``trainable`` (a boolean pytree like ``param_shapes``, ``None``: all
    trainable) leaves every stack frozen. Keys relative to ``config``."""
    source = source_shapes(plan.state_dir)
    flat = {path_string(p): x for p, x in jax.tree_util.tree_flatten_with_path(param_shapes)[0]}
    for path, src in stack_paths(param_shapes).items():
        require(src in source, "model.peft.scalearn.source",
                f"the source run has no {src} (is its depth the model's?) ({plan.state_dir})")
        shape, want = tuple(source[src][0]), tuple(flat[path].shape)
        require(shape[1:] == want[1:], "model.peft.scalearn.source",
                f"{src} has shape {shape} in the source run, the model needs {(len(plan.run_tasks), *want[1:])} "
                "(its width or adapter dims differ)")
    marked = (set(flat) if trainable is None else
              {path_string(p) for p, m in jax.tree_util.tree_flatten_with_path(trainable)[0] if m})
    bad = sorted(set(stack_paths(param_shapes)) & marked)
    if bad:
        require(not bad, "optim.trainable", f"would train the frozen source adapters ({(bad or [''])[0]}, ...); train "
                                            "only ω (or the fusion weights) and the heads: ('scalearn_', '^heads_')")


def load(plan: SourcePlan, params, param_shardings):
    """``params`` with every source stack filled from the source run (slot ``i`` <- task
    ``plan.tasks[i]``), sharded as ``param_shardings``."""
    paths = stack_paths(params)
    source = source_shapes(plan.state_dir)
    values = restore_arrays(plan.state_dir, {src: jax.ShapeDtypeStruct(*source[src]) for src in paths.values()})
    index = np.array([plan.run_tasks.index(t) for t in plan.tasks])
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    shardings = treedef.flatten_up_to(param_shardings)
    out = []
    for (p, x), s in zip(flat, shardings):
        path = path_string(p)
        if path in paths:
            out.append(jax.device_put(np.asarray(values[paths[path]])[index].astype(x.dtype), s))
        else:
            out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out)


__all__ = ["ROLES", "SourcePlan", "check", "load", "model_config", "resolve", "stack_paths", "wanted"]
