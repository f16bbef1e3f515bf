"""ScaLearn against single-task adapters and a linear probe on a target task of the factors ViT.

    python benchmarks/scalearn.py run --out DIR --pretrain-dir runs/pretrain [--seeds 3] [--steps 150]
                                      [--num-train 8000] [--workers 1]
    python benchmarks/scalearn.py report DIR

From the pretrained backbone (``--pretrain-dir``: a ``configs/pretrain.py`` run, read only), ``run`` trains
the source adapter run once (``configs/scalearn.py:source``: one bottleneck adapter per source task —
count, texture, orientation, pos_x — ``--source-steps`` 400 of batch ``--source-batch-size`` 128 with
``config.data.task_per_example=True``: one backbone pass per step, each source task a quarter of the
batch), then for every seed trains on the target task ``background``:

* ``linear probe``: ``configs/pretrain.py:probe`` on the target (only its head trains);
* ``adapter``: ``configs/adapt_adapter.py`` on the target (its own adapters and head);
* ``--variants`` of ``configs/scalearn.py:<variant>`` — ``scalearn``, ``uniform``, ``scalearn++``,
  ``uniform++`` by default, ``fusion`` (AdapterFusion) on request — over the frozen source adapters of
  ``--sources`` 4 (all) or 2 (count, texture) source tasks.

Every run is the repository's config through ``mtljax.train`` (``benchmarks/adapt.py``'s ``run_job``)
with ``seed``, ``workdir``, ``init.checkpoint``, ``--steps`` (warm-up shortened to a quarter) and
``--num-train`` (test split: a quarter of it) changed. Results are appended to ``DIR/results.jsonl``;
``report`` prints a markdown table: the target's test accuracy, mean ± 95 % CI over seeds (Student's t),
and the trained parameters per target task (its head included). An existing source run in
``DIR/source`` is reused.

Defaults: target runs of 200 steps of batch 32 on 8,000 training images (2,000 test images) — a
reduced budget (the configs: 700 steps of 128 on 50,000) so that 3 seeds fit a 2-core CPU: 6 target
runs per seed, about a minute each on that machine alone (compilation included). The factors are
independent by construction, so the source tasks carry nothing the target needs beyond a better
representation of the image: this measures what scaling unrelated sources buys against an adapter of
the target's own.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.adapt import (  # noqa: E402
    _pool, _record, benchmark_parser, open_output, parse_benchmark_args, run_job,
)
from benchmarks.adapt_report import _mean_ci, _metric  # noqa: E402

TARGET = ("background",)
SOURCES = {2: ("count", "texture"), 4: ("count", "texture", "orientation", "pos_x")}
VARIANTS = {"ScaLearn": "scalearn", "ScaLearnUniform": "uniform", "ScaLearn++": "scalearn++",
            "ScaLearnUniform++": "uniform++", "AdapterFusion": "fusion"}
BASELINES = {"linear probe": "configs/pretrain.py:probe", "adapter": "configs/adapt_adapter.py"}


def _common(args) -> dict:
    return dict(init=os.path.abspath(args.pretrain_dir), steps=args.steps, num_train=args.num_train)


def _changes(args, **changes) -> dict:
    return {**({"data.batch_size": args.batch_size} if args.batch_size else {}), **changes}


def source_job(args) -> dict:
    """The source adapters: their own budget (``--source-steps`` of ``--source-batch-size``, one task per
    example: each source task sees a quarter of every batch), so that they carry what their tasks learned."""
    common = dict(_common(args), steps=args.source_steps)
    return dict(kind="source", name="source adapters", spec="configs/scalearn.py:source",
                workdir=os.path.join(args.out, "source"),
                changes={"data.batch_size": args.source_batch_size, "data.task_per_example": True}, **common)


def target_jobs(args, source: str) -> list[dict]:
    jobs = []
    for s in range(args.seeds):
        for name, spec in BASELINES.items():
            jobs.append(dict(kind="target", name=name, spec=spec, seed=s, changes=_changes(args, **{"data.tasks": TARGET}),
                             workdir=os.path.join(args.out, "target", f"{name.replace(' ', '_')}-s{s}"),
                             **_common(args)))
        for n, tasks in SOURCES.items():
            if n not in args.sources:
                continue
            for name, variant in VARIANTS.items():
                if variant not in args.variants:
                    continue
                jobs.append(dict(kind="target", name=f"{name} ({n} sources)", spec=f"configs/scalearn.py:{variant}",
                                 seed=s, changes=_changes(args, **{"data.tasks": TARGET, "model.peft.scalearn.source": source,
                                                                   "model.peft.scalearn.source_tasks": tasks}),
                                 workdir=os.path.join(args.out, "target", f"{variant}-{n}-s{s}"), **_common(args)))
    return jobs


def run(args) -> None:
    cache = open_output(args)
    with _pool(args.workers, cache) as pool:
        job = source_job(args)
        if not os.path.exists(os.path.join(job["workdir"], "final_metrics.json")):
            _record(args.out, pool.submit(run_job, job).result())
        futures = [pool.submit(run_job, j) for j in target_jobs(args, os.path.abspath(job["workdir"]))]
        for f in cf.as_completed(futures):
            try:
                _record(args.out, f.result())
            except Exception as e:  # noqa: BLE001 - one failed run must not lose the others
                print(f"FAILED: {type(e).__name__}: {e}", flush=True)


def report(out: str) -> str:
    with open(os.path.join(out, "results.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    lines = []
    src = [r for r in rows if r["kind"] == "source"]
    if src:
        m = src[-1]["metrics"]
        lines += ["Source adapters (one run): " + ", ".join(f"{t} {_metric(v)[0]} {_metric(v)[1]:.3f}"
                                                         for t, v in m.items()), ""]
    targets = [r for r in rows if r["kind"] == "target"]
    order = list(BASELINES) + [f"{v} ({n} sources)" for n in SOURCES for v in VARIANTS]
    kinds = [f"{t} {_metric(targets[0]['metrics'][t])[0]}" for t in TARGET] if targets else list(TARGET)
    head = ["method", *kinds, "trained per target task", "seeds", "wall s (mean)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in order + sorted({r["name"] for r in targets} - set(order)):
        rs = [r for r in targets if r["name"] == name]
        if not rs:
            continue
        cells = [name] + [_mean_ci([_metric(r["metrics"][t])[1] for r in rs]) for t in TARGET]
        cells += [f"{rs[0]['trained'] // len(TARGET):,}", str(len(rs)), f"{sum(r['wall_s'] for r in rs) / len(rs):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = benchmark_parser(__doc__, ("run", "report"))
    ap.add_argument("--steps", type=int, default=200, help="every run's steps (0: the configs' 700)")
    ap.add_argument("--batch-size", type=int, default=32, help="every run's batch (0: the configs' 128)")
    ap.add_argument("--num-train", type=int, default=8000, help="training images (0: the configs' 50,000)")
    ap.add_argument("--source-steps", type=int, default=400, help="the source adapter run's steps")
    ap.add_argument("--source-batch-size", type=int, default=128, help="the source adapter run's batch")
    ap.add_argument("--sources", type=int, nargs="+", default=[4], choices=sorted(SOURCES),
                    help="source-task counts to compare (2: count, texture; 4: + orientation, pos_x)")
    ap.add_argument("--variants", nargs="+", default=["scalearn", "uniform", "scalearn++", "uniform++"],
                    choices=list(VARIANTS.values()), help="ScaLearn variants (fusion: AdapterFusion)")
    ap.add_argument("--workers", type=int, default=1)
    args = parse_benchmark_args(ap, argv)
    if args.what == "report":
        print(report(args.out))
        return
    if not os.path.isdir(os.path.join(args.pretrain_dir, "checkpoints")):
        ap.error(f"--pretrain-dir {args.pretrain_dir!r} holds no checkpoints (train configs/pretrain.py first)")
    run(args)


if __name__ == "__main__":
    main()
