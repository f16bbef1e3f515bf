"""Adapting a pretrained ViT: accuracy, trained parameters, step time and optimizer memory of every
adaptation method, MVLPT prompt initialisation for few-shot tasks, and MULTI-LANE's class-incremental
sequence.

Every run is the repository's own config through ``mtljax.train`` (``configs/pretrain.py``,
``configs/adapt_*.py``, ``configs/multi_lane.py``, ``configs/task_tokens.py``,
``configs/soft_injection.py``, ``configs/mvlpt.py``), only ``seed``, ``workdir`` and
``init.checkpoint`` (and ``--steps`` / ``--num-train`` for a quick check) changed:

    python benchmarks/adapt.py accuracy --out DIR [--seeds 3] [--workers 4]   # pretrain once, then every method
    python benchmarks/adapt.py mvlpt --out DIR [--seeds 3]                    # source prompts, few-shot targets
    python benchmarks/adapt.py incremental --out DIR                          # MULTI-LANE, one task at a time
    python benchmarks/adapt.py timing --out DIR [--rounds 5]                  # step time, optimizer memory
    python benchmarks/adapt.py report DIR                                     # the markdown tables

``accuracy`` trains one backbone (``configs/pretrain.py``, ``--pretrain-steps``) and adapts it with
every method in ``METHODS`` for each seed (the seed changes the new parameters' initialisation and the
data order; the backbone and the data are the same). Runs go to a pool of ``--workers`` processes
(each its own JAX runtime; on a GPU they share it, with ``XLA_PYTHON_CLIENT_PREALLOCATE=false``), with
a persistent compilation cache so seeds after the first reuse the compiled steps. Results are appended
to ``DIR/results.jsonl`` as runs finish. Step times are *not* taken from these runs (they share the
machine): ``timing`` times each method's compiled train step alone, interleaved
(:func:`benchmarks.common.measure`), and reads the optimizer state's bytes.

``incremental``: the downstream tasks arrive one at a time; stage ``k`` trains MULTI-LANE on the first
``k`` tasks from stage ``k-1``'s checkpoint (lanes loaded by task name, ``config.init.task_init``),
with the earlier tasks frozen (``config.optim.frozen_tasks``) — then evaluates every task seen so far.
Earlier tasks' test predictions must be bit-identical to what they were (checked on the logits, not
only the metrics). Also the inference time of the MULTI-LANE forward against the number of lanes.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

METHODS = {  # name: config spec
    "linear probe": "configs/pretrain.py:probe",
    "full fine-tuning": "configs/pretrain.py:finetune",
    "LoRA": "configs/adapt_lora.py",
    "adapters": "configs/adapt_adapter.py",
    "prefix": "configs/adapt_prefix.py",
    "VPT": "configs/adapt_vpt.py",
    "MULTI-LANE": "configs/multi_lane.py",
    "task tokens": "configs/task_tokens.py",
    "soft injection": "configs/soft_injection.py",
}


def _config(spec, workdir, seed=0, init="", steps=0, num_train=0, **changes):
    from mtljax.config import load_config

    c = load_config(os.path.join(ROOT, spec))
    c.workdir, c.seed = workdir, seed
    c.init.checkpoint = init
    if steps:
        c.train.steps = steps
        c.train.eval_every = c.train.checkpoint_every = steps
        c.optim.warmup_steps = min(c.optim.warmup_steps, steps // 4)
    if num_train:
        c.data.num_train, c.data.num_test = num_train, max(num_train // 4, c.data.eval_batch_size)
    for key, value in changes.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def _setup_worker(cache_dir):
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def open_output(args) -> str:
    """Make the output directory ``args.out`` and keep this process's compilations in its ``jax-cache``
    (returned, for the worker pool's processes)."""
    os.makedirs(args.out, exist_ok=True)
    cache = os.path.join(args.out, "jax-cache")
    _setup_worker(cache)
    return cache


def run_job(job: dict) -> dict:
    """One training run (in a worker process): the final per-task test metrics and the trained count."""
    import jax

    from mtljax.optim.trainable import count, split, trainable_mask
    from mtljax.trainer.experiment import Experiment
    from mtljax.trainer.loop import fit

    t0 = time.perf_counter()
    c = _config(job["spec"], job["workdir"], job.get("seed", 0), job.get("init", ""), job.get("steps", 0),
                job.get("num_train", 0), **job.get("changes", {}))
    exp = Experiment(c, devices=jax.devices()[:1])
    shapes = exp.param_shapes
    trained = count(split(shapes, trainable_mask(shapes, tuple(c.optim.trainable)))[0])
    backbone = count(shapes["backbone"]) if "backbone" in shapes else 0
    lines = []
    summary = fit(c, experiment=exp, log=lines.append)  # mtljax.train, with the experiment built above
    return dict(job, metrics=summary["metrics"], trained=trained, backbone=backbone, tasks=[t.name for t in exp.tasks],
                wall_s=round(time.perf_counter() - t0, 1), init_report=[x for x in lines if x.startswith("init from")])


def benchmark_parser(doc: str, actions, pretrain_default: str = "runs/pretrain") -> argparse.ArgumentParser:
    """The command line the adaptation benchmarks share: ``ACTION DIR`` (or ``--out DIR``),
    ``--pretrain-dir`` and ``--seeds``; each script adds its own options."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("what", choices=actions)
    ap.add_argument("out", nargs="?", default="", metavar="DIR", help="the output directory (results.jsonl, runs)")
    ap.add_argument("--out", dest="out_flag", default="", metavar="DIR", help="the same, as an option")
    ap.add_argument("--pretrain-dir", default=pretrain_default, help="a configs/pretrain.py run directory (read only)")
    ap.add_argument("--seeds", type=int, default=3)
    return ap


def parse_benchmark_args(ap: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``ap``'s arguments with ``out`` taken from ``DIR`` or ``--out`` (an error when neither is given)."""
    args = ap.parse_args(argv)
    args.out = args.out_flag or args.out
    if not args.out:
        ap.error("give the output directory (--out DIR)")
    return args


def _pool(workers, cache_dir):
    ctx = multiprocessing.get_context("spawn")
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_setup_worker,
                                  initargs=(cache_dir,))


def _record(out, result):
    with open(os.path.join(out, "results.jsonl"), "a") as f:
        f.write(json.dumps(result) + "\n")
    m = {t: {k: round(v, 4) for k, v in d.items() if k in ("accuracy", "mse")} for t, d in result["metrics"].items()}
    print(f"[{result['kind']}] {result['name']} seed {result.get('seed', 0)} ({result['wall_s']} s): {m}", flush=True)


def _pretrain(args, pool):
    pre = os.path.join(args.out, "pretrain")
    job = dict(kind="pretrain", name="pretrain", spec="configs/pretrain.py", workdir=pre,
               steps=args.pretrain_steps, num_train=args.num_train)
    if not os.path.exists(os.path.join(pre, "final_metrics.json")):
        _record(args.out, pool.submit(run_job, job).result())
    return pre


def accuracy(args, pool, pretrain):
    jobs = [dict(kind="accuracy", name=name + args.tag, spec=spec, seed=s, init=pretrain, steps=args.steps,
                 num_train=args.num_train, changes=dict(args.set),
                 workdir=os.path.join(args.out, "accuracy", f"{i}-s{s}"))
            for s in range(args.seeds) for i, (name, spec) in enumerate(METHODS.items())
            if not args.methods or name in args.methods]
    if args.task_per_example:  # the per-example-module methods again, one backbone pass per step
        from benchmarks.adapt_timing import PER_EXAMPLE

        jobs += [dict(kind="accuracy", name=f"{name}, one task per example{args.tag}", spec=METHODS[name], seed=s,
                      init=pretrain, steps=args.steps, num_train=args.num_train,
                      changes={**dict(args.set), "data.task_per_example": True},
                      workdir=os.path.join(args.out, "accuracy", f"{name.replace(' ', '_')}-tpe-s{s}"))
                 for s in range(args.seeds) for name in PER_EXAMPLE
                 if not args.methods or {name, f"{name}, one task per example"} & set(args.methods)]
    return [pool.submit(run_job, j) for j in jobs]


def mvlpt_source(args, pool, pretrain):
    job = dict(kind="mvlpt-source", name="source prompts", spec="configs/mvlpt.py:source", init=pretrain,
               workdir=os.path.join(args.out, "mvlpt", "source"), steps=args.steps, num_train=args.num_train)
    return pool.submit(run_job, job)


def mvlpt_targets(args, pool, source: dict):
    """Few-shot target runs from the source run's prompts: ``fresh`` and ``mean`` for every seed and
    shot count, each single source task once (first seed, first shot count)."""
    futures = []
    for shots in args.shots:
        inits = ["fresh", "mean"] + (list(source["tasks"]) if shots == args.shots[0] else [])
        for init in inits:
            for s in range(args.seeds if init in ("fresh", "mean") else 1):
                futures.append(pool.submit(run_job, dict(
                    kind="mvlpt", name=f"{init} {shots}-shot", shots=shots, task_init=init, seed=s,
                    spec="configs/mvlpt.py", init=source["workdir"], steps=args.few_shot_steps,
                    changes={"data.shots": shots, "init.task_init": init},
                    workdir=os.path.join(args.out, "mvlpt", f"{init}-{shots}-s{s}"))))
    return futures


def incremental(args):
    """Stage by stage in this process (each stage needs the last). For the earlier tasks, compares the
    test outputs of the stage's model as loaded (before the new task trains) with those after it trained
    — the same compiled model, so they must be bit-identical — and with the previous stage's outputs
    (a model with one lane fewer: XLA may pick other kernels for other shapes, so float rounding may
    differ; the largest difference is recorded)."""
    import jax
    import numpy as np

    from mtljax.data.factors import DOWNSTREAM_TASKS
    from mtljax.trainer.experiment import Experiment
    from mtljax.trainer.loop import fit, restore_params

    order = list(args.order or DOWNSTREAM_TASKS)
    previous, prev, rows = {}, "", []
    for k in range(1, len(order) + 1):
        tasks = order[:k]
        workdir = os.path.join(args.out, "incremental", f"stage{k}")
        c = _config("configs/multi_lane.py", workdir, 0, prev or args.pretrain_dir, args.steps, args.num_train,
                    **{"data.tasks": tuple(tasks), "optim.frozen_tasks": tuple(tasks[:-1])})
        t0 = time.perf_counter()
        exp = Experiment(c, devices=jax.devices()[:1])
        with jax.set_mesh(exp.mesh):
            state, shardings = exp.init_state()
            before = _test_logits(exp, exp.warm_start(state, shardings, log=lambda s: None).params)
        summary = fit(c, experiment=exp, log=lambda s: print("   ", s) if s.startswith("init from") else None)
        with jax.set_mesh(exp.mesh):
            _, params, _ = restore_params(exp)
            after = _test_logits(exp, params)
        earlier = tasks[:-1]
        row = dict(kind="incremental", stage=k, new_task=tasks[-1], tasks=tasks, metrics=summary["metrics"],
                   earlier_outputs_identical={t: bool(np.array_equal(before[t], after[t])) for t in earlier},
                   max_abs_diff_vs_previous_stage={t: float(np.max(np.abs(previous[t] - after[t]))) for t in earlier},
                   wall_s=round(time.perf_counter() - t0, 1))
        previous = after
        rows.append(row)
        with open(os.path.join(args.out, "results.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[incremental] stage {k} (+{tasks[-1]}): identical {row['earlier_outputs_identical']}, "
              f"vs previous stage {row['max_abs_diff_vs_previous_stage']}", flush=True)
        prev = workdir
    return rows


def _test_logits(exp, params):
    """Every task's test-set outputs, concatenated over batches (host numpy)."""
    import jax
    import numpy as np


    forward = jax.jit(lambda p, b: exp.objective.forward(p, b, train=False)[1])
    outs = {}
    for batch in exp.eval_batches():
        for t, y in forward(params, batch).items():
            outs.setdefault(t, []).append(np.asarray(y))
    return {t: np.concatenate(v) for t, v in outs.items()}


def _setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as a Python literal when it is one (``0.03``, ``True``, ``("a",)``)."""
    import ast

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv=None):
    ap = benchmark_parser(__doc__, ("accuracy", "mvlpt", "incremental", "timing", "all", "report"), pretrain_default="")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=0, help="override every adaptation run's steps (0: the config's)")
    ap.add_argument("--pretrain-steps", type=int, default=0, help="0: configs/pretrain.py's")
    ap.add_argument("--few-shot-steps", type=int, default=0, help="0: configs/mvlpt.py's")
    ap.add_argument("--num-train", type=int, default=0, help="override the training set size (0: the config's)")
    ap.add_argument("--shots", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--order", nargs="*", default=None, help="incremental: the order the tasks arrive in")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=10, help="timing: timed calls per round")
    ap.add_argument("--methods", nargs="*", default=None, help=f"a subset of {list(METHODS)}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=_setting,
                    help="accuracy: a config change for every run, e.g. optim.learning_rate=0.03 (repeatable)")
    ap.add_argument("--tag", default="", help="accuracy: appended to the method names (e.g. ', lr 0.03')")
    ap.add_argument("--task-per-example", action="store_true",
                    help="accuracy: also the methods whose modules read the task with config.data.task_per_example")
    args = parse_benchmark_args(ap, argv)
    unknown = {m.removesuffix(", one task per example") for m in args.methods or ()} - set(METHODS)
    if unknown:
        ap.error(f"--methods: unknown {sorted(unknown)}; choose from {list(METHODS)}")
    if args.what == "report":
        from benchmarks.adapt_report import report

        print(report(args.out, METHODS))
        return
    cache = open_output(args)
    if args.what == "timing":
        from benchmarks.adapt_timing import timing

        timing(args, METHODS, _config)
        return
    with _pool(args.workers, cache) as pool:
        pretrain = args.pretrain_dir or _pretrain(args, pool)
        args.pretrain_dir = pretrain
        futures, source = [], None
        if args.what in ("mvlpt", "all"):
            source = mvlpt_source(args, pool, pretrain)
        if args.what in ("accuracy", "all"):
            futures += accuracy(args, pool, pretrain)
        lanes = None
        if args.what in ("incremental", "all"):  # in this process, beside the pool
            lanes = threading.Thread(target=incremental, args=(args,))
            lanes.start()
        if source is not None:
            result = source.result()
            _record(args.out, result)
            futures += mvlpt_targets(args, pool, result)
        for f in cf.as_completed(futures):
            try:
                _record(args.out, f.result())
            except Exception as e:  # noqa: BLE001 - one failed run must not lose the others
                print(f"FAILED: {type(e).__name__}: {e}", flush=True)
        if lanes is not None:
            lanes.join()


if __name__ == "__main__":
    main()
