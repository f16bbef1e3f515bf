"""HyperFormer++ against per-task adapters of the same size, with two low-resource tasks.

    python benchmarks/hyperformer.py run --out DIR --pretrain-dir runs/pretrain [--seeds 3] [--steps 300]
    python benchmarks/hyperformer.py report DIR

From the frozen pretrained factors ViT (``--pretrain-dir``: a ``configs/pretrain.py`` run, read only),
the six downstream tasks as six single-task datasets sampled with temperature 10, ``count`` and
``background`` with only 500 training images, the other four with 8,000
(``configs/adapt_hyperformer.py:lowres``, :func:`configs.adapt_hyperformer.low_resource`). Methods, the
same data and schedule (``configs/pretrain.py:probe``'s AdamW, cosine), bottleneck 8:

* ``HyperFormer++`` (``:lowres``): one shared hypernetwork generates every block's adapters from task,
  layer and position embeddings; trained: the hypernetwork, the task embeddings, the heads, at the
  paper's learning rate 3e-4 (the others: 3e-3);
* ``adapters`` (``:lowres_adapter``): per-task bottleneck adapters (Houlsby placement, after attention
  and MLP); trained: the adapters and heads;
* ``linear probe`` (``:lowres_probe``): only the heads.

Every batch carries each example's task (a mixture of single-task components), so the per-task
modules run once per batch. The seed changes the new parameters' initialisation and the data order,
not the backbone or the images. ``report`` prints per-task test metrics (accuracy, or MSE for the
regression tasks), the mean accuracy of the three classification tasks and of the two low-resource
ones (count, background), and trained parameters per task — all trained parameters ÷ 6 (HyperFormer++'s
shared hypernetwork amortised over the tasks) and the task-only part (task embedding or adapters, and
head) — mean ± 95 % CI over seeds (Student t, n − 1 degrees of freedom).
"""

from __future__ import annotations

import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.adapt import _pool, _record, benchmark_parser, open_output, parse_benchmark_args  # noqa: E402
from benchmarks.adapt_report import _mean_ci, _metric  # noqa: E402
from benchmarks.poly import run_poly_job  # noqa: E402

METHODS = {"HyperFormer++": "configs/adapt_hyperformer.py:lowres",
           "adapters": "configs/adapt_hyperformer.py:lowres_adapter",
           "linear probe": "configs/adapt_hyperformer.py:lowres_probe"}
CLASSIFICATION = ("count", "texture", "background")
LOW_RESOURCE = ("count", "background")


def jobs(args):
    return [dict(kind="hyperformer", name=name, spec=spec, seed=s, init=args.pretrain_dir, steps=args.steps,
                 changes={"data.batch_size": args.batch_size},
                 workdir=os.path.join(args.out, f"{i}-s{s}"))
            for s in range(args.seeds) for i, (name, spec) in enumerate(METHODS.items())]


def report(out: str) -> str:
    with open(os.path.join(out, "results.jsonl")) as f:
        rows = [json.loads(x) for x in f if x.strip()]
    by: dict = {}
    for r in rows:
        by.setdefault(r["name"], []).append(r)
    tasks = rows[0]["tasks"]
    kinds = {t: _metric(rows[0]["metrics"][t])[0] for t in tasks}
    head = ["method", *[f"{t} {kinds[t]}" for t in tasks], "mean acc (3)", "low-resource acc (2)",
            "trained per task", "task-only per task", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rs in by.items():
        n = len(rs[0]["tasks"])
        cells = [name] + [_mean_ci([_metric(r["metrics"][t])[1] for r in rs]) for t in tasks]
        for group in (CLASSIFICATION, LOW_RESOURCE):
            cells.append(_mean_ci([statistics.fmean(r["metrics"][t]["accuracy"] for t in group) for r in rs]))
        cells += [f"{rs[0]['trained'] / n:,.0f}", f"{rs[0].get('task_only', 0) / n:,.0f}", str(len(rs))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = benchmark_parser(__doc__, ("run", "report"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    args = parse_benchmark_args(ap, argv)
    if args.what == "report":
        print(report(args.out))
        return
    args.pretrain_dir = os.path.abspath(args.pretrain_dir)
    cache = open_output(args)
    done = set()
    path = os.path.join(args.out, "results.jsonl")
    if os.path.exists(path):  # a rerun skips the runs already recorded
        with open(path) as f:
            done = {(r["name"], r["seed"]) for r in map(json.loads, filter(str.strip, f))}
    todo = [j for j in jobs(args) if (j["name"], j["seed"]) not in done]
    with _pool(args.workers, cache) as pool:
        for result in pool.map(run_poly_job, todo):
            _record(args.out, result)


if __name__ == "__main__":
    main()
