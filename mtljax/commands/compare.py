"""Compare multi-task methods on one config: Δm (mean ± std over seeds) and a trade-off plot.

    mtljax compare --config=configs/multitab.py:conflict --methods=equal,uw,pcgrad,upgrad --seeds=3 \
        --outdir=runs/compare_multitab

For every seed, single-task baselines are trained once (``<outdir>/seed<k>/baselines``) and every
method is trained with the same seed (``<outdir>/seed<k>/<method>``); finished runs are reused, so an
interrupted comparison continues where it stopped. A method spec is ``name[@level][+flat]``:
``pcgrad@rep`` takes per-task gradients at the representation, ``upgrad+flat`` wraps the method in
task-based flat-region SAM. Writes ``results.md`` (the table), ``results.json`` and
``tradeoff.png`` (per-task metric of every method, mean ± std over seeds).
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import numpy as np

from mtljax import metrics as mt
from mtljax.config import ConfigError
from mtljax.optim import METHODS
from mtljax.optim.task_grads import LEVELS


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


def compare(config, methods: Sequence[str], seeds: int, outdir: str, *,
            log: Callable[[str], None] = print) -> dict:
    from mtljax.commands import baselines as bl
    from mtljax.trainer.experiment import Experiment
    from mtljax.trainer.loop import fit

    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    for spec in methods:
        parse_spec(spec)
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
                if summary.get("steps") != config.train.steps:
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
    results = _aggregate(tasks, runs)
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    table = format_results(tasks, results, seeds)
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write(table + "\n")
    plot_tradeoff(tasks, results, os.path.join(outdir, "tradeoff.png"))
    log(table)
    return results


def _aggregate(tasks, runs):
    out = {}
    for spec, summaries in runs.items():
        dm = np.asarray([s["delta_m"] for s in summaries])
        per_task = {}
        for t in tasks:
            per_task[t.name] = {}
            for metric in t.metrics:
                vals = np.asarray([s["metrics"][t.name][metric] for s in summaries])
                per_task[t.name][metric] = {"mean": float(vals.mean()), "std": float(vals.std())}
        out[spec] = {"delta_m": {"mean": float(dm.mean()), "std": float(dm.std()), "runs": dm.tolist()},
                     "metrics": per_task}
    return out


def format_results(tasks, results, seeds: int) -> str:
    cols = [(t.name, m, t.directions()[m]) for t in tasks for m in t.metrics]
    head = ["method", f"Δm % (mean ± std, {seeds} seeds)"] + [f"{n}/{m} {'↑' if h else '↓'}" for n, m, h in cols]
    rows = [head, ["---"] * len(head)]
    order = sorted(results, key=lambda s: -results[s]["delta_m"]["mean"])
    for spec in order:
        r = results[spec]
        cells = [spec, f"{r['delta_m']['mean']:+.2f} ± {r['delta_m']['std']:.2f}"]
        cells += [f"{r['metrics'][n][m]['mean']:.4f}" for n, m, _ in cols]
        rows.append(cells)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def plot_tradeoff(tasks, results, path: str) -> None:
    """Two tasks: a scatter of their first metrics; more: per-task relative metric per method."""
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
            ax.errorbar(a["mean"], b["mean"], xerr=a["std"], yerr=b["std"], fmt="o", capsize=3, label=spec)
            ax.annotate(spec, (a["mean"], b["mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"{ta} {ma}")
        ax.set_ylabel(f"{tb} {mb}")
    else:
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(specs) + 3), 4.5))
        ref = results.get("equal", results[specs[0]])
        width = 0.8 / len(tasks)
        for i, (name, metric) in enumerate(first):
            base = ref["metrics"][name][metric]["mean"]
            sign = 1 if next(t for t in tasks if t.name == name).directions()[metric] else -1
            vals = [sign * (results[s]["metrics"][name][metric]["mean"] - base) / (abs(base) or 1) * 100 for s in specs]
            ax.bar(np.arange(len(specs)) + i * width, vals, width, label=f"{name} {metric}")
        ax.set_xticks(np.arange(len(specs)) + 0.4 - width / 2, specs, rotation=60, ha="right", fontsize=8)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_yscale("symlog", linthresh=10)  # a few collapsed tasks must not flatten the rest
        ax.set_ylabel("improvement over equal weighting (%, symlog)")
        ax.legend(fontsize=7, ncol=2)
    ax.set_title("per-task trade-off (mean over seeds" + (" ± std)" if len(tasks) == 2 else ")"))
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


__all__ = ["compare", "format_results", "parse_methods", "parse_spec", "plot_tradeoff"]
