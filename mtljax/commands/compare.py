"""Compare multi-task methods on one config: Δm and per-task metrics with 95 % confidence intervals over
seeds, paired t-tests against equal weighting, and a trade-off plot.

    mtljax compare --config=configs/multitab.py:conflict --methods=equal,uw,pcgrad,upgrad --seeds=3 \
        --outdir=runs/compare_multitab

For every seed, single-task baselines are trained once (``<outdir>/seed<k>/baselines``) and every
method is trained with the same seed (``<outdir>/seed<k>/<method>``); finished runs are reused, so an
interrupted comparison continues where it stopped. A method spec is ``name[@level][+flat]``:
``pcgrad@rep`` takes per-task gradients at the representation, ``upgrad+flat`` wraps the method in
task-based flat-region SAM. Equal weighting (``equal``) is the reference and is trained too when
``--methods`` leaves it out.

Every quantity (Δm, each per-task metric) is reported as its mean over the ``n`` seeds with a 95 %
Student-t confidence interval (``mtljax.stats.mean_ci``), and every method is compared with equal
weighting by a paired t-test over the same seeds (``mtljax.stats.paired_t_test``); a difference with
p < 0.05 is marked ``*``. With one seed there is no interval and no test: the table says ``n/a`` and
``results.json`` holds ``null``. Writes

- ``results.md``: one row per method, sorted by mean Δm (Δm printed as ``+0.00``, metrics as
  ``0.0000``; ``*``: differs from equal weighting with p < 0.05)::

      | method | Δm % [95 % CI] | p (Δm vs equal) | t0/mse ↓ [95 % CI] | t1/mse ↓ [95 % CI] |
      | --- | --- | --- | --- | --- |
      | upgrad | mean [lo, hi] * | p | mean [lo, hi] * | mean [lo, hi] |
      | equal | mean [lo, hi] | ref | mean [lo, hi] | mean [lo, hi] |

  followed by a note on n, the interval, the test and the marks;
- ``results.json``: per method, for ``delta_m`` and for each ``metrics[task][metric]``: ``n``, ``mean``,
  ``std`` (sample std, n − 1), ``ci_low``, ``ci_high``, ``runs`` (one value per seed) and
  ``p_vs_equal`` (``null`` for equal weighting itself, with one seed, or when the test is undefined);
- ``tradeoff.png``: per-task metric of every method, mean over seeds with 95 % CIs as error bars.
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable, Sequence

import numpy as np

from mtljax import metrics as mt
from mtljax import stats
from mtljax.commands import baselines as bl
from mtljax.config import ConfigError
from mtljax.optim import METHODS
from mtljax.optim.task_grads import LEVELS
from mtljax.trainer.experiment import Experiment
from mtljax.trainer.loop import fit


def parse_spec(spec: str) -> dict:
    """``name[@level][+flat]`` -> ``{'method', 'level', 'sam'}``."""
    flat = spec.endswith("+flat")
    body = spec[: -len("+flat")] if flat else spec
    name, _, level = body.partition("@")
    if name not in METHODS:
        raise ConfigError(f"--methods: unknown method {name!r} in {spec!r}; choose from {sorted(METHODS)}")
    if level and level not in LEVELS:
        raise ConfigError(f"--methods: unknown level {level!r} in {spec!r}; choose from {list(LEVELS)}")
    return {"method": name, "level": level or None, "sam": "flat" if flat else None}


def _configure(config, spec: str, seed: int, workdir: str):
    c = config.copy_and_resolve_references()
    parsed = parse_spec(spec)
    c.seed = seed
    c.workdir = workdir
    c.optim.method = parsed["method"]
    if parsed["level"]:
        c.optim.level = parsed["level"]
    if parsed["sam"]:
        c.optim.sam = parsed["sam"]
    c.train.progress = False
    return c


REFERENCE = "equal"
ALPHA = 0.05


def compare(config, methods: Sequence[str], seeds: int, outdir: str, *,
            log: Callable[[str], None] = print) -> dict:

    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    for spec in methods:
        parse_spec(spec)
    methods = list(methods)
    if REFERENCE not in methods:
        log(f"adding {REFERENCE!r}: it is the reference of the paired tests")
        methods.append(REFERENCE)
    tasks = Experiment(_configure(config, methods[0], config.seed, os.path.join(outdir, "check"))).tasks
    runs: dict[str, list[dict]] = {spec: [] for spec in methods}
    for k in range(seeds):
        seed = config.seed + k
        base_cfg = _configure(config, "equal", seed, os.path.join(outdir, f"seed{k}"))
        base_cfg.baselines.train = True
        baselines = bl.resolve(base_cfg, log=log)
        for spec in methods:
            workdir = os.path.join(outdir, f"seed{k}", spec)
            final = os.path.join(workdir, "final_metrics.json")
            if os.path.exists(final):
                with open(final) as f:
                    summary = json.load(f)
                if summary.get("step", summary.get("steps")) != config.train.steps:
                    summary = None
            else:
                summary = None
            if summary is None:
                log(f"seed {seed}: training {spec}")
                c = _configure(config, spec, seed, workdir)
                c.baselines.file = os.path.join(base_cfg.workdir, "baselines.json")
                summary = fit(c, baselines=baselines, log=lambda s: None)
            summary["delta_m"] = mt.delta_m(tasks, summary["metrics"], baselines)
            runs[spec].append(summary)
    results = aggregate(tasks, runs)
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    table = format_results(tasks, results)
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write(table + "\n")
    plot_tradeoff(tasks, results, os.path.join(outdir, "tradeoff.png"))
    log(table)
    return results


def summarize(values: Sequence[float], reference: Sequence[float] | None) -> dict:
    """Mean, std, 95 % CI of ``values`` and the paired-test p against ``reference`` (None: no test)."""
    s = stats.mean_ci(values)
    test = None if reference is None else stats.paired_t_test(values, reference)
    p = None if test is None or math.isnan(test.pvalue) else test.pvalue
    return {"n": s.n, "mean": s.mean, "std": s.std, "ci_low": s.ci_low, "ci_high": s.ci_high,
            "runs": [float(v) for v in values], "p_vs_equal": p}


def aggregate(tasks, runs: dict[str, list[dict]]) -> dict:
    """Per method: Δm and every per-task metric summarised over seeds and tested against equal weighting.

    ``runs[spec][k]`` is the final summary of ``spec`` at seed ``k`` (with its ``delta_m``); every method
    has the same seeds in the same order as ``runs["equal"]``.
    """
    ref = runs[REFERENCE]

    def column(summaries, task=None, metric=None):
        if task is None:
            return [s["delta_m"] for s in summaries]
        return [s["metrics"][task][metric] for s in summaries]

    out = {}
    for spec, summaries in runs.items():
        if len(summaries) != len(ref):
            raise ValueError(f"{spec!r} has {len(summaries)} runs, {REFERENCE!r} has {len(ref)}")
        paired = spec != REFERENCE
        out[spec] = {
            "delta_m": summarize(column(summaries), column(ref) if paired else None),
            "metrics": {t.name: {m: summarize(column(summaries, t.name, m),
                                              column(ref, t.name, m) if paired else None)
                                 for m in t.metrics} for t in tasks},
        }
    return out


def _significant(entry: dict) -> bool:
    return entry["p_vs_equal"] is not None and entry["p_vs_equal"] < ALPHA


def _cell(entry: dict, fmt: str) -> str:
    mean = format(entry["mean"], fmt)
    if entry["ci_low"] is None:
        return f"{mean} [n/a]"
    cell = f"{mean} [{format(entry['ci_low'], fmt)}, {format(entry['ci_high'], fmt)}]"
    return cell + (" *" if _significant(entry) else "")


def _p(spec: str, entry: dict) -> str:
    if spec == REFERENCE:
        return "ref"
    p = entry["p_vs_equal"]
    return "n/a" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def format_results(tasks, results: dict) -> str:
    """The Markdown table of ``aggregate``'s results (sorted by mean Δm) and a note on how to read it."""
    cols = [(t.name, m, t.directions()[m]) for t in tasks for m in t.metrics]
    head = ["method", "Δm % [95 % CI]", f"p (Δm vs {REFERENCE})"]
    head += [f"{n}/{m} {'↑' if h else '↓'} [95 % CI]" for n, m, h in cols]
    rows = [head, ["---"] * len(head)]
    for spec in sorted(results, key=lambda s: -results[s]["delta_m"]["mean"]):
        r = results[spec]
        cells = [spec, _cell(r["delta_m"], "+.2f"), _p(spec, r["delta_m"])]
        cells += [_cell(r["metrics"][n][m], ".4f") for n, m, _ in cols]
        rows.append(cells)
    n = results[REFERENCE]["delta_m"]["n"]
    if n < 2:
        note = "n = 1 seed: no confidence interval and no test (n/a). Δm: multi-task gain over the " \
               "single-task baselines (%)."
    else:
        note = (f"n = {n} seeds per method (shared by all methods). [lo, hi]: 95 % Student-t confidence "
                f"interval of the mean over seeds. p: two-sided paired t-test against {REFERENCE} weighting "
                f"over the same seeds; * marks a difference from {REFERENCE} with p < {ALPHA} (Δm and each "
                f"metric tested separately, no multiple-comparison correction); n/a: the test is undefined "
                f"(identical to {REFERENCE} on every seed). Δm: multi-task gain over the single-task "
                f"baselines (%).")
    return "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n\n" + note


def _half_width(entry: dict) -> float:
    """Half the 95 % CI, 0 when there is none (one seed)."""
    return 0.0 if entry["ci_high"] is None else entry["ci_high"] - entry["mean"]


def plot_tradeoff(tasks, results, path: str) -> None:
    """Two tasks: a scatter of their first metrics; more: per-task relative metric per method.

    Error bars are the 95 % confidence intervals of the means over seeds (none with one seed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = list(results)
    first = [(t.name, t.metrics[0]) for t in tasks]
    if len(tasks) == 2:
        fig, ax = plt.subplots(figsize=(6, 5))
        (ta, ma), (tb, mb) = first
        for spec in specs:
            a, b = results[spec]["metrics"][ta][ma], results[spec]["metrics"][tb][mb]
            ax.errorbar(a["mean"], b["mean"], xerr=_half_width(a), yerr=_half_width(b), fmt="o", capsize=3,
                        label=spec)
            ax.annotate(spec, (a["mean"], b["mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"{ta} {ma}")
        ax.set_ylabel(f"{tb} {mb}")
    else:
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(specs) + 3), 4.5))
        ref = results[REFERENCE]
        width = 0.8 / len(tasks)
        for i, (name, metric) in enumerate(first):
            base = ref["metrics"][name][metric]["mean"]
            scale = 100 / (abs(base) or 1)
            sign = 1 if next(t for t in tasks if t.name == name).directions()[metric] else -1
            entries = [results[s]["metrics"][name][metric] for s in specs]
            vals = [sign * (e["mean"] - base) * scale for e in entries]
            errs = [_half_width(e) * scale for e in entries]
            ax.bar(np.arange(len(specs)) + i * width, vals, width, yerr=errs, capsize=2, label=f"{name} {metric}")
        ax.set_xticks(np.arange(len(specs)) + 0.4 - width / 2, specs, rotation=60, ha="right", fontsize=8)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_yscale("symlog", linthresh=10)  # a few collapsed tasks must not flatten the rest
        ax.set_ylabel(f"improvement over {REFERENCE} weighting (%, symlog)")
        ax.legend(fontsize=7, ncol=2)
    n = results[REFERENCE]["delta_m"]["n"]
    ax.set_title("per-task trade-off (" + ("one seed)" if n < 2 else f"mean over {n} seeds ± 95 % CI)"))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_methods(text: str) -> list[str]:
    if text == "all":
        return sorted(METHODS)
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise ConfigError("--methods is empty")
    return specs


__all__ = ["REFERENCE", "aggregate", "compare", "format_results", "parse_methods", "parse_spec",
           "plot_tradeoff", "summarize"]


def compare_command(config, args) -> int:
    """``mtljax compare`` (``args``: the parsed flags)."""
    outdir = args.outdir or os.path.join(config.workdir, "compare")
    compare(config, parse_methods(args.methods), args.seeds, outdir)
    return 0
