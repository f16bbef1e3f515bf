"""The training objective: the one hook through which a model and its training terms reach the step.

An :class:`Objective` says how a batch becomes per-task losses::

    forward(params, batch, *, train, rng=None, step=None) -> (losses [T], outputs, aux)

``aux = {"losses": {name: scalar}, "metrics": {name: scalar}}``: every entry of ``aux["losses"]`` is
an auxiliary training term added to the objective with weight 1 (MoE balancing losses, the
slimmable model's CI-KD, Rep-MTL's regulariser, ...); ``metrics`` are logged. ``specific(params)``
marks the task-specific parameters (a boolean pytree: heads, per-task modules), which multi-task
methods leave out of the Gramian and update with their task's gradient; ``trainable(params)`` the
parameters that train (``None``: all; the others are frozen: never differentiated, no optimizer
state, see :mod:`mtljax.optim.trainable`). Optionally, when all
tasks read one shared representation, the split ``encode(params, batch, *, rng) -> (rep, aux)`` /
``decode(params, rep, batch) -> (losses [T], outputs)`` (the representation level of gradient
methods, Rep-MTL), and ``rep_keys``: for each task the entry of ``rep`` its decoder reads. Where every
task's decoder reads only ``rep`` and its own parameters, ``decode_task(params, rep, batch, t) -> loss``
gives task ``t``'s loss alone (the representation-level Gramian then costs ``T`` head backward passes,
not ``T²``; :class:`~mtljax.optim.task_grads.LossFunction`).

:func:`objective` gives a model's objective; a model family with its own training rule registers one
(``@objective.register(MyModel)``: the slimmable model's sandwich of configurations). Training terms
that are not the model's wrap an objective (``mtljax.optim.rep_mtl.with_rep_mtl``).
:meth:`Objective.loss_function` binds it to a batch for :func:`mtljax.optim.task_gradients`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.models.hps import MultiTaskModel, heads_mask, per_task_representation, task_specific_mask
from mtljax.optim import trainable as trainable_lib
from mtljax.optim.task_grads import LossFunction
from mtljax.tasks import Task

Batch = Mapping[str, Any]


def task_losses(tasks: Sequence[Task], outputs, batch: Batch) -> jax.Array:
    """``[T]`` masked loss of every task (the batch's ``targets`` and ``masks`` by task name)."""
    return jnp.stack([t.loss(outputs[t.name], batch["targets"][t.name], batch["masks"][t.name]) for t in tasks])




@dataclasses.dataclass(frozen=True)
class Objective:
    """What the train step differentiates (see the module docstring)."""

    tasks: tuple[Task, ...]
    forward: Callable[..., tuple]
    encode: Callable[..., tuple] | None = None
    decode: Callable[..., tuple] | None = None
    rep_keys: tuple[str, ...] = ()
    specific: Callable[[Any], Any] = heads_mask
    trainable: Callable[[Any], Any] | None = None
    decode_task: Callable[..., jax.Array] | None = None

    def split(self, params) -> tuple[Any, Any]:
        """``(trainable, frozen)`` parameters (:func:`mtljax.optim.trainable.split`; ``frozen`` is
        ``None`` when everything trains). ``params`` may be logically boxed."""
        if self.trainable is None:
            return params, None
        return trainable_lib.split(params, self.trainable(nn.unbox(params)))

    @staticmethod
    def join(trainable, frozen):
        """The inverse of :meth:`split`."""
        return trainable if frozen is None else trainable_lib.join(trainable, frozen)

    @property
    def has_representation(self) -> bool:
        """Whether every task reads one shared representation (``encode``/``decode`` exist)."""
        return self.encode is not None and self.decode is not None

    def loss_function(self, batch: Batch, *, rng=None, step=None, task_weights=None, frozen=None) -> LossFunction:
        """Bind to one batch: the :class:`~mtljax.optim.task_grads.LossFunction` of the train step.

        ``task_weights`` ``[T]`` scale the losses the multi-task method sees (static weights); the
        unscaled losses are returned in ``aux["task_losses"]``, the model outputs in
        ``aux["outputs"]``. ``frozen``: the frozen half of :meth:`split`; the function then takes
        the trainable half.
        """
        scale = None if task_weights is None else jnp.asarray(task_weights, jnp.float32)
        weigh = (lambda l: l) if scale is None else (lambda l: scale.astype(l.dtype) * l)  # noqa: E731

        def extra(aux):
            return sum(aux["losses"].values(), jnp.zeros((), jnp.float32)) if aux["losses"] else None

        def losses(params):
            params = self.join(params, frozen)
            l, outputs, aux = self.forward(params, batch, train=True, rng=rng, step=step)
            return weigh(l), extra(aux), {**aux, "outputs": outputs, "task_losses": l}

        if not self.has_representation:
            return LossFunction(losses)

        def encode(params):
            rep, aux = self.encode(self.join(params, frozen), batch, rng=rng)
            return rep, extra(aux), aux

        def decode(params, rep):
            l, outputs = self.decode(self.join(params, frozen), rep, batch)
            return weigh(l), {"outputs": outputs, "task_losses": l}

        decode_task = None
        if self.decode_task is not None:
            def decode_task(params, rep, t):
                loss = self.decode_task(self.join(params, frozen), rep, batch, t)
                return loss if scale is None else scale[t].astype(loss.dtype) * loss

        return LossFunction(losses, encode, decode, decode_task)


@functools.singledispatch
def objective(model, tasks: Sequence[Task]) -> Objective:
    """The objective of ``model``: its forward pass and every task's masked loss.

    Models with ``encode``/``decode`` whose representation is shared by all tasks (hard parameter
    sharing, V-MoE) also get the representation split; task-routed models (M³ViT, Mod-Squad,
    TaskExpert) and models with per-task modules (LoRA, adapters, prefixes, prompts) give every task
    its own representation and do not. A :class:`MultiTaskModel` is given the batch's ``task_ids``
    when it has them (heterogeneous mixtures: one pass, each example as its own task), and its
    per-task modules are task-specific like its heads.
    """
    tasks = tuple(tasks)
    multi_task = isinstance(model, MultiTaskModel)

    def ids(batch):
        return {"task_ids": batch["task_ids"]} if multi_task and batch.get("task_ids") is not None else {}

    def forward(params, batch, *, train, rng=None, step=None):
        del step
        rngs = {"dropout": rng} if rng is not None else {}
        outputs, aux = model.apply({"params": params}, batch["inputs"], train=train, rngs=rngs, **ids(batch))
        return task_losses(tasks, outputs, batch), outputs, aux

    specific = heads_mask
    if multi_task and model.specific_scopes:
        specific = functools.partial(task_specific_mask, scopes=tuple(model.specific_scopes))
    if not multi_task or per_task_representation(model):
        return Objective(tasks, forward, specific=specific)

    def encode(params, batch, *, rng=None):
        rngs = {"dropout": rng} if rng is not None else {}
        return model.apply({"params": params}, batch["inputs"], train=True, rngs=rngs, method=model.encode,
                           **ids(batch))

    def decode(params, rep, batch):
        outputs = model.apply({"params": params}, rep, method=model.decode)
        return task_losses(tasks, outputs, batch), outputs

    def decode_task(params, rep, batch, t):
        outputs = model.apply({"params": params}, rep, method=model.decode, task=tasks[t].name)
        return task_losses(tasks[t:t + 1], outputs, batch)[0]

    keys = tuple("tokens" if t.is_dense else "pooled" for t in tasks)
    return Objective(tasks, forward, encode, decode, keys, specific, decode_task=decode_task)


def stacked_objective(model, tasks: Sequence[Task]) -> Objective:
    """For models whose training forward runs ``K`` configurations at once (outputs ``[K, B, ...]``):
    a task's loss is its mean over the ``K`` configurations; outputs for metrics are the first's."""
    tasks = tuple(tasks)

    def forward(params, batch, *, train, rng=None, step=None):
        rngs = {"dropout": rng} if rng is not None else {}
        outputs, aux = model.apply({"params": params}, batch["inputs"], train=train, rngs=rngs, step=step)
        if not train:
            return task_losses(tasks, outputs, batch), outputs, aux
        per_config = jax.vmap(lambda out: task_losses(tasks, out, batch))(outputs)  # [K, T]
        return jnp.mean(per_config, axis=0), {k: v[0] for k, v in outputs.items()}, aux

    return Objective(tasks, forward)


__all__ = ["Objective", "heads_mask", "objective", "stacked_objective", "task_losses", "task_specific_mask"]
