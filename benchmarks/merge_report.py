"""Markdown tables (mean ± 95 % CI over seeds, Student's t) and the AdaMerging-by-depth plot from the
``*.jsonl`` files of ``benchmarks/merge.py``: ``python benchmarks/merge.py report --out DIR``."""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mtljax.stats import mean_ci  # noqa: E402



def _metric(records, task) -> str:
    return "accuracy" if "accuracy" in records[0]["rows"]["individual experts"][task] else "mse"


def _read(out, name):
    path = os.path.join(out, f"{name}.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _fmt(values, digits=3):
    s = mean_ci(values)
    if s.ci_low is None:
        return f"{s.mean:.{digits}f}"
    return f"{s.mean:.{digits}f} ± {(s.ci_high - s.ci_low) / 2:.{digits}f}"


def _table(records, title):
    if not records:
        return ""
    rows = list(records[0]["rows"])
    tasks = list(records[0]["rows"]["individual experts"])
    head = ["model"] + [f"{t} {'acc' if _metric(records, t) == 'accuracy' else 'MSE'}" for t in tasks] + [
        "mean acc", "normalised"]
    lines = [f"**{title}** ({len(records)} seeds)", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for row in rows:
        cells = [row]
        for t in tasks:
            vals = [r["rows"][row][t][_metric(records, t)] for r in records if t in r["rows"].get(row, {})]
            cells.append(_fmt(vals) if len(vals) == len(records) else "–")
        cells.append(_fmt([r["mean_accuracy"][row] for r in records]))
        norm = [r["normalised"][row] for r in records if row in r["normalised"]]
        cells.append(_fmt(norm) if len(norm) == len(records) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _depth(path):
    m = re.search(r"block(\d+)", path)
    return int(m.group(1)) + 1 if m else (0 if "embedding" in path else 99)


def depth_plot(records, path):
    """Mean layer-wise AdaMerging coefficient per task and depth, averaged over seeds; returns the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(records[0]["rows"]["individual experts"])
    per_seed = []
    for r in records:
        coeffs = r["info"]["adamerging_layer"]["coefficients"]
        depths = sorted({_depth(p) for p in coeffs})
        per_seed.append(np.array([[np.mean([c[k] for p, c in coeffs.items() if _depth(p) == d]) for d in depths]
                                  for k in range(len(tasks))]))
    mean = np.mean(per_seed, axis=0)
    labels = ["embed"] + [f"block {d - 1}" for d in depths[1:-1]] + ["final norm"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, t in enumerate(tasks):
        ax.plot(range(len(depths)), mean[k], marker="o", label=t)
    ax.plot(range(len(depths)), mean.mean(0), color="k", lw=3, label="mean")
    ax.set_xticks(range(len(depths)), labels)
    ax.set_ylabel("learned λ (mean over tensors, seeds)")
    ax.set_title("layer-wise AdaMerging coefficients by depth")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    lines = ["| task | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
    lines += [f"| {t} | " + " | ".join(f"{v:.3f}" for v in mean[k]) + " |" for k, t in enumerate(tasks)]
    lines.append("| **mean** | " + " | ".join(f"**{v:.3f}**" for v in mean.mean(0)) + " |")
    return "\n".join(lines)


def report(out: str) -> str:
    parts = []
    table = _read(out, "table")
    full = [r for r in table if r["kind"] == "full"]
    lora = [r for r in table if r["kind"] == "lora"]
    parts.append(_table(full, "Full fine-tuning experts, eight tasks"))
    parts.append(_table(lora, "LoRA experts (rank 4, query and value), eight tasks"))
    if full:
        last = full[-1]
        parts.append(f"**Seconds per method** (seed {last['seed']}, compilation included; the merge and its coefficient "
                     "search, not the evaluation, except for logit fusion, which is evaluated as it runs): " + ", ".join(
                         f"{k} {v:.1f}" for k, v in last["seconds"].items()))
        parts.append(depth_plot(full, os.path.join(out, "adamerging_depth.png")))
    if lora and "phatgoose" in lora[0]["info"]:
        parts.append("**PHATGOOSE routing**: mean routing weight on each expert over the test images' tokens and the "
                     "routed projections (top-2 of 8; uniform would be 0.125), and the gate-training loss:")
        for r in lora:
            info = r["info"]["phatgoose"]
            for ds, w in info["routing_by_dataset"].items():
                parts.append(f"- seed {r['seed']}, {ds} images: " + ", ".join(f"{t} {v:.3f}" for t, v in w.items())
                             + f"; gate loss {info['gate_loss_first']:.2f} → {info['gate_loss_last']:.2f}")
    scaling = _read(out, "scaling")
    if scaling:
        methods = list(scaling[0]["normalised"])
        lines = ["**Normalised accuracy vs the number of merged tasks** (merged ÷ own expert, classification tasks)",
                 "", "| tasks | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
        for n in sorted({r["tasks"] for r in scaling}):
            rs = [r for r in scaling if r["tasks"] == n]
            lines.append(f"| {n} | " + " | ".join(_fmt([r["normalised"][m] for r in rs]) for m in methods) + " |")
        parts.append("\n".join(lines))
    neg = _read(out, "negation")
    if neg:
        t, c = neg[0]["target"], neg[0]["control"]
        lines = [f"**Task negation** θ_0 − λ τ_{t} (target {t}, control {c}; accuracy)", "",
                 f"| λ | {t} | {c} |", "|---|---|---|",
                 f"| expert | {_fmt([r['expert'][t] for r in neg])} | {_fmt([r['expert'][c] for r in neg])} |"]
        for lam in ("0.0", "0.5", "1.0"):
            key = f"lambda={lam}"
            lines.append(f"| {lam} | {_fmt([r[key][t] for r in neg])} | {_fmt([r[key][c] for r in neg])} |")
        parts.append("\n".join(lines))
    vec = _read(out, "vectors")
    if vec:
        rel = [v for r in vec for v in r["relative_norm"].values()]
        parts.append(f"**Task vectors** ({len(vec)} seeds): ‖τ_t‖ / ‖θ_0‖ from {min(rel):.3f} to {max(rel):.3f} "
                     f"(mean {np.mean(rel):.3f}); pairwise cosine mean {np.mean([r['cosine_mean'] for r in vec]):.3f}, "
                     f"range {min(r['cosine_min'] for r in vec):.3f} to {max(r['cosine_max'] for r in vec):.3f}.")
    timing = _read(out, "timing")
    if timing:
        lines = ["**AdaMerging (layer-wise) coefficient search vs the number of tasks**", "",
                 "| tasks | step (ms, median) | XLA temp memory (MiB) | arguments (MiB) | task vectors (MiB) |",
                 "|---|---|---|---|---|"]
        for r in timing:
            lines.append(f"| {r['tasks']} | {r['step_ms_median']:.1f} | {r['temp_bytes'] / 2**20:.1f} | "
                         f"{r['argument_bytes'] / 2**20:.2f} | {r['task_vector_bytes'] / 2**20:.2f} |")
        parts.append("\n".join(lines))
    return "\n\n".join(p for p in parts if p)
