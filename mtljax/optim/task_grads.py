"""The per-task gradients of a multi-task loss, given lazily: what a multi-task method reads.

Let ``L(θ) ∈ R^T`` be the task losses and ``J = ∂L/∂θ`` (``T`` rows). Parameters are *shared* or
*task-specific* (heads, per-task modules; a boolean pytree ``specific`` marks them). Methods read
different views of ``J`` — only the losses (loss weightings), the Gramian ``G = J_s J_sᵀ`` of the
shared rows (MGDA, UPGrad, Nash-MTL, ...), or the shared rows themselves (GradDrop) — and every update
has the same shape: ``J_sᵀ w`` (or an aggregate of the rows) for the shared parameters, ``J_hᵀ c``
for the task-specific ones (``c = 1``: each head its own task's gradient, or ``c = w``), plus the
gradient of the auxiliary terms (MoE balancing, CI-KD, Rep-MTL) with weight 1.

:class:`TaskGradients` gives those views on demand inside one traced step: only what a method asks
for is computed, and what is asked twice is computed once. Build it with :func:`task_gradients` at a
*level* (where the per-task gradients are taken):

* ``"param"`` — ``J`` over the parameters from one linearisation (the ``T`` unit cotangents pulled
  back with ``vmap``; ``chunk_size`` at a time with ``lax.map``). The update is ``Jᵀw`` from the rows
  when they were formed, else one VJP with cotangent ``w`` (loss weightings never form ``J``).
* ``"gramian"`` — only ``G`` (at most ``2·chunk_size`` rows alive, :func:`gramian_from_vjp`); the
  update is one more VJP.
* ``"autogram"`` — ``G`` and the update from the layer-wise Gramian of dense kernels
  (:mod:`mtljax.optim.autogram`, after TorchJD's autogram): per dense layer, from its inputs and the
  per-task gradients of its outputs, without forming the per-task kernel gradients; the update needs
  no further pullback. Same values as ``"param"`` up to float rounding.
* ``"rep"`` — ``J`` w.r.t. the shared representation ``Z`` (MGDA-UB, Sener & Koltun 2018), each task's
  row from its own head where the decoder says its tasks are independent (``decode_task``); the
  update flows back through the encoder with cotangent ``J_Zᵀ w``. The decoder must read only
  task-specific parameters (heads); the representation level of the shared parameters is exact by the
  chain rule, only the Gramian differs.

A multi-task optax transform (:func:`mtljax.optim.as_optax`) consumes a ``TaskGradients`` or plain
stacked per-task gradients (:meth:`TaskGradients.from_rows`). The object can also recompute itself
at other parameters (:meth:`at`: plain SAM) and gives the per-task loss function (:attr:`loss_fn`:
flat-region SAM).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from mtljax.optim.autogram import autogram_level
from mtljax.optim.jacobian import check_chunk_size, combine, gramian_from_vjp, gramian_of, jacobian_from_vjp

LEVELS = ("param", "gramian", "rep", "autogram")


class Partition:
    """Splits a parameter pytree into its shared and task-specific leaves (flat lists) and back."""

    def __init__(self, like, specific=None):
        leaves, self.treedef = jax.tree.flatten(like)
        if specific is None:
            self.mask = [False] * len(leaves)
        else:
            self.mask = [bool(m) for m in self.treedef.flatten_up_to(specific)]

    def split(self, tree) -> tuple[list, list]:
        leaves = self.treedef.flatten_up_to(tree)
        return ([x for x, m in zip(leaves, self.mask) if not m], [x for x, m in zip(leaves, self.mask) if m])

    def merge(self, shared, specific):
        shared, specific = iter(shared), iter(specific)
        return jax.tree.unflatten(self.treedef, [next(specific) if m else next(shared) for m in self.mask])


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


class _Rows(NamedTuple):
    shared: list  # leaves [T, ...]
    specific: list
    extra: tuple[list, list] | None  # the auxiliary term's gradient (shared, specific), or None


class TaskGradients:
    """Lazy per-task gradients at one point; see the module docstring.

    ``losses`` ``[T]`` (what the method sees: static task weights already applied) and ``key`` (for
    stochastic methods) are plain attributes. After a transform combined them, ``applied_weights``
    and ``applied_update`` hold the weights and the combined gradient it used (for logging).
    """

    def __init__(self, losses: jax.Array, part: Partition, *, key=None, pullback=None, rows=None,
                 gramian=None, has_extra: bool = False):
        self.losses, self.part, self.key, self.has_extra = losses, part, key, has_extra
        self._pullback = pullback  # cot [T] -> (shared leaves, specific leaves), auxiliary term included
        self._rows_fn, self._gramian_fn = rows, gramian
        self._rows: _Rows | None = None
        self._gramian = None
        self._rebuild = self._loss_fn = None  # set by task_gradients
        self.applied_weights = None
        self.applied_update = None

    @property
    def num_tasks(self) -> int:
        return self.losses.shape[0]

    # ---- views ------------------------------------------------------------------------------------
    def gramian(self) -> jax.Array:
        """``G = J_s J_sᵀ`` ``[T, T]`` of the shared rows (computed once)."""
        if self._gramian is None:
            self._gramian = self._gramian_fn() if self._gramian_fn is not None else gramian_of(self.rows().shared)
        return self._gramian

    def rows(self) -> _Rows:
        """The per-task gradients themselves (``param`` level only; computed once)."""
        if self._rows is None:
            if self._rows_fn is None:
                raise ValueError("these per-task gradients are not materialised at this level; methods that read "
                                 "the gradients themselves (GradDrop, flat-region SAM) need level 'param'")
            self._rows = self._rows_fn()
        return self._rows

    def shared_rows(self) -> list:
        """Shared leaves ``[T, ...]`` (a flat list in the parameters' leaf order)."""
        return self.rows().shared

    def update(self, w: jax.Array | None, head_weights: jax.Array, *, shared: list | None = None,
               clip_shared: float = 0.0):
        """The update, shaped like the parameters: shared ``J_sᵀ w`` (or ``shared``, an aggregate of
        the rows), task-specific ``J_hᵀ head_weights``, plus the auxiliary terms' gradient.

        ``clip_shared > 0`` rescales the shared part (without the auxiliary terms) to at most that
        global norm.
        """
        if self._rows is not None or shared is not None:  # from the rows
            rows = self.rows()
            g_s = _clip(shared if shared is not None else combine(rows.shared, w), clip_shared)
            g_h = combine(rows.specific, head_weights)
            if rows.extra is not None:
                g_s, g_h = _add(g_s, rows.extra[0]), _add(g_h, rows.extra[1])
        else:  # by pullbacks (one when shared and task-specific weights are the same)
            g_s, g_h = self._pullback(w)
            if head_weights is not w:
                g_h = self._pullback(head_weights)[1]
            if clip_shared:
                if self.has_extra:
                    g_aux = self._pullback(jnp.zeros_like(w))[0]
                    g_s = _add(_clip(jax.tree.map(jnp.subtract, g_s, g_aux), clip_shared), g_aux)
                else:
                    g_s = _clip(g_s, clip_shared)
        out = self.part.merge(g_s, g_h)
        self.applied_weights = w if w is not None else jnp.ones_like(self.losses)
        self.applied_update = out
        return out

    # ---- elsewhere --------------------------------------------------------------------------------
    def at(self, params) -> "TaskGradients":
        """The same per-task gradients (same batch, level, key) at other ``params`` (plain SAM)."""
        if self._rebuild is None:
            raise ValueError("these per-task gradients cannot be recomputed at other parameters: build them with "
                             "mtljax.optim.task_gradients(...) (SAM needs the loss function)")
        return self._rebuild(params)

    @property
    def loss_fn(self) -> Callable:
        """``params -> losses [T]`` (flat-region SAM differentiates each task at its own point)."""
        if self._loss_fn is None:
            raise ValueError("these per-task gradients carry no loss function: build them with "
                             "mtljax.optim.task_gradients(...) (flat-region SAM needs it)")
        return self._loss_fn

    # ---- from stacked gradients -----------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows, losses: jax.Array, *, specific=None, key=None) -> "TaskGradients":
        """Per-task gradients given as a pytree whose leaves carry a leading task axis ``[T, ...]``."""
        part = Partition(jax.tree.map(lambda x: x[0], rows), specific)
        return cls.from_parts(*part.split(rows), losses, part, key=key)

    @classmethod
    def from_parts(cls, shared: list, specific: list, losses: jax.Array, part: Partition, *,
                   key=None) -> "TaskGradients":
        """Per-task gradients given as the stacked shared and task-specific leaves of ``part``."""
        out = cls(jnp.asarray(losses), part, key=key)
        out._rows = _Rows(list(shared), list(specific), None)
        return out


def _clip(leaves: list, max_norm: float) -> list:
    if not max_norm:
        return leaves
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    return [x * scale.astype(x.dtype) for x in leaves]


# ------------------------------------------------------------------------------------------ builders

class LossFunction(NamedTuple):
    """What :func:`task_gradients` differentiates (one batch, fixed randomness).

    ``losses(params) -> (losses [T], extra, aux)``: ``extra`` is the scalar sum of auxiliary terms
    added with weight 1 (``None`` when there are none: it then costs nothing), ``aux`` a dict to
    return (outputs, metrics). For level ``"rep"`` also ``encode(params) -> (rep, extra, aux)`` and
    ``decode(params, rep) -> (losses [T], aux)``; the two ``aux`` dicts are merged. Optionally
    ``decode_task(params, rep, t) -> losses[t]`` (``t`` a Python int): task ``t``'s loss alone, for
    decoders whose tasks are independent given ``rep`` (one head each). The representation-level
    Gramian then takes each task's gradient from its own head, ``T`` head backward passes, where the
    pullback of ``decode`` with the ``T`` unit cotangents runs every head for every task (``T²``
    backward passes, each writing a ``rep``-sized gradient). On ``benchmarks/mtl_step.py``'s MLP (batch
    256, width 512) the UPGrad step at level ``"rep"`` ran 2.3× faster at ``T = 10`` (27.3 → 11.8 ms,
    temporaries 38.8 → 18.7 MiB) and 1.05× at ``T = 3``. Level ``"param"`` does not use it: there the
    encoder's ``T`` backward passes dominate, and the same split measured 0.99× (``T = 3``) and 1.02×.
    """

    losses: Callable[[Any], tuple]
    encode: Callable[[Any], tuple] | None = None
    decode: Callable[[Any, Any], tuple] | None = None
    decode_task: Callable[[Any, Any, int], jax.Array] | None = None


def task_gradients(fn: LossFunction | Callable, params, *, level: str = "param", specific=None,
                   chunk_size: int | None = None, key=None, gramian_fn: Callable | None = None):
    """``(TaskGradients, aux)`` of ``fn`` at ``params``.

    ``specific``: boolean pytree (like ``params``) of task-specific parameters, or ``None`` (all
    shared). ``gramian_fn(shared_rows) -> G`` replaces :func:`gramian_of` at level ``"param"`` (a
    sharded Gramian on a mesh: :func:`mtljax.optim.jacobian.sharded_gramian`).
    """
    if not isinstance(fn, LossFunction):
        fn = LossFunction(fn)
    if level not in LEVELS:
        raise ValueError(f"level: unknown {level!r}; choose from {LEVELS}")
    check_chunk_size(chunk_size)
    part = Partition(params, specific)
    kw = dict(level=level, specific=specific, chunk_size=chunk_size, key=key, gramian_fn=gramian_fn)

    def rebuild(p):
        return task_gradients(fn, p, **kw)[0]

    def task_losses(p):
        return fn.losses(p)[0]

    if level == "rep":
        if fn.encode is None or fn.decode is None:
            raise ValueError("level 'rep' needs a shared representation (an encode/decode split of the loss)")
        tg, aux = _rep_level(fn, params, part, chunk_size, key)
    elif level == "autogram":
        tg, aux = autogram_level(fn, params, part, chunk_size, key, build=TaskGradients, cotangent=_cotangent)
    else:
        tg, aux = _param_level(fn, params, part, level, chunk_size, key, gramian_fn)
    tg._rebuild, tg._loss_fn = rebuild, task_losses
    return tg, aux


def _cotangent(w: jax.Array, extra: bool) -> jax.Array:
    return jnp.concatenate([w, jnp.ones((1,), w.dtype)]) if extra else w


def _param_level(fn, params, part, level, chunk_size, key, gramian_fn):
    shared, specific = part.split(params)
    has_extra = []

    def vector(s, h):
        losses, extra, aux = fn.losses(part.merge(s, h))
        has_extra.append(extra is not None)
        return (jnp.concatenate([losses, jnp.reshape(extra, (1,)).astype(losses.dtype)]) if extra is not None
                else losses), (losses, aux)

    vec, vjp_fn, (losses, aux) = jax.vjp(vector, shared, specific, has_aux=True)
    extra, num = has_extra[0], losses.shape[0]

    def pullback(w):
        return vjp_fn(_cotangent(w.astype(vec.dtype), extra))

    def rows():
        s, h = jacobian_from_vjp(vjp_fn, vec.shape[0], chunk_size=chunk_size, dtype=vec.dtype)
        task = lambda j: [x[:num] for x in j]  # noqa: E731
        return _Rows(task(s), task(h), ([x[num] for x in s], [x[num] for x in h]) if extra else None)

    gram = None
    if level == "gramian":
        def gram():
            unit = lambda c: (vjp_fn(_cotangent(c, extra))[0],)  # noqa: E731
            return gramian_from_vjp(unit, num, chunk_size=chunk_size, dtype=vec.dtype)
        rows = None
    elif gramian_fn is not None:
        def gram():
            return gramian_fn(tg.shared_rows())

    tg = TaskGradients(losses, part, key=key, pullback=pullback, rows=rows, gramian=gram, has_extra=extra)
    return tg, aux


def _rep_level(fn, params, part, chunk_size, key):
    shared, specific = part.split(params)
    has_extra = []

    def enc(s):
        rep, extra, aux = fn.encode(part.merge(s, specific))
        has_extra.append(extra is not None)
        return (rep, extra if extra is not None else jnp.zeros((), jnp.float32)), aux

    (rep, extra_value), vjp_enc, aux = jax.vjp(enc, shared, has_aux=True)
    losses, vjp_dec, dec_aux = jax.vjp(lambda z, h: fn.decode(part.merge(shared, h), z), rep, specific,
                                       has_aux=True)

    def pullback(w):
        d_rep, g_h = vjp_dec(w.astype(losses.dtype))
        (g_s,) = vjp_enc((d_rep, jnp.ones_like(extra_value)))
        return g_s, g_h

    num = losses.shape[0]

    def gram():
        if fn.decode_task is None or (chunk_size is not None and chunk_size < num):
            return gramian_from_vjp(vjp_dec, num, chunk_size=chunk_size, dtype=losses.dtype)
        heads = part.merge(shared, specific)
        rows = [jax.grad(lambda z, t=t: fn.decode_task(heads, z, t))(rep) for t in range(num)]
        return gramian_of(jax.tree.map(lambda *r: jnp.stack(r), *rows))

    tg = TaskGradients(losses, part, key=key, pullback=pullback, gramian=gram, has_extra=has_extra[0])
    return tg, {**aux, **dec_aux}


__all__ = ["LEVELS", "LossFunction", "Partition", "TaskGradients", "combine", "gramian_of", "task_gradients"]
