"""``mtljax slim``: slim a trained slim model to a budget and a task preference.

    mtljax slim --config=configs/slim_digits.py --workdir=runs/slim_digits --budget=50% --preference=1,0.25
    mtljax slim --config=configs/slim_digits.py --workdir=runs/slim_digits --sweep

With ``--budget`` (``'60%'`` of the full network's FLOPs, or FLOPs per example) and ``--preference``
(one non-negative number per task, comma-separated; default uniform) it loads the newest checkpoint
of the run, measures every component's FLOPs (compiled cost analysis), searches the configuration
(:mod:`mtljax.models.slim.search`; the FLOPs table is kept in ``<workdir>/slim/flops.json`` and reused),
prints it with its FLOPs (absolute and % of full) and the per-task test
metrics *of the exported sub-network itself*, and writes that sub-network (a smaller standalone
parameter tree, orbax, plus ``subnet.json``) to ``--export_dir`` (default
``<workdir>/subnets/<budget>_<preference>``; load it with
:func:`mtljax.models.slim.load_subnetwork`).

``--widths=0.5`` or ``--widths=encoder=0.5,left=1,right=0.25`` skips the search and exports that
configuration (every multiplier must be in the trained sets).

With ``--sweep`` it fills the metric table of every encoder × decoder width, runs the budget ×
preference sweep (:mod:`mtljax.models.slim.evaluate`) and writes ``<workdir>/slim/report.json`` and the
trade-off plot ``<workdir>/slim/tradeoff.png``.

Argument mistakes (preference length or sign, budget syntax, a run without checkpoints, a model that
is not a slim model) stop with one line naming the argument before anything is compiled; a budget
below the smallest configuration is known only once the FLOPs are measured (cost-analysis compiles
of the components, no evaluation) and stops there, also with one line.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import numpy as np

from mtljax import metrics as mt
from mtljax.config import ConfigError


def _restore_params(exp):
    from mtljax.trainer.loop import restore_params

    with jax.set_mesh(exp.mesh):
        step, params, _ = restore_params(exp)
    return step, jax.device_get(params)


def _tag(budget: str, preference: list[float]) -> str:
    b = budget.strip().replace("%", "pct")
    return f"b{b}_p" + "-".join(f"{p:g}" for p in preference)


def parse_widths(text: str, tasks) -> dict:
    """``'0.5'`` (every component) or ``'encoder=0.5,left=1,right=0.25'`` → a widths dict."""
    text = str(text).strip()
    try:
        if "=" not in text:
            return {"encoder": float(text), "decoders": float(text)}
        items = dict(item.split("=", 1) for item in text.split(",") if item.strip())
        values = {k.strip(): float(v) for k, v in items.items()}
    except ValueError:
        raise ValueError(f"widths must be one multiplier ('0.5') or 'encoder=W,<task>=W,...', got {text!r}") from None
    if "encoder" not in values:
        raise ValueError(f"widths: no 'encoder=W' in {text!r}")
    return {"encoder": values.pop("encoder"), "decoders": values}


def run_slim(config, *, budget: str | None = None, preference: str | None = None, export_dir: str | None = None,
             do_sweep: bool = False, num_budgets: int = 8, num_preferences: int = 32, widths: str | None = None,
             log: Callable[[str], None] = print) -> dict:
    from mtljax.data import eval_batches
    from mtljax.models.slim import evaluate as ev
    from mtljax.models.slim.export import export, save_subnetwork
    from mtljax.models.slim.flops import cached_flops_table
    from mtljax.models.slim.search import check_preference, parse_budget, parse_preference, search
    from mtljax.trainer.experiment import Experiment

    if config.model.name != "slim":
        raise ConfigError(f"config.model.name={config.model.name!r}: mtljax slim needs a slim model "
                          "(config.model.name='slim', e.g. --config=configs/slim_digits.py)")
    if budget is None and widths is None and not do_sweep:
        raise ConfigError("--budget: give a compute budget ('50%' of full FLOPs, or FLOPs per example) "
                          "and --preference, or --widths, or --sweep")
    if budget is not None and widths is not None:
        raise ConfigError("--widths: give either --widths or --budget (with --preference), not both")
    exp = Experiment(config)
    names = [t.name for t in exp.tasks]
    pref, chosen = None, None
    if widths is not None:
        try:
            chosen = exp.model.resolve(parse_widths(widths, exp.tasks))
            exp.model.indices(chosen)
        except ValueError as e:
            raise ConfigError(f"--{e}") from None
    if budget is not None:
        try:
            pref = check_preference(parse_preference(preference) if preference else [1.0] * len(names), names)
            parse_budget(budget, _Probe())  # syntax only; the value is checked against the FLOPs below
        except ValueError as e:
            raise ConfigError(f"--{e}") from None
    if do_sweep:
        if num_budgets < 1 or num_preferences < 2:
            raise ConfigError(f"--num_budgets must be >= 1 and --num_preferences >= 2, got {num_budgets}, "
                              f"{num_preferences}")
    step, params = _restore_params(exp)
    shape = exp.dataset.input_shape
    flops = cached_flops_table(exp.model, shape, os.path.join(os.path.abspath(config.workdir), "slim", "flops.json"))
    result = {"step": step, "flops": flops.to_dict(), "full_flops": flops.full}
    log(f"step {step}: full network {flops.full:.4g} FLOPs per example, smallest configuration "
        f"{flops.smallest:.4g} ({100 * flops.smallest / flops.full:.1f}%)")
    test = exp.dataset.splits["test"]
    bs = config.data.eval_batch_size

    def batches():
        return eval_batches(test, exp.tasks, bs)
    if budget is not None or chosen is not None:
        try:
            config_, spent = (chosen, flops.total(chosen)) if chosen is not None else search(
                flops, parse_budget(budget, flops), pref)
        except ValueError as e:
            raise ConfigError(f"--{e}") from None
        small, small_params, spec = export(exp.model, params, config_, shape)
        metrics = ev.evaluate_model(small, small_params, batches, exp.tasks)
        tag = _tag(budget, list(pref)) if chosen is None else "w" + widths.replace("=", "").replace(",", "_")
        directory = export_dir or os.path.join(os.path.abspath(config.workdir), "subnets", tag)
        n_small = sum(int(np.size(x)) for x in jax.tree.leaves(small_params))
        n_full = sum(int(np.size(x)) for x in jax.tree.leaves(params))
        info = {"config": config_.to_dict(), "flops": spent, "fraction_of_full": spent / flops.full,
                "budget": budget, "preference": None if pref is None else list(pref), "metrics": metrics,
                "source_step": step,
                "params": n_small, "source_params": n_full}
        save_subnetwork(directory, spec, exp.tasks, small_params, info)
        log(f"configuration: {config_}")
        log(f"FLOPs: {spent:.4g} per example = {100 * spent / flops.full:.1f}% of full ({flops.full:.4g}); "
            f"parameters {n_small:,} of {n_full:,}")
        log(mt.format_table(exp.tasks, metrics))
        log(f"exported sub-network to {directory}")
        result.update(selected=info, export_dir=directory)
    if do_sweep:
        table = ev.metric_table(exp.model, params, batches, exp.tasks)
        report = ev.sweep(table, flops, num_budgets=num_budgets, num_preferences=num_preferences, seed=config.seed)
        report["metric_table"] = table.to_dict()
        report["flops"] = flops.to_dict()
        out = os.path.join(os.path.abspath(config.workdir), "slim")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
        from mtljax.models.slim.plot import plot_tradeoff

        png = plot_tradeoff(report, exp.tasks, os.path.join(out, "tradeoff.png"))
        log(format_sweep(report, exp.tasks))
        log(f"wrote {os.path.join(out, 'report.json')} and {png}")
        result["sweep"] = report
    return result


def slim_command(config, args) -> int:
    """``mtljax slim`` (``args``: the parsed flags)."""
    run_slim(config, budget=args.budget, preference=args.preference, export_dir=args.export_dir,
             do_sweep=args.sweep, num_budgets=args.num_budgets, num_preferences=args.num_preferences,
             widths=args.widths)
    return 0


class _Probe:
    """Stand-in FLOPs table for checking the budget's syntax and percentage before anything is measured
    (FLOPs per example are checked against the measured table)."""

    full = float("inf")


def format_sweep(report: dict, tasks) -> str:
    names = [t.name for t in tasks]
    metric = {t.name: next(iter(t.directions())) for t in tasks}
    shown = names if len(names) <= 4 else names[:3]
    lines = ["width  FLOPs       % full  " + "  ".join(f"{n}/{metric[n]}" for n in shown)
             + ("  (mean over tasks)" if len(names) > 4 else "")]
    for row in report["uniform_widths"]:
        vals = [row["metrics"][n][metric[n]] for n in shown]
        mean = f"  {np.mean([row['metrics'][n][metric[n]] for n in names]):.4f}" if len(names) > 4 else ""
        lines.append(f"{row['width']:<6g} {row['flops']:<11.4g} {100 * row['fraction']:6.1f}  "
                     + "  ".join(f"{v:.4f}".ljust(len(n) + len(metric[n]) + 1) for n, v in zip(shown, vals)) + mean)
    lines.append("budget (% full)  controllability ρ (Spearman)  τ (Kendall)  hypervolume  distinct configs")
    for r in report["budgets"]:
        lines.append(f"{100 * r['budget_fraction']:15.1f}  {r['controllability_spearman']:+27.3f}  "
                     f"{r['controllability_kendall']:+11.3f}  {r['hypervolume']:11.4f}  {r['distinct_configs']:16d}")
    lines.append(f"mean: controllability {report['controllability_spearman']:+.3f} (Spearman), "
                 f"{report['controllability_kendall']:+.3f} (Kendall); hypervolume {report['hypervolume']:.4f}")
    return "\n".join(lines)
