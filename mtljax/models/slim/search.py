"""From (compute budget, task preference) to encoder and decoder widths.

The rule of Aich et al. (2023): *more-preferred tasks get larger decoders; the shared encoder is
searched to fill the rest of the budget* (a strong shared encoder helps every task, so the budget
left after the decoders goes to it). The paper leaves the exact preference → width map and the
fallback for tight budgets open (its full text was not available offline while writing this; the
rules below are ours, stated so they can be checked):

1. **Decoder widths from the preference.** ``p`` (length T, entries ≥ 0, not all 0) is scaled by
   its largest entry, ``r_t = p_t / max_s p_s ∈ [0, 1]``, and task t gets the ``⌈r_t·(|W_d|−1)⌉``-th
   decoder width of the ascending trained set ``W_d``: the most-preferred task(s) get the widest
   decoder, a task with preference 0 the narrowest, and widths in between are proportional. Only
   ratios of preferences matter (``p`` and ``c·p`` give the same widths).
2. **Encoder fills the budget.** The widest encoder width ``w_e`` with
   ``enc(w_e) + Σ_t dec_t(w_t) ≤ budget``.
3. **Tight budgets.** If not even the narrowest encoder fits, every decoder steps down one width
   together (floored at the narrowest; the preference order is kept) until one does.
   A budget below the smallest configuration's FLOPs is an error naming ``budget``.

**Monotonicity** (tested): raising ``p_t`` never shrinks task t's decoder. Step 1 is monotone in
``r_t``. In step 3, if raising ``p_t`` moves t up by δ widths and needs s′ step-downs where s sufficed
before, then s′ ≤ s + δ (after s + δ steps every other decoder is at or below where it was and t is
back where it was, so the cost is at most the old, feasible one), so t ends at least where it was.

FLOPs come from a :class:`~mtljax.models.slim.flops.FlopsTable` (compiled cost analysis per component).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from mtljax.models.slim.model import SlimConfig
from mtljax.models.slim.flops import FlopsTable


def check_preference(preference, tasks: Sequence[str]) -> np.ndarray:
    """The preference as a float array of length T; one-line errors naming ``preference``."""
    try:
        p = np.asarray(preference, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"preference must be {len(tasks)} numbers (one per task {list(tasks)}), "
                         f"got {preference!r}") from None
    if p.shape[0] != len(tasks):
        raise ValueError(f"preference has {p.shape[0]} entries, the model has {len(tasks)} tasks {list(tasks)}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"preference entries must be finite and >= 0, got {p.tolist()}")
    if not np.any(p > 0):
        raise ValueError("preference is all zeros; give at least one task a positive preference")
    return p


def decoder_indices(preference: np.ndarray, num_widths: int) -> np.ndarray:
    """Rule 1: the decoder width index of each task (0 = narrowest)."""
    r = preference / preference.max()
    return np.ceil(r * (num_widths - 1) - 1e-9).clip(0, num_widths - 1).astype(int)


def search(table: FlopsTable, budget: float, preference) -> tuple[SlimConfig, float]:
    """``(config, flops)``: the configuration for ``budget`` FLOPs per example and ``preference``."""
    tasks = table.tasks
    p = check_preference(preference, tasks)
    if not (isinstance(budget, (int, float)) and math.isfinite(budget)):
        raise ValueError(f"budget must be a finite number of FLOPs, got {budget!r}")
    if budget < table.smallest:
        raise ValueError(f"budget {budget:.4g} FLOPs is below the smallest configuration "
                         f"({table.smallest:.4g} FLOPs, {100 * table.smallest / table.full:.1f}% of full)")
    dec_widths = sorted(next(iter(table.decoders.values())))
    enc_widths = sorted(table.encoder, reverse=True)
    wanted = decoder_indices(p, len(dec_widths))
    for step in range(len(dec_widths)):
        idx = np.maximum(wanted - step, 0)
        decoders = {t: dec_widths[i] for t, i in zip(tasks, idx)}
        spent = sum(table.decoders[t][w] for t, w in decoders.items())
        for w_e in enc_widths:
            if table.encoder[w_e] + spent <= budget:
                config = SlimConfig.make(w_e, decoders)
                return config, table.total(config)
    raise AssertionError("unreachable: the smallest configuration fits")  # pragma: no cover


def parse_budget(text: str, table: FlopsTable) -> float:
    """``'60%'`` (of the full network's FLOPs, in (0, 100%]) or an absolute number of FLOPs per example
    (> 0 and at most the full network's)."""
    s = str(text).strip()
    try:
        number = float(s.removesuffix("%"))
    except ValueError:
        number = float("nan")
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"budget must be a percentage of the full network's FLOPs ('60%') or FLOPs per "
                         f"example ('2.5e6'), got {text!r}")
    if s.endswith("%"):
        if number > 100:
            raise ValueError(f"budget must be in (0, 100%] of the full network's FLOPs, got {text!r}")
        return number / 100.0 * table.full
    if number > table.full:
        raise ValueError(f"budget {number:.4g} FLOPs per example is above the full network's {table.full:.4g} "
                         f"(give at most that, or a percentage such as '100%')")
    return number


def parse_preference(text: str) -> list[float]:
    """``'1,0.5,2'`` → ``[1.0, 0.5, 2.0]`` (checked against the tasks by :func:`check_preference`)."""
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"preference must be comma-separated numbers, one per task, got {text!r}") from None
