"""Polytropon and MHR on the pretrained factors ViT: against per-task LoRA of the same rank, and few-shot
transfer of the skill inventory to held-out tasks (MHR-z, MHR-μ).

Every run is the repository's own config through ``mtljax.train`` (``configs/adapt_lora.py``,
``configs/adapt_poly.py``), with ``seed``, ``workdir``, ``init.checkpoint`` (and ``--steps`` /
``--num-train`` for a quick check) changed — :func:`benchmarks.adapt._config`:

    python benchmarks/poly.py accuracy --out DIR --pretrain-dir runs/pretrain [--seeds 3] [--workers 2]
    python benchmarks/poly.py fewshot --out DIR --pretrain-dir runs/pretrain [--seeds 3] [--shots 32 128]
    python benchmarks/poly.py all --out DIR --pretrain-dir runs/pretrain
    python benchmarks/poly.py report DIR

``accuracy``: per-task LoRA, Polytropon (h = 1) and MHR (h = 4), all rank 4 on query and value with K = 8
skills, on the six downstream tasks (700 steps each, the backbone frozen); test accuracy / MSE per
task, and trained parameters per task (all trained parameters ÷ tasks: for Poly/MHR the shared skills
amortised over the tasks; "task-only" is the per-task part, the routing row and the head).
``fewshot``: MHR on the source tasks count, texture, orientation, pos_x (``configs/adapt_poly.py:source``,
one run, its routing heatmaps saved), then for the targets background and pos_y with ``data.num_train``
of ``--shots`` support images: MHR-z (only the new routing rows + heads train), MHR-μ (uniform routing
= the average of the skills, only the heads train) and per-task LoRA from the plain backbone (the
baseline without skills), 300 steps of batch 32 each. The routing heatmaps of every Poly/MHR run are
written to ``<workdir>/routing`` (``mtljax routing``). Results are appended to ``DIR/results.jsonl``;
``report`` prints markdown tables, mean ± 95 % CI (Student t, n − 1 degrees of freedom) over seeds.

Expected wall time. Quick check (measured 2026-11-28 on this project's 2-core CPU with ~6 other jobs
running; 1 seed):

    python benchmarks/poly.py all --out /tmp/poly_quick --pretrain-dir runs/pretrain --seeds 1 --steps 20 \
        --few-shot-steps 5 --num-train 512 --shots 32

took ≈20 min (6-task runs 8–12 s/step under that load: every step runs one backbone pass per task;
190–280 s per 20-step run, 120–170 s per 5-step few-shot run, mostly compilation and the 5,000-image
test split). Estimate for full runs (not measured): 700 steps of 6 task passes of batch 128, about six
times the pretraining step (one pass, 0.42 s/step alone, ``configs/pretrain.py``), ≈2.5 s/step, i.e.
≈25–30 min per run on this CPU when alone, so ``accuracy`` (9 runs) ≈3–4 h and
``fewshot`` (a 4-task source run ≈15 min + 18 runs of 300 batch-32 steps ≈2 min each) ≈50 min; on an
H100 (as ``benchmarks/adapt.py`` was measured) a few minutes per run. ``--methods`` runs a subset;
``--source-dir`` reuses a trained source run.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.adapt import (  # noqa: E402
    _config, _pool, _record, benchmark_parser, open_output, parse_benchmark_args,
)
from benchmarks.adapt_report import _mean_ci, _metric  # noqa: E402

METHODS = {"LoRA": "configs/adapt_lora.py", "Polytropon": "configs/adapt_poly.py:poly",
           "MHR": "configs/adapt_poly.py:mhr"}
FEWSHOT = {"MHR-z": "configs/adapt_poly.py:mhr_z", "MHR-μ": "configs/adapt_poly.py:mhr_mu",
           "LoRA (no skills)": "configs/adapt_lora.py"}
FEWSHOT_TARGETS = ("background", "pos_y")


def run_poly_job(job: dict) -> dict:
    """One training run (in a worker): final test metrics, trained parameter counts (all, and the
    task-specific part: heads and per-task modules), and the routing heatmaps of a Poly/MHR run."""
    import jax

    from mtljax.commands.routing import routing_report
    from mtljax.models.peft import methods_of
    from mtljax.optim.trainable import count, split, trainable_mask
    from mtljax.trainer.experiment import Experiment
    from mtljax.trainer.loop import fit

    t0 = time.perf_counter()
    c = _config(job["spec"], job["workdir"], job.get("seed", 0), job.get("init", ""), job.get("steps", 0),
                job.get("num_train", 0), **job.get("changes", {}))
    exp = Experiment(c, devices=jax.devices()[:1])
    shapes = exp.param_shapes
    mask = trainable_mask(shapes, tuple(c.optim.trainable))
    specific = jax.tree.map(lambda t, s: bool(t) and bool(s), mask, exp.objective.specific(shapes))
    trained, task_only = count(split(shapes, mask)[0]), count(split(shapes, specific)[0])
    backbone = count(shapes["backbone"]) if "backbone" in shapes else 0
    lines = []
    summary = fit(c, experiment=exp, log=lines.append)
    routing = ""
    if "poly" in methods_of(c.model.peft.method):
        routing = os.path.join(c.workdir, "routing")
        routing_report(c, routing, log=lambda s: None)
    return dict(job, metrics=summary["metrics"], trained=trained, task_only=task_only, backbone=backbone,
                tasks=[t.name for t in exp.tasks], routing=routing, wall_s=round(time.perf_counter() - t0, 1),
                init_report=[x for x in lines if x.startswith("init from")])


def accuracy_jobs(args):
    return [dict(kind="accuracy", name=name, spec=spec, seed=s, init=args.pretrain_dir, steps=args.steps,
                 num_train=args.num_train, workdir=os.path.join(args.out, "accuracy", f"{i}-s{s}"))
            for s in range(args.seeds) for i, (name, spec) in enumerate(METHODS.items())
            if not args.methods or name in args.methods]


def source_job(args):
    # one task per example (one backbone pass per step instead of four): the source run is the
    # benchmark's longest, and the few-shot comparison is about the targets' budget
    return dict(kind="source", name="MHR source", spec="configs/adapt_poly.py:source", init=args.pretrain_dir,
                steps=args.steps, num_train=args.num_train, changes={"data.task_per_example": True},
                workdir=os.path.join(args.out, "fewshot", "source"))


def fewshot_jobs(args, source_dir):
    jobs = []
    for s in range(args.seeds):
        for shots in args.shots:
            for i, (name, spec) in enumerate(FEWSHOT.items()):
                if args.methods and name not in args.methods:
                    continue
                lora = spec.endswith("adapt_lora.py")
                changes = {"data.num_train": shots, "data.batch_size": 32}
                if lora:  # the same few-shot schedule as configs/adapt_poly.py:mhr_z, from the plain backbone
                    steps = args.few_shot_steps or 300
                    changes.update({"data.tasks": FEWSHOT_TARGETS, "train.steps": steps,
                                    "optim.warmup_steps": min(30, steps // 4), "train.eval_every": steps,
                                    "train.checkpoint_every": steps})
                jobs.append(dict(kind="fewshot", name=f"{name} {shots}-shot", method=name, shots=shots, seed=s,
                                 spec=spec, init=args.pretrain_dir if lora else source_dir,
                                 steps=args.few_shot_steps, changes=changes,
                                 workdir=os.path.join(args.out, "fewshot", f"{i}-{shots}-s{s}")))
    return jobs


def _table(rows, title):
    by: dict = {}
    for r in rows:
        by.setdefault(r["name"], []).append(r)
    tasks = rows[0]["tasks"]
    kinds = {t: _metric(rows[0]["metrics"][t])[0] for t in tasks}
    head = ["method", *[f"{t} {kinds[t]}" for t in tasks], "trained per task", "task-only per task", "seeds"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rs in by.items():
        n = len(rs[0]["tasks"])
        cells = [name] + [_mean_ci([_metric(r["metrics"][t])[1] for r in rs]) for t in tasks]
        cells += [f"{rs[0]['trained'] / n:,.0f}", f"{rs[0].get('task_only', 0) / n:,.0f}", str(len(rs))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(out: str) -> str:
    with open(os.path.join(out, "results.jsonl")) as f:
        rows = [json.loads(x) for x in f if x.strip()]
    parts = []
    acc = [r for r in rows if r["kind"] == "accuracy"]
    if acc:
        parts.append(_table(acc, "Poly / MHR vs per-task LoRA (rank 4, six downstream tasks)"))
    src = [r for r in rows if r["kind"] == "source"]
    if src:
        parts.append(_table(src, "MHR on the source tasks") + f"\n\nrouting heatmaps: {src[-1].get('routing', '')}")
    few = [r for r in rows if r["kind"] == "fewshot"]
    if few:
        parts.append(_table(few, "Few-shot transfer to background and pos_y (K support images)"))
    for r in acc:
        if r.get("routing") and r.get("seed", 0) == 0:
            parts.append(f"{r['name']} routing heatmaps: {r['routing']}")
    return "\n\n".join(parts)


def main(argv=None):
    ap = benchmark_parser(__doc__, ("accuracy", "fewshot", "all", "report"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--steps", type=int, default=0, help="accuracy and source runs' steps (0: the config's)")
    ap.add_argument("--few-shot-steps", type=int, default=0, help="0: configs/adapt_poly.py's (300)")
    ap.add_argument("--num-train", type=int, default=0, help="accuracy / source training set size (0: the config's)")
    ap.add_argument("--shots", type=int, nargs="+", default=[32, 128], help="few-shot data.num_train")
    ap.add_argument("--source-dir", default="", help="fewshot: an existing configs/adapt_poly.py:source run "
                                                     "(default: train one into DIR/fewshot/source)")
    ap.add_argument("--methods", nargs="*", default=None, help=f"a subset of {list(METHODS) + list(FEWSHOT)}")
    args = parse_benchmark_args(ap, argv)
    unknown = set(args.methods or ()) - set(METHODS) - set(FEWSHOT)
    if unknown:
        ap.error(f"--methods: unknown {sorted(unknown)}; choose from {list(METHODS) + list(FEWSHOT)}")
    if args.what == "report":
        print(report(args.out))
        return
    args.pretrain_dir = os.path.abspath(args.pretrain_dir)
    cache = open_output(args)
    with _pool(args.workers, cache) as pool:
        futures = []
        source = (pool.submit(run_poly_job, source_job(args)) if args.what in ("fewshot", "all") and not args.source_dir
                  else None)
        if args.source_dir:
            futures += [pool.submit(run_poly_job, j) for j in fewshot_jobs(args, os.path.abspath(args.source_dir))]
        if args.what in ("accuracy", "all"):
            futures += [pool.submit(run_poly_job, j) for j in accuracy_jobs(args)]
        if source is not None:
            result = source.result()
            _record(args.out, result)
            futures += [pool.submit(run_poly_job, j) for j in fewshot_jobs(args, result["workdir"])]
        for f in cf.as_completed(futures):
            try:
                _record(args.out, f.result())
            except Exception as e:  # noqa: BLE001 - one failed run must not lose the others
                print(f"FAILED: {type(e).__name__}: {e}", flush=True)
    print(report(args.out))


if __name__ == "__main__":
    main()
