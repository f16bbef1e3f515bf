"""Multi-task optimization methods by name (``config.optim.method``).

Each method lives in its own file with its paper and equation in the docstring, and is built by a
constructor returning a :class:`~mtljax.optim.base.Method`; :func:`~mtljax.optim.base.as_optax` turns
any of them into an optax transform over stacked per-task gradients.
"""

from __future__ import annotations

import importlib
import inspect

from mtljax.config import ConfigError
from mtljax.optim.base import Method, MultiTaskState, as_optax
from mtljax.optim.flat_sam import flat_sam
from mtljax.optim.jacobian import combine, gramian_of
from mtljax.optim.loss_scale import LossScale, scale_loss_function
from mtljax.optim.sam import sam, sam_adversary
from mtljax.optim.task_grads import LossFunction, TaskGradients, task_gradients
from mtljax.optim.wrappers import apply_if_finite, multi_steps

# name -> (module, constructor)
METHODS: dict[str, tuple[str, str]] = {
    # loss weightings (need the losses only)
    "equal": ("mtljax.optim.weightings", "equal"),
    "uw": ("mtljax.optim.uw", "uncertainty_weighting"),
    "dwa": ("mtljax.optim.dwa", "dwa"),
    "rlw": ("mtljax.optim.rlw", "random_loss_weighting"),
    "gls": ("mtljax.optim.gls", "geometric_loss"),
    "famo": ("mtljax.optim.famo", "famo"),
    "db_mtl": ("mtljax.optim.db_mtl", "db_mtl"),
    "stch": ("mtljax.optim.stch", "smooth_tchebycheff"),
    "gradnorm": ("mtljax.optim.gradnorm", "gradnorm"),
    # gradient aggregators
    "mgda": ("mtljax.optim.mgda", "mgda"),
    "pcgrad": ("mtljax.optim.pcgrad", "pcgrad"),
    "gradvac": ("mtljax.optim.gradvac", "gradvac"),
    "cagrad": ("mtljax.optim.cagrad", "cagrad"),
    "imtl_g": ("mtljax.optim.imtl", "imtl_g"),
    "nash_mtl": ("mtljax.optim.nash_mtl", "nash_mtl"),
    "aligned_mtl": ("mtljax.optim.aligned_mtl", "aligned_mtl"),
    "upgrad": ("mtljax.optim.upgrad", "upgrad"),
    "dualproj": ("mtljax.optim.dualproj", "dualproj"),
    "config": ("mtljax.optim.conflict_free", "config"),
    "fairgrad": ("mtljax.optim.fairgrad", "fairgrad"),
    "graddrop": ("mtljax.optim.graddrop", "graddrop"),
}


def _constructor(name: str):
    module, ctor = METHODS[name]
    return getattr(importlib.import_module(module), ctor)


# every method's constructor, by its own name (ConFIG's is ``conflict_free``)
equal, uncertainty_weighting, dwa, random_loss_weighting, geometric_loss, famo, db_mtl, smooth_tchebycheff, \
    gradnorm = (_constructor(n) for n in ("equal", "uw", "dwa", "rlw", "gls", "famo", "db_mtl", "stch", "gradnorm"))
mgda, pcgrad, gradvac, cagrad, imtl_g, nash_mtl, aligned_mtl, upgrad, dualproj, conflict_free, fairgrad, graddrop = (
    _constructor(n) for n in ("mgda", "pcgrad", "gradvac", "cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "upgrad",
                              "dualproj", "config", "fairgrad", "graddrop"))


def get_method(name: str, **kwargs) -> Method:
    """Build the method called ``name`` with its keyword arguments (its hyperparameters, whose
    defaults are the constructor's). Raises :class:`~mtljax.config.ConfigError` keyed ``method`` or
    ``method_kwargs`` (relative to ``config.optim``)."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose from {sorted(METHODS)}", "method")
    ctor = _constructor(name)
    params = inspect.signature(ctor).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        known = [k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for key in kwargs:
            if key not in known:
                has = f"its hyperparameters are {known}" if known else "it takes none"
                raise ConfigError(f"{name} has no hyperparameter {key!r}; {has}", f"method_kwargs.{key}")
    try:
        return ctor(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: {str(e).removeprefix(name + ': ')}", "method_kwargs") from None


__all__ = ["METHODS", "aligned_mtl", "cagrad", "conflict_free", "db_mtl", "dualproj", "dwa", "equal", "famo",
           "fairgrad", "geometric_loss", "graddrop", "gradnorm", "gradvac", "imtl_g", "mgda", "nash_mtl", "pcgrad",
           "random_loss_weighting", "smooth_tchebycheff", "uncertainty_weighting", "upgrad", "LossFunction", "LossScale", "Method", "MultiTaskState", "TaskGradients", "apply_if_finite", "as_optax",
           "combine", "flat_sam", "get_method", "gramian_of", "multi_steps", "sam", "sam_adversary",
           "scale_loss_function", "task_gradients"]
