"""``python benchmarks/adapt.py report DIR``: markdown tables from ``DIR/results.jsonl`` and
``DIR/timing.json`` (mean ± 95 % confidence half-width over seeds: Student's t with n − 1 degrees
of freedom)."""

from __future__ import annotations

import json
import os
import statistics

from mtljax.stats import mean_ci


def _metric(task_metrics: dict) -> tuple[str, float]:
    return ("acc", task_metrics["accuracy"]) if "accuracy" in task_metrics else ("MSE", task_metrics["mse"])


def _mean_ci(values) -> str:
    """``mean ± half-width`` of the 95 % Student-t interval over seeds; the mean alone for one; ``-`` for none."""
    values = list(values)
    if not values:
        return "-"
    s = mean_ci(values)
    return f"{s.mean:.3f}" if s.ci_high is None else f"{s.mean:.3f} ± {(s.ci_high - s.ci_low) / 2:.3f}"


def _grouped(rows, key):
    out: dict = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def _accuracy_table(rows, timing, methods):
    def order(r):
        base, _, variant = r["name"].partition(", ")
        return list(methods).index(base) if base in methods else len(methods), variant

    by_method = _grouped(sorted(rows, key=order), lambda r: r["name"])
    tasks = rows[0]["tasks"]
    kinds = {t: _metric(rows[0]["metrics"][t])[0] for t in tasks}
    steps = (timing or {}).get("train_step", {})
    ref = steps.get("full fine-tuning")
    base = min(r["backbone"] for r in rows)  # the plain ViT (per-task modules sit under backbone/ too)
    head = ["method", *[f"{t} {kinds[t]}" for t in tasks], "trained per task (% of ViT)",
            f"step ÷ full FT ({(timing or {}).get('device', '?')})", "optimizer state ÷ full FT", "seeds"]
    lines = [f"ViT: {base:,} parameters; per-task counts include the task's linear head.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rs in by_method.items():
        cells = [name] + [_mean_ci([_metric(r["metrics"][t])[1] for r in rs]) for t in tasks]
        r0 = rs[0]
        if r0["trained"] > base:  # the shared ViT trains: every task's model is all of it
            cells.append(f"all {r0['trained']:,} shared")
        else:
            per = r0["trained"] / len(tasks)
            cells.append(f"{per:,.0f} ({100 * per / base:.2f} %)")
        s = steps.get(name)
        if s and ref:
            cells += [f"{s['median_ms'] / ref['median_ms']:.2f}", f"{s['opt_state_bytes'] / ref['opt_state_bytes']:.3f}"]
        else:
            cells += ["–", "–"]
        cells.append(str(len(rs)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mvlpt_table(rows):
    tasks = rows[0]["tasks"]
    shots = sorted({r["shots"] for r in rows})
    head = ["init", *[f"{s}-shot {t}" for s in shots for t in tasks], *[f"{s}-shot mean" for s in shots], "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for init, rs in _grouped(rows, lambda r: r["task_init"]).items():
        cells, n = [init], 0
        means = []
        for s in shots:
            rr = [r for r in rs if r["shots"] == s]
            n = max(n, len(rr))
            for t in tasks:
                cells.append(_mean_ci([_metric(r["metrics"][t])[1] for r in rr]) if rr else "–")
            means.append(_mean_ci([statistics.fmean(_metric(r["metrics"][t])[1] for t in tasks) for r in rr])
                         if rr else "–")
        lines.append("| " + " | ".join(cells + means + [str(n)]) + " |")
    return "\n".join(lines)


def _incremental_table(rows):
    order = rows[-1]["tasks"]
    head = ["stage", "new task", *order, "earlier tasks' outputs unchanged by training the new lane",
            "max abs difference vs the previous stage's model"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: r["stage"]):
        cells = [str(r["stage"]), r["new_task"]]
        for t in order:
            cells.append(f"{_metric(r['metrics'][t])[1]:.3f}" if t in r["metrics"] else "")
        ident = r["earlier_outputs_identical"]
        cells.append((f"bit-identical ({len(ident)} tasks)" if all(ident.values()) else str(ident)) if ident else "–")
        diff = r["max_abs_diff_vs_previous_stage"]
        cells.append(f"{max(diff.values()):.1e}" if diff else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _timing_tables(timing):
    steps = timing["train_step"]
    ref = steps["full fine-tuning"]
    env = timing.get("environment", {})
    machine = f"{env.get('cpu', '?')}, {env.get('cores', '?')} cores, jax {env.get('jax', '?')}"
    lines = [f"Device: {timing['device']} ({machine}); train batch {timing['batch_size']} (per task pass), "
             f"eval batch {timing['eval_batch_size']}.", "",
             "| method | train step (ms, median) | ÷ full FT | optimizer state (bytes) | ÷ full FT | step temp memory (bytes) |",
             "|---|---|---|---|---|---|"]
    for name, s in steps.items():
        lines.append(f"| {name} | {s['median_ms']:.2f} | {s['median_ms'] / ref['median_ms']:.2f} | "
                     f"{s['opt_state_bytes']:,} | {s['opt_state_bytes'] / ref['opt_state_bytes']:.3f} | "
                     f"{s['temp_bytes']:,} |" if s["temp_bytes"] is not None else "")
    inf = timing["inference"]
    base = inf.get("frozen ViT (probe)")
    lines += ["", "| forward | inference (ms, median) | ÷ frozen ViT |", "|---|---|---|"]
    for name, s in inf.items():
        lines.append(f"| {name} | {s['median_ms']:.2f} | {s['median_ms'] / base['median_ms']:.2f} |")
    return "\n".join(lines)


def report(out: str, methods=()) -> str:
    """The tables of ``out``; ``methods``: the order of the accuracy table's rows (others last)."""
    path = os.path.join(out, "results.jsonl")
    rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    tpath = os.path.join(out, "timing.json")
    timing = json.load(open(tpath)) if os.path.exists(tpath) else None
    parts = []
    pre = [r for r in rows if r["kind"] == "pretrain"]
    if pre:
        parts.append("Pretrained backbone (test): " + ", ".join(
            f"{t} {_metric(m)[0]} {_metric(m)[1]:.3f}" for t, m in pre[-1]["metrics"].items()))
    for kind, title, fn in (("accuracy", "Adaptation methods", lambda rs: _accuracy_table(rs, timing, methods)),
                            ("mvlpt", "MVLPT prompt initialisation, few-shot targets", _mvlpt_table),
                            ("incremental", "MULTI-LANE, one task at a time", _incremental_table)):
        rs = [r for r in rows if r["kind"] == kind]
        if rs:
            parts += [f"### {title}", fn(rs)]
    if timing:
        parts += ["### Step time, optimizer memory, inference", _timing_tables(timing)]
    return "\n\n".join(parts)
