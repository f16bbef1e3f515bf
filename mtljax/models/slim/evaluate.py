"""Evaluate a trained slim model: every configuration, controllability and hypervolume.

Evaluation data comes as ``batches``: a function returning a fresh iterable of batches (dicts with
``inputs``, ``targets`` and ``masks``, e.g. ``lambda: mtljax.data.eval_batches(split, tasks, 256)``),
called once per pass.

**Per-configuration metrics without evaluating every configuration.** The shared representation does
not depend on the decoder widths and task t's output depends only on the encoder width and *its own*
decoder width, so task t's metrics at any configuration are those at ``(w_e, w_t)``. One pass over
the test split per encoder width (all decoders at all widths on the same representation, sliced,
one compiled program per encoder width) fills a :class:`MetricTable` of ``|W_e|·|W_d|`` entries per
task, from which the metrics of all ``|W_e|·|W_d|^T`` configurations are exact look-ups.

**Sweep** (:func:`sweep`): at each budget (fractions of the full network's FLOPs, from the smallest
configuration's to 100 %), ``num_preferences`` preference vectors drawn uniformly from the simplex
(Dirichlet(1, …, 1), fixed seed) plus the uniform preference and each one-hot preference go through
the search (:mod:`mtljax.models.slim.search`). Reported per budget: controllability (Spearman and Kendall,
:mod:`mtljax.models.slim.controllability`, over the Dirichlet samples) and the hypervolume
(:mod:`mtljax.models.slim.hypervolume`) of the chosen sub-networks' task scores. For the hypervolume each
task's primary metric (sign-flipped if lower is better) is normalised to [0, 1] between its worst and
best value over the whole table (every encoder × decoder width), and the reference point is 0 —
"the worst the super-network does on that task"; HV is then a fraction of the unit box, comparable
across budgets and models with the same trained widths. Summary numbers are means over the budgets
where they are defined.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

from mtljax import metrics as mt
from mtljax.models.slim.model import SlimConfig
from mtljax.models.slim.controllability import controllability
from mtljax.models.slim.flops import FlopsTable
from mtljax.models.slim.hypervolume import hypervolume
from mtljax.models.slim.search import search


@dataclasses.dataclass
class MetricTable:
    """``values[task][(w_e, w_d)] = {metric: value}`` for every trained encoder and decoder width."""

    tasks: tuple  # Task objects
    values: Mapping[str, Mapping[tuple[float, float], Mapping[str, float]]]

    def primary(self, task) -> tuple[str, bool]:
        """The task's first metric and whether higher is better."""
        name, higher = next(iter(task.directions().items()))
        return name, higher

    def metrics(self, config: SlimConfig) -> dict[str, dict[str, float]]:
        return {t.name: dict(self.values[t.name][(config.encoder, config.decoder(t.name))]) for t in self.tasks}

    def scores(self, config: SlimConfig) -> np.ndarray:
        """Primary metric of each task, sign-flipped where lower is better (higher = better)."""
        out = []
        for t in self.tasks:
            name, higher = self.primary(t)
            v = self.values[t.name][(config.encoder, config.decoder(t.name))][name]
            out.append(v if higher else -v)
        return np.asarray(out, np.float64)

    def score_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-task (worst, best) score over every (encoder width, decoder width) pair."""
        lo, hi = [], []
        for t in self.tasks:
            name, higher = self.primary(t)
            vals = np.array([(m[name] if higher else -m[name]) for m in self.values[t.name].values()])
            lo.append(vals.min())
            hi.append(vals.max())
        return np.asarray(lo), np.asarray(hi)

    def to_dict(self) -> dict:
        return {t: {f"{we:g}/{wd:g}": m for (we, wd), m in v.items()} for t, v in self.values.items()}


Batches = Callable[[], Iterable[dict]]


def metric_table(model, params, batches: Batches, tasks: Sequence) -> MetricTable:
    """Task metrics at every (encoder width, decoder width), one pass over ``batches()`` per encoder width."""
    names = [t.name for t in tasks]
    dec_widths = model.decoder_widths

    def make(w_e):
        def run(params, batch):
            rep, _ = model.apply({"params": params}, batch["inputs"], widths={"encoder": w_e, "decoders": 1.0},
                                 method=model.encode)
            stats = {}
            for t in tasks:
                for w in dec_widths:
                    widths = {"encoder": w_e, "decoders": {n: w for n in names}}
                    out = model.apply({"params": params}, rep, task=t.name, widths=widths, method=model.decode)
                    stats[f"{t.name}@{w}"] = t.stats(out[t.name], batch["targets"][t.name], batch["masks"][t.name])
            return stats

        return jax.jit(run)

    values = {n: {} for n in names}
    for w_e in model.encoder_widths:
        run, total = make(w_e), None
        for batch in batches():
            total = mt.add_stats(total, run(params, batch))
        for t in tasks:
            for w in dec_widths:
                values[t.name][(w_e, w)] = t.finalize(total[f"{t.name}@{w}"])
    return MetricTable(tuple(tasks), values)


def _normalised(table: MetricTable, scores: np.ndarray) -> np.ndarray:
    lo, hi = table.score_range()
    return (scores - lo) / np.where(hi > lo, hi - lo, 1.0)


def sweep(table: MetricTable, flops: FlopsTable, budgets: Sequence[float] | None = None, num_budgets: int = 8,
          num_preferences: int = 32, seed: int = 0) -> dict:
    """Controllability and hypervolume per budget (fractions of full FLOPs), and their means."""
    names = [t.name for t in table.tasks]
    n_tasks = len(names)
    lowest = flops.smallest / flops.full
    if budgets is None:
        budgets = np.linspace(lowest, 1.0, num_budgets)
    rng = np.random.default_rng(seed)
    prefs = rng.dirichlet(np.ones(n_tasks), size=num_preferences)
    named = {"uniform": np.ones(n_tasks), **{f"only_{n}": np.eye(n_tasks)[i] for i, n in enumerate(names)}}
    rows = []
    for frac in budgets:
        budget = float(frac) * flops.full
        if budget < flops.smallest:
            raise ValueError(f"budgets: {frac:.3f} of full FLOPs is below the smallest configuration "
                             f"({lowest:.3f})")
        chosen = [search(flops, budget, p)[0] for p in prefs]
        scores = np.stack([table.scores(c) for c in chosen])
        c_s, per_task = controllability(prefs, scores, "spearman")
        c_k, _ = controllability(prefs, scores, "kendall")
        extra = {k: search(flops, budget, p) for k, p in named.items()}
        front = np.concatenate([scores, np.stack([table.scores(c) for c, _ in extra.values()])])
        rows.append({
            "budget_fraction": float(frac), "budget_flops": budget,
            "controllability_spearman": c_s, "controllability_kendall": c_k,
            "controllability_per_task": dict(zip(names, per_task.tolist())),
            "hypervolume": hypervolume(_normalised(table, front), np.zeros(n_tasks), seed=seed),
            "distinct_configs": len({str(c) for c in chosen}),
            "named": {k: {"config": c.to_dict(), "flops": f, "fraction": f / flops.full,
                          "metrics": table.metrics(c)} for k, (c, f) in extra.items()},
        })
    return {
        "controllability_spearman": _nanmean([r["controllability_spearman"] for r in rows]),
        "controllability_kendall": _nanmean([r["controllability_kendall"] for r in rows]),
        "hypervolume": _nanmean([r["hypervolume"] for r in rows]),
        "num_preferences": num_preferences, "seed": seed, "budgets": rows,
        "uniform_widths": uniform_configs(table, flops),
    }


def uniform_configs(table: MetricTable, flops: FlopsTable) -> list[dict]:
    """FLOPs and metrics of the configurations with one width multiplier everywhere (when trained)."""
    names = [t.name for t in table.tasks]
    dec = set(next(iter(flops.decoders.values())))
    out = []
    for w in sorted(set(flops.encoder) & dec):
        c = SlimConfig.make(w, {n: w for n in names})
        f = flops.total(c)
        out.append({"width": w, "flops": f, "fraction": f / flops.full, "metrics": table.metrics(c)})
    return out


def _nanmean(values) -> float:
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def evaluate_model(model, params, batches: Batches, tasks: Sequence, widths=None) -> dict[str, dict[str, float]]:
    """Per-task metrics of one (sub-)network over ``batches()`` (``widths``: a configuration, or full)."""

    @jax.jit
    def run(params, batch):
        out, _ = model.apply({"params": params}, batch["inputs"], widths=widths)
        return {t.name: t.stats(out[t.name], batch["targets"][t.name], batch["masks"][t.name]) for t in tasks}

    total = None
    for batch in batches():
        total = mt.add_stats(total, run(params, batch))
    return mt.finalize(tasks, total)
