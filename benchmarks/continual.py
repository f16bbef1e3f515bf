"""Continual multi-task learning: downstream tasks added one per stage to a pretrained ViT, and how much
the earlier tasks forget.

    python benchmarks/continual.py run --out DIR --pretrain-dir RUN [--seeds 3] [--order count texture background pos_x]
    python benchmarks/continual.py report DIR          # markdown: accuracy matrices, forgetting (mean ± 95 % CI)

``RUN`` is a ``configs/pretrain.py`` run (its backbone). Stage 1 trains the first task of ``--order`` from
it; stage ``k > 1`` starts from stage ``k-1``'s run with ``config.data.tasks=("+<task k>",)``
(:mod:`mtljax.trainer.continual`: the earlier tasks come from that run's config.json and are frozen —
their heads and their rows of per-task modules). Methods (``--methods``, all by default):

* ``lora``: per-task LoRA on the frozen backbone (``configs/adapt_lora.py``), each example its own
  task's LoRA (task ids). Forgetting must be 0: the earlier tasks' test *logits* are compared with the
  previous stage's, bit for bit (``identical``).
* ``phatgoose``: the same LoRA experts with a PHATGOOSE gate each, trained with task ids
  (``routing='gate'``: the new expert and its gate see only their task), evaluated *without* task ids
  (``routing='phatgoose'``, top-``min(2, k)`` of the ``k`` experts for every token): adding an expert
  changes every token's routing, so earlier tasks may forget. The task-id accuracy of the same
  parameters is recorded too (``metrics_task_ids``).
* ``finetune``: naive sequential full fine-tuning (``configs/pretrain.py:finetune``): backbone and the
  new head train on the new task only (the earlier tasks' ``config.optim.task_weights`` 0; their heads
  kept, frozen) — the forgetting baseline.

Per-task modules run in one pass per step (``config.data.task_per_example=True``). Reduced sizes so a
stage takes about a minute on a 2-core CPU: ``--steps 100`` per stage, ``--num-train 10000`` training
images (test: a quarter). Every stage's test metrics (and logit checks) go to ``DIR/results.jsonl``.

Quick check (2026-11-28, this 2-core CPU shared with four other jobs; 1 seed, ``--steps 5 --num-train
1024``, from the 700-step ``runs/pretrain``): 4 stages took 261 s (lora), 298 s (phatgoose), 227 s
(finetune), mostly compilation (four programs per stage: train and eval steps, the second model's eval
and logits). The LoRA stages' earlier logits were bit-identical at every stage; PHATGOOSE's changed (max
|Δlogit| 0.018); fine-tuning's by up to 0.56. The numbers of 5 steps mean nothing. A full run (3 seeds,
the defaults) should take about 1 h 10 min here: ~1.8 min per stage (about 40 s of compilation — less
for seeds after the first, from the persistent cache — and 100 steps at ~2.4 steps/s) × 12 stages × 3
seeds; about 20 min per seed.

Definitions (``report``): ``a[t][k]`` is task ``t``'s test metric after stage ``k`` (accuracy, or MSE
for regression tasks). Forgetting of an old task ``t`` (one that is not the last) at the final stage
``K``: ``max_{k<K} a[t][k] − a[t][K]`` for accuracy, ``a[t][K] − min_{k<K} a[t][k]`` for MSE (sign flipped:
positive = worse), over the stages since ``t`` arrived; the average over the old tasks is "average
forgetting" (in the tasks' own units; the default order's old tasks are all accuracy tasks). "New
task" is ``a[k][k]``, the task's accuracy right after its own stage, averaged over the stages that add an
accuracy task. Mean ± 95 %
CI over seeds (Student t, n − 1 degrees of freedom); the seed changes the new parameters'
initialisation and the data order, not the backbone.
"""

from __future__ import annotations

import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.adapt import (  # noqa: E402
    _config, _test_logits, benchmark_parser, open_output, parse_benchmark_args,
)
from benchmarks.adapt_report import _mean_ci, _metric  # noqa: E402

ORDER = ("count", "texture", "background", "pos_x")
METHODS = {  # name: (config spec, config changes for every stage)
    "lora": ("configs/adapt_lora.py", {"data.task_per_example": True}),
    "phatgoose": ("configs/adapt_lora.py", {"data.task_per_example": True, "model.peft.routing": "gate"}),
    "finetune": ("configs/pretrain.py:finetune", {}),
}
LABELS = {"lora": "per-task LoRA (task ids)", "phatgoose": "PHATGOOSE-routed LoRA experts (no task ids)",
          "finetune": "naive sequential full fine-tuning"}


def _evaluate(config, run: str, scratch: str, routing: str | None = None):
    """Test metrics and logits of ``run``'s newest parameters in the model of ``config`` (the run's
    resolved config), with ``config.model.peft.routing`` replaced by ``routing`` when given."""
    import jax

    from mtljax.trainer.experiment import Experiment
    from mtljax.trainer.loop import evaluate

    c = config.copy_and_resolve_references()
    c.init.checkpoint, c.init.step, c.workdir = run, 0, scratch  # nothing is written to scratch
    c.data.tasks = tuple(c.data.tasks)
    if routing is not None:
        c.model.peft.routing = routing
        c.model.peft.top_k = min(2, len(c.data.tasks))
    exp = Experiment(c, devices=jax.devices()[:1])
    with jax.set_mesh(exp.mesh):
        state, shardings = exp.init_state()
        params = exp.warm_start(state, shardings, log=lambda s: None).params
        metrics = evaluate(exp, exp.jit_eval_step(shardings.params), params)
        logits = _test_logits(exp, params)
    return metrics, logits


def _stages(args, method: str, seed: int):
    """Every stage of one method and seed, in this process; returns the result rows."""
    import jax
    import numpy as np

    from mtljax.trainer.experiment import Experiment
    from mtljax.trainer.loop import fit

    spec, changes = METHODS[method]
    previous, prev_run, rows = {}, "", []
    for k, task in enumerate(args.order, start=1):
        workdir = os.path.join(args.out, method, f"s{seed}", f"stage{k}")
        stage = {**changes, "data.tasks": (f"+{task}",) if prev_run else (task,)}
        if method == "finetune" and prev_run:  # the stage sees only the new task's data
            stage["optim.task_weights"] = {t: 0.0 for t in args.order[:k - 1]}
        c = _config(spec, workdir, seed, prev_run or args.pretrain_dir, args.steps, args.num_train, **stage)
        t0 = time.perf_counter()
        exp = Experiment(c, devices=jax.devices()[:1])
        summary = fit(exp.config, experiment=exp, log=lambda s: None)
        routing = "phatgoose" if method == "phatgoose" else None
        metrics, logits = _evaluate(exp.config, workdir, os.path.join(args.out, "scratch"), routing)
        earlier = list(args.order[:k - 1])
        row = dict(kind="continual", method=method, seed=seed, stage=k, new_task=task,
                   tasks=list(exp.config.data.tasks), metrics=metrics,
                   identical={t: bool(np.array_equal(previous[t], logits[t])) for t in earlier},
                   max_abs_diff={t: float(np.max(np.abs(previous[t] - logits[t]))) for t in earlier},
                   steps=exp.config.train.steps, num_train=exp.config.data.num_train,
                   wall_s=round(time.perf_counter() - t0, 1))
        if routing:
            row["metrics_task_ids"] = summary["metrics"]
        rows.append(row)
        with open(os.path.join(args.out, "results.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        shown = {t: round(_metric(m)[1], 3) for t, m in metrics.items()}
        print(f"[{method} seed {seed}] stage {k} (+{task}, {row['wall_s']} s): {shown}; earlier identical: "
              f"{row['identical']}", flush=True)
        previous, prev_run = logits, workdir
    return rows


# ---- report -----------------------------------------------------------------------------------------
def forgetting(stages: list[dict]) -> dict[str, float]:
    """Per old task of one method and seed (``stages``: its rows in stage order), the forgetting at the
    last stage (module docstring; positive = worse)."""
    last = stages[-1]
    out = {}
    for t in last["tasks"][:-1]:
        kind, final = _metric(last["metrics"][t])
        earlier = [_metric(r["metrics"][t])[1] for r in stages[:-1] if t in r["metrics"]]
        if earlier:
            out[t] = (max(earlier) - final) if kind == "acc" else (final - min(earlier))
    return out


def report(out: str) -> str:
    rows = [json.loads(line) for line in open(os.path.join(out, "results.jsonl")) if line.strip()]
    runs: dict = {}
    for r in rows:
        if r.get("kind") == "continual":
            runs.setdefault(r["method"], {}).setdefault(r["seed"], {})[r["stage"]] = r  # a rerun replaces
    lines = ["## Continual multi-task learning: tasks added one per stage", ""]
    summary = ["| method | seeds | average forgetting | new task, its own stage (acc tasks) | final mean (acc tasks) | "
               "earlier logits bit-identical |", "|---|---|---|---|---|---|"]
    for method, seeds in runs.items():
        ordered = {s: [st[k] for k in sorted(st)] for s, st in seeds.items()}
        first = next(iter(ordered.values()))
        tasks, n_stages = first[-1]["tasks"], len(first)
        meta = f"{first[0]['steps']} steps per stage, {first[0]['num_train']} training images"
        lines += [f"### {LABELS.get(method, method)} ({len(seeds)} seed(s), {meta})", "",
                  "| task | metric | " + " | ".join(f"stage {k} (+{first[k - 1]['new_task']})"
                                                    for k in range(1, n_stages + 1)) + " |",
                  "|---|---|" + "---|" * n_stages]
        for t in tasks:
            cells = []
            for k in range(n_stages):
                vals = [_metric(st[k]["metrics"][t])[1] for st in ordered.values()
                        if len(st) > k and t in st[k]["metrics"]]
                cells.append(_mean_ci(vals) if vals else "")
            lines.append(f"| {t} | {_metric(first[-1]['metrics'][t])[0]} | " + " | ".join(cells) + " |")
        lines.append("")
        complete = [st for st in ordered.values() if len(st) == n_stages]
        forget = [sum(f.values()) / len(f) for f in (forgetting(st) for st in complete) if f]
        new = [[_metric(r["metrics"][r["new_task"]])[1] for r in st if _metric(r["metrics"][r["new_task"]])[0] == "acc"]
               for st in complete]
        final = [[_metric(st[-1]["metrics"][t])[1] for t in tasks if _metric(st[-1]["metrics"][t])[0] == "acc"]
                 for st in complete]
        identical = all(all(r["identical"].values()) for st in complete for r in st)
        worst = max((d for st in complete for r in st for d in r["max_abs_diff"].values()), default=0.0)
        summary.append(f"| {LABELS.get(method, method)} | {len(complete)} | {_mean_ci(forget)} | {_mean_ci(sum(n) / len(n) for n in new if n)} | "
                       f"{_mean_ci(sum(f) / len(f) for f in final if f)} | "
                       f"{'yes' if identical else f'no (max abs diff {worst:.3g})'} |")
    lines += ["### Summary", ""] + summary + ["", "Average forgetting: over the old tasks, max over earlier stages "
                                              "minus final for accuracy, final minus min for MSE (positive = worse; "
                                              "mixes units only if an old task is an MSE task); mean ± 95 % CI "
                                              "(Student t) over seeds."]
    return "\n".join(lines)


def main(argv=None):
    ap = benchmark_parser(__doc__, ("run", "report"), pretrain_default="")
    ap.add_argument("--first-seed", type=int, default=0, help="skip the seeds below it (already in DIR)")
    ap.add_argument("--order", nargs="+", default=list(ORDER), help="the downstream tasks, one per stage (>= 2)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--steps", type=int, default=100, help="train steps per stage")
    ap.add_argument("--num-train", type=int, default=10_000, help="training images (test: a quarter)")
    args = parse_benchmark_args(ap, argv)
    if args.what == "report":
        print(report(args.out))
        return
    if not args.pretrain_dir or not os.path.isdir(args.pretrain_dir):
        ap.error("--pretrain-dir: give a configs/pretrain.py run directory")
    if len(args.order) < 2 or len(set(args.order)) < len(args.order):
        ap.error("--order: give at least two distinct tasks")
    open_output(args)
    for seed in range(args.first_seed, args.seeds):
        for method in args.methods:
            _stages(args, method, seed)
    print(report(args.out))


if __name__ == "__main__":
    main()
