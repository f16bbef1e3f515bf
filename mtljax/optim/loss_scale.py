"""Loss scaling for float16 training: gradients through a float16 network without underflow.

Float16 has 5 exponent bits: gradients below ~6e-8 flush to zero and activation gradients of a deep
network often live there. Loss scaling multiplies the backward pass's cotangents by ``S`` where they
enter the network (at the losses) and divides the gradients by ``S`` where they leave it (at the
float32 parameters), so the float16 part of the backward pass runs on values ``S`` times larger and the
parameters still receive the true gradient (Micikevicius et al., *Mixed Precision Training*, ICLR 2018).

Here the scaling lives in the loss function's VJP (:func:`scale_loss_function`): an identity whose
backward multiplies by ``S`` on every output of the loss function and one whose backward divides by
``S`` on every input (parameters, and the representation at level ``rep``). The forward values are
untouched, and every view of the per-task gradients (rows, Gramian, update; all three levels, SAM's
recomputation) is of the unscaled gradients, so a multi-task method never sees ``S``.

* **static** (``config.train.loss_scale = 1024.0``): a fixed ``S`` (an overflow stops the run like any
  non-finite step: a fixed scale cannot adapt);
* **dynamic** (``'dynamic'``; ``'auto'`` picks it when ``config.model.dtype`` is ``float16``): ``S``
  starts at 2¹⁶; a step whose gradients overflow (inf/NaN with finite losses) is skipped (the state is
  kept) and ``S`` halves; after ``growth_interval`` = 2000 finite steps in a row ``S`` doubles — the
  schedule of PyTorch's ``GradScaler`` defaults. Should ``S`` fall below 1 and the gradients still not
  be finite, the step counts as non-finite and the run stops (a real NaN, not an overflow).

bfloat16 has float32's exponent range and needs no scaling (``'auto'`` gives none).

Level ``autogram`` finds dense kernels by their uses in the loss function's jaxpr; behind the scaling
identity every parameter is first read by a ``custom_vjp``, so it finds none: a run refuses the
combination before compiling (``config.optim.level``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from mtljax.config import ConfigError
from mtljax.optim.task_grads import LossFunction


@dataclasses.dataclass(frozen=True)
class LossScale:
    """How losses are scaled: ``dynamic`` (start at ``init``) or a static ``init``."""

    dynamic: bool = True
    init: float = 2.0 ** 16
    growth_interval: int = 2000
    factor: float = 2.0
    min_scale: float = 1.0

    def initial_state(self) -> "LossScaleState":
        return LossScaleState(scale=jnp.asarray(self.init, jnp.float32), good_steps=jnp.zeros((), jnp.int32))

    def adjust(self, state: "LossScaleState", grads_finite) -> "LossScaleState":
        """The next state after a step whose gradients were (not) finite."""
        if not self.dynamic:
            return state
        grow = grads_finite & (state.good_steps + 1 >= self.growth_interval)
        scale = jnp.where(grads_finite, jnp.where(grow, state.scale * self.factor, state.scale),
                          jnp.maximum(state.scale / self.factor, self.min_scale / self.factor))
        good = jnp.where(grads_finite & ~grow, state.good_steps + 1, 0)
        return LossScaleState(scale=scale.astype(jnp.float32), good_steps=good.astype(jnp.int32))


@flax.struct.dataclass
class LossScaleState:
    scale: jax.Array  # float32 []
    good_steps: jax.Array  # int32 []: finite steps since the last change


def parse_loss_scale(value: Any, compute_dtype: str, key: str = "loss_scale") -> LossScale | None:
    """``config.train.loss_scale`` → a :class:`LossScale` or ``None`` (no scaling); a ConfigError naming ``key``."""
    if isinstance(value, str):
        if value == "auto":
            return LossScale() if compute_dtype == "float16" else None
        if value == "dynamic":
            return LossScale()
        if value == "none":
            return None
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and value < float("inf"):
        return LossScale(dynamic=False, init=float(value))
    raise ConfigError(f"must be 'auto', 'dynamic', 'none' or a positive number, got {value!r}", key)


def _scale_ct(tree, scale, factor_fn):
    @jax.custom_vjp
    def ident(t, s):
        return t

    def fwd(t, s):
        return t, s

    def bwd(s, ct):
        return jax.tree.map(lambda c: c if c.dtype == jax.dtypes.float0 else (factor_fn(c, s)), ct), jnp.zeros_like(s)

    ident.defvjp(fwd, bwd)
    return ident(tree, scale)


def _up(tree, scale):  # backward: cotangent × S (outputs of the loss function)
    return _scale_ct(tree, scale, lambda c, s: c * s.astype(c.dtype))


def _down(tree, scale):  # backward: cotangent ÷ S (inputs of the loss function), in float32 at least
    return _scale_ct(tree, scale, lambda c, s: (c.astype(jnp.promote_types(c.dtype, jnp.float32)) / s).astype(c.dtype))


def _wrap_out(out, scale, n_scaled: int):
    """Scale the first ``n_scaled`` entries' cotangents (losses / representation, extra); aux untouched."""
    head = tuple(None if x is None else _up(x, scale) for x in out[:n_scaled])
    return (*head, *out[n_scaled:])


def scale_loss_function(fn: LossFunction, scale) -> LossFunction:
    """``fn`` with its backward pass scaled by ``scale`` inside and unscaled at its inputs."""
    def losses(params):
        return _wrap_out(fn.losses(_down(params, scale)), scale, 2)

    encode = decode = None
    if fn.encode is not None:
        def encode(params):
            return _wrap_out(fn.encode(_down(params, scale)), scale, 2)

    if fn.decode is not None:
        def decode(params, rep):
            return _wrap_out(fn.decode(_down(params, scale), _down(rep, scale)), scale, 1)

    decode_task = None
    if fn.decode_task is not None:
        def decode_task(params, rep, t):
            return _up(fn.decode_task(_down(params, scale), _down(rep, scale), t), scale)

    return LossFunction(losses, encode, decode, decode_task)


__all__ = ["LossScale", "LossScaleState", "parse_loss_scale", "scale_loss_function"]
