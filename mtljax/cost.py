"""Compiled cost: the FLOPs XLA's cost analysis reports for a function, one helper for the whole package.

``compiled_flops(fn, *args)`` lowers ``jax.jit(fn)`` for ``args`` (arrays or ``jax.ShapeDtypeStruct``s:
nothing runs) and reads the program's cost analysis: ``stage='compiled'`` (default) after XLA's
optimisations, i.e. what the backend will run; ``stage='lowered'`` the program as written, before
fusion (exactly additive over the parts of a program). :func:`flops_of` reads the same number from a
``Lowered`` or ``Compiled`` object one already has (a benchmark that times the compiled function).

XLA counts a multiply-add as 2 FLOPs, and elementwise ops, reductions and transcendental functions
count too; the count is per call of ``fn`` with those argument shapes.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

STAGES = ("compiled", "lowered")


def flops_of(program: Any) -> float:
    """FLOPs in the cost analysis of a ``jax.stages.Lowered`` or ``Compiled`` (0 when it reports none)."""
    cost = program.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per device program
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def compiled_flops(fn: Callable, *args: Any, stage: str = "compiled") -> float:
    """FLOPs of ``jax.jit(fn)(*args)`` from XLA's cost analysis at ``stage`` (``'compiled'`` | ``'lowered'``)."""
    if stage not in STAGES:
        raise ValueError(f"stage: unknown {stage!r}; choose from {STAGES}")
    lowered = jax.jit(fn).lower(*args)
    return flops_of(lowered.compile() if stage == "compiled" else lowered)
