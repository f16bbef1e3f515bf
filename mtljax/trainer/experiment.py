"""An experiment: everything a run builds from its config before anything is compiled.

``Experiment(config)`` builds the dataset, the model and its objective, the multi-task method and the
optax chain, and the device mesh; tasks added to a trained run (``config.data.tasks=("+new",)``,
:mod:`~mtljax.trainer.continual`) are resolved first (``exp.config``: the resolved config, the one saved). Each builder checks the arguments it reads and raises
:class:`~mtljax.config.ConfigError` naming the offending key (``config.model.moe.top_k: ...``), so a
mistake stops here, before compilation and before anything is written. Then::

    exp = Experiment(config)
    with jax.set_mesh(exp.mesh):
        state, shardings = exp.init_state()
        step = exp.jit_train_step(shardings)
        batches = exp.train_batches()
        state, metrics = step(state, next(batches))
"""

from __future__ import annotations

import functools
import os
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from mtljax.config import positive_int, require, section
from mtljax.data import base as data_base
from mtljax.data import build_dataset
from mtljax.models import build_model, check_mesh
from mtljax.models.objective import objective as model_objective
from mtljax.optim import get_method
from mtljax.optim.jacobian import sharded_gramian
from mtljax.optim.loss_scale import parse_loss_scale
from mtljax.optim.task_grads import Partition
from mtljax.parallel import distributed, host
from mtljax.parallel.mesh import make_mesh, resolve_shape
from mtljax.parallel.rules import batch_sharding, batch_shards, rules_from_config
from mtljax.trainer import continual
from mtljax.trainer import step as st
from mtljax.trainer.optimizer import (build_objective, build_optimizer, check_autogram, task_freezer,
                                      training_level)
from mtljax.trainer import scalearn_source, warm_start
from mtljax.trainer.state import abstract_state, create_state, param_shapes

TRAIN_KEYS = ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints")


class Experiment:
    """Data, model, objective, method, optax chain and mesh of ``config`` (see the module docstring)."""

    def __init__(self, config, *, devices=None):
        if config.get("dist") is not None:
            host.configure(config.dist.get("host_allocator", "system"))  # before JAX runs anything
            distributed.initialize(config.dist)
        config = continual.resolve(config)  # "+task" entries of config.data.tasks: a copy with the full list
        self.config = config
        with section("train"):
            for key in TRAIN_KEYS:
                positive_int(config.train[key], key)
            self.loss_scale = parse_loss_scale(config.train.get("loss_scale", "auto"), config.model.dtype)
        for key in ("batch_size", "eval_batch_size"):
            positive_int(config.data[key], f"data.{key}")
        dataset = build_dataset(config.data)
        if config.data.tasks:
            with section("data"):
                dataset = dataset.select_tasks(list(config.data.tasks))
        self.dataset, self.tasks = dataset, dataset.tasks
        with section("data"):
            one = config.data.get("task_per_example", False)
            require(isinstance(one, bool), "task_per_example", f"must be True or False, got {one!r}")
            require(not one or config.data.batch_size >= len(self.tasks), "task_per_example",
                    f"needs batch_size >= the {len(self.tasks)} tasks, got {config.data.batch_size}")
        self.source_plan, model_config = None, config.model
        if scalearn_source.wanted(config.model):  # ScaLearn: the source adapter run, read before the model
            with section("model.peft"):
                self.source_plan = scalearn_source.resolve(config.model.peft)
            model_config = scalearn_source.model_config(config.model, self.source_plan)
        self.model = build_model(model_config, self.tasks, dataset.input_shape)
        with section("optim"):
            o = config.optim
            self.method = get_method(o.method, **dict(o.method_kwargs))
            self.level = training_level(o, self.method)
            self.objective = build_objective(o, model_objective(self.model, self.tasks), self.level,
                                             config.model.name, self.param_shapes if o.get("trainable") else None)
            require(self.level != "autogram" or self.loss_scale is None, "level",
                    "'autogram' cannot see the dense kernels through loss scaling (config.train.loss_scale, on by "
                    "'auto' for float16); use 'param', or config.train.loss_scale='none'")
            if self.level == "autogram":
                check_autogram(self._abstract_forward, self.param_shapes, self._not_shared(), config.model.name)
            names = [t.name for t in self.tasks]
            for name, w in o.task_weights.items():
                require(name in names, f"task_weights.{name}", f"no such task; tasks are {names}")
                require(w >= 0, f"task_weights.{name}", f"must be >= 0, got {w}")
            self.task_weights = [float(o.task_weights.get(n, 1.0)) for n in names]
            self.task_slots = continual.task_slots(config.model, self.objective.specific)
            freeze = task_freezer(o, names, self.task_slots)
            self.tx = build_optimizer(o, self.method, len(self.tasks), config.train.steps, freeze)
        with section("mesh"):
            devices = jax.devices() if devices is None else devices
            sizes = resolve_shape(dict(config.mesh.shape), len(devices))
            self.rules = rules_from_config(config.mesh.rules)
            self.mesh = make_mesh(dict(config.mesh.shape), devices)
        self.batch_sharding = batch_sharding(self.mesh, self.rules)
        shards = batch_shards(self.mesh, self.rules)
        for key in ("batch_size", "eval_batch_size"):
            require(config.data[key] % shards == 0, f"data.{key}",
                    f"{config.data[key]} is not divisible by the {shards} batch shards of config.mesh.shape={sizes}")
        with section("model"):
            check_mesh(config.model, sizes, {k: config.data[k] // shards for k in ("batch_size", "eval_batch_size")})
        init = config.get("init")
        self.init_plan = None
        if init is not None and init.checkpoint:
            with section("init"):
                self.init_plan = warm_start.plan(init, self.param_shapes, tasks=[t.name for t in self.tasks],
                                                 specific=self.task_slots(self.param_shapes))
        if self.source_plan is not None:
            trainable = self.objective.trainable(self.param_shapes) if self.objective.trainable else None
            scalearn_source.check(self.source_plan, self.param_shapes, trainable)
        check_workdir(config.workdir)

    @functools.cached_property
    def param_shapes(self):
        """The model's parameters as ``ShapeDtypeStruct`` (traced, never allocated)."""
        return param_shapes(self.model, self.dataset.input_shape)

    def _abstract_forward(self, params):
        """The model's forward on a zero batch of two examples (for tracing only)."""
        return self.model.apply({"params": params}, jnp.zeros((2, *self.dataset.input_shape), jnp.float32))

    def _not_shared(self):
        """Boolean pytree of the parameters that are task-specific or frozen (not in the Gramian)."""
        shapes = self.param_shapes
        specific = self.objective.specific(shapes)
        if self.objective.trainable is None:
            return specific
        return jax.tree.map(lambda s, t: bool(s) or not bool(t), specific, self.objective.trainable(shapes))

    # ---- state and steps ----------------------------------------------------------------------------
    def init_state(self):
        """``(state, shardings)``: the initial train state, created directly on the mesh."""
        state, shardings, _ = create_state(self.model, self.tx, self.dataset.input_shape, self.config.seed,
                                           self.mesh, self.rules, self.objective.split, self.loss_scale)
        return state, shardings

    def warm_start(self, state, shardings, log=print):
        """``state`` with the parameters of ``config.init`` loaded (:mod:`~mtljax.trainer.warm_start`)
        and a fresh optimizer state for them, and ScaLearn's source adapters
        (:mod:`~mtljax.trainer.scalearn_source`); ``state`` itself when there is neither."""
        if self.init_plan is None and self.source_plan is None:
            return state
        params = state.params
        if self.init_plan is not None:
            params = warm_start.load(self.init_plan, params, shardings.params)
            log(self.init_plan.summary())
        if self.source_plan is not None:
            params = scalearn_source.load(self.source_plan, params, shardings.params)
            log(self.source_plan.summary())
        init_opt = jax.jit(lambda p: self.tx.init(self.objective.split(p)[0]), out_shardings=shardings.opt_state)
        return state.replace(params=params, opt_state=init_opt(params))

    def abstract_state(self):
        """``(abstract, shardings)`` of the train state without allocating it (for restoring)."""
        return abstract_state(self.model, self.tx, self.dataset.input_shape, self.mesh, self.rules,
                              self.objective.split, self.loss_scale)

    def train_step(self, shardings):
        """The (unjitted) train step of ``config.optim`` on this mesh."""
        gramian_fn = None
        if self.mesh.size > 1:  # the Gramian of sharded per-task gradients with one all-reduce
            specs = self.objective.split(jax.tree.map(lambda s: s.spec, shardings.params))[0]
            shared_specs, _ = Partition(specs, self.objective.specific(specs)).split(specs)
            gramian_fn = lambda rows: sharded_gramian(rows, self.mesh, shared_specs)  # noqa: E731
        weights = self.task_weights if any(w != 1.0 for w in self.task_weights) else None
        return st.make_train_step(self.objective, self.tx, level=self.level, task_weights=weights,
                                  chunk_size=self.config.optim.chunk_size or None, gramian_fn=gramian_fn,
                                  loss_scale=self.loss_scale)

    def jit_train_step(self, shardings):
        return st.jit_train_step(self.train_step(shardings), self.mesh, shardings, self.batch_sharding)

    def jit_eval_step(self, param_shardings):
        return st.jit_eval_step(st.make_eval_step(self.objective), self.mesh, param_shardings, self.batch_sharding)

    # ---- data ----------------------------------------------------------------------------------------
    def train_iterator(self, prefetch: int | None = None):
        """This process's checkpointable iterator over its rows of the global training batches."""
        c = self.config
        ds = data_base.train_dataset(self.dataset.splits["train"], self.tasks, c.data.batch_size, c.seed,
                                     indices=self.dataset.info.get("train_indices"),
                                     task_per_example=bool(c.data.get("task_per_example", False)),
                                     process_index=jax.process_index(), process_count=jax.process_count())
        return data_base.train_iterator(ds, prefetch=c.data.prefetch if prefetch is None else prefetch)

    def to_global(self, local_batch):
        """A batch of this process's rows as global arrays sharded over the mesh's batch axes."""
        put = lambda x: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(x))  # noqa: E731
        return host.settle(jax.tree.map(put, local_batch))  # waited for when host memory is retained

    def train_batches(self, prefetch: int = 0) -> Iterator:
        """Global training batches, ready for the jitted step."""
        for batch in self.train_iterator(prefetch):
            yield self.to_global(batch)

    def eval_batches(self, split: str = "test", max_examples: int = 0) -> Iterator:
        """Every example of ``split`` once, as global batches (the last padded with zero masks)."""
        for batch in data_base.eval_batches(
                self.dataset.splits[split], self.tasks, self.config.data.eval_batch_size,
                process_index=jax.process_index(), process_count=jax.process_count(),
                max_examples=max_examples or None):
            yield self.to_global(batch)


def check_workdir(workdir: str) -> None:
    """``config.workdir`` must be creatable and writable (remote ``gs://`` paths are left to orbax)."""
    require(bool(workdir), "workdir", "is empty")
    if "://" in workdir:
        return
    probe = os.path.abspath(workdir)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    require(os.path.isdir(probe) and os.access(probe, os.W_OK | os.X_OK), "workdir",
            f"{workdir!r} is not writable ({probe} is not a writable directory)")
