"""Model merging on the factors + multi-digits experts (issue 13): the FusionBench-style table, merged
accuracy against the number of tasks, task negation, AdaMerging's coefficients by depth, and the time and
memory of AdaMerging's coefficient search.

    python benchmarks/merge.py experts --out DIR --pretrained RUN [--seeds 3] [--workers 2]   # fine-tune
    python benchmarks/merge.py table --out DIR --pretrained RUN [--seeds 3]     # every method, per seed
    python benchmarks/merge.py scaling --out DIR --pretrained RUN               # 2, 4, 8 merged tasks
    python benchmarks/merge.py negation --out DIR --pretrained RUN              # forget one task
    python benchmarks/merge.py vectors --out DIR --pretrained RUN               # task vectors' norms, cosines
    python benchmarks/merge.py timing --out DIR --pretrained RUN                # AdaMerging vs T
    python benchmarks/merge.py report DIR                                       # markdown tables

``experts`` trains, for every seed, the eight full fine-tuning experts, the eight LoRA experts and the
multi-task model of ``configs/merge/experts.py`` from the pretrained run ``RUN`` (``mtljax train``
subprocesses, ``--workers`` at a time, a persistent compilation cache shared by all), into
``DIR/s<seed>/<run>``; the seed changes the new heads' (and LoRA factors') initialisation and the data
order, the pretrained start and the data are the same. Every other stage reads those runs through
``mtljax merge`` (:func:`mtljax.commands.merge.run_merge`) and appends its results to ``DIR/*.jsonl``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs.merge.experts import TASKS  # noqa: E402

ARGS = argparse.Namespace(merge_batch=64)  # settings every stage's merge config reads


def _train(spec: str, workdir: str, seed: int, pretrained: str, cache: str) -> dict:
    if os.path.exists(os.path.join(workdir, "final_metrics.json")):
        return {"run": workdir, "skipped": True}
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "mtljax", "train", f"--config={os.path.join(ROOT, spec)}",
           f"--workdir={workdir}", f"--config.seed={seed}", f"--config.init.checkpoint={pretrained}",
           "--config.train.progress=False"]
    start = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    with open(workdir + ".log", "w") as f:
        f.write(out.stdout + out.stderr)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return {"run": workdir, "seconds": round(time.time() - start, 1)}


def experts(args) -> None:
    jobs, lora = [], []  # every seed's full experts first, then the LoRA experts
    for seed in range(args.seeds):
        base = os.path.join(args.out, f"s{seed}")
        os.makedirs(base, exist_ok=True)
        jobs += [(f"configs/merge/experts.py:{t}", os.path.join(base, f"expert_{t}"), seed) for t in TASKS]
        jobs += [("configs/merge/experts.py:multitask", os.path.join(base, "multitask"), seed)]
        lora += [(f"configs/merge/experts.py:lora_{t}", os.path.join(base, f"lora_{t}"), seed) for t in TASKS]
    jobs += [] if args.no_lora else lora
    cache = os.path.join(args.out, "jax_cache")
    with cf.ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(_train, spec, wd, seed, os.path.abspath(args.pretrained), cache)
                   for spec, wd, seed in jobs]
        for f in cf.as_completed(futures):
            print(json.dumps(f.result()), flush=True)


# ---- merging stages (one process; a persistent compilation cache) ------------------------------------------
def _setup_jax(out):
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.join(out, "jax_cache"))


def _config(workdir, seed, **merge):
    from mtljax.config import base_config

    c = base_config()
    c.workdir = workdir
    c.seed = seed
    c.merge.update({"seed": seed, "batch_size": ARGS.merge_batch, **merge})
    return c


def _seeds(args):
    return [args.only_seed] if args.only_seed is not None else range(args.seeds)


def _record(out, name, record):
    with open(os.path.join(out, f"{name}.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def _normalised(report, tasks=None):
    """Mean over classification tasks of merged accuracy / the task's own expert's accuracy, per row."""
    rows = report["rows"]
    ind = rows["individual experts"]
    tasks = [t for t in (tasks or report["tasks"]) if "accuracy" in ind[t]]
    return {name: float(sum(r[t]["accuracy"] / ind[t]["accuracy"] for t in tasks) / len(tasks))
            for name, r in rows.items() if all(t in r for t in tasks)}


def table(args) -> None:
    """Every method on the eight full fine-tuning experts (and the multi-task run), and TA / TIES /
    PHATGOOSE / logit fusion on the eight LoRA experts; per seed."""
    from mtljax.commands.merge import run_merge

    _setup_jax(args.out)
    kinds = (("full", "expert", None), ("lora", "lora", "task_arithmetic,ties,logit_fusion,phatgoose"))
    for seed in _seeds(args):
        base = os.path.join(args.out, f"s{seed}")
        for kind, prefix, methods in (k for k in kinds if k[0] in args.kinds):
            experts = [os.path.join(base, f"{prefix}_{t}") for t in TASKS]
            if not all(os.path.exists(os.path.join(e, "final_metrics.json")) for e in experts):
                print(f"seed {seed} {kind}: experts missing, skipped", flush=True)
                continue
            start = time.time()
            report = run_merge(_config(os.path.join(base, f"merge_{kind}"), seed, steps=args.merge_steps),
                               pretrained=args.pretrained, experts=experts, sweep=methods is None, method=methods,
                               multitask=os.path.join(base, "multitask") if kind == "full" else None)
            _record(args.out, "table", {"seed": seed, "kind": kind, "rows": report["rows"],
                                        "mean_accuracy": report["mean_accuracy"],
                                        "normalised": _normalised(report), "seconds": report["seconds"],
                                        "info": report["info"], "wall": round(time.time() - start, 1)})


SUBSETS = {2: ("count", "texture"), 4: ("count", "texture", "background", "shape"), 8: TASKS}


def scaling(args) -> None:
    """Merged accuracy (normalised by each task's expert) as the number of merged tasks grows."""
    from mtljax.commands.merge import run_merge

    _setup_jax(args.out)
    for seed in _seeds(args):
        base = os.path.join(args.out, f"s{seed}")
        for n, tasks in SUBSETS.items():
            report = run_merge(_config(os.path.join(base, f"scaling_{n}"), seed, steps=args.scaling_steps),
                               pretrained=args.pretrained, experts=[os.path.join(base, f"expert_{t}") for t in tasks],
                               method="weight_average,task_arithmetic,ties,adamerging_task")
            _record(args.out, "scaling", {"seed": seed, "tasks": n, "normalised": _normalised(report),
                                          "mean_accuracy": report["mean_accuracy"]})


def negation(args) -> None:
    """θ_0 − λ τ_target: the target task's accuracy falls, a control task's barely moves."""
    import jax

    from mtljax.commands.merge import Setup
    from mtljax.merge import negate

    _setup_jax(args.out)
    target, control = args.negate
    for seed in _seeds(args):
        base = os.path.join(args.out, f"s{seed}")
        setup = Setup(_config(os.path.join(base, "negation"), seed), args.pretrained,
                      [os.path.join(base, f"expert_{t}") for t in (target, control)], None, lambda s: None)
        record = {"seed": seed, "target": target, "control": control,
                  "expert": {t: setup.evaluate(setup.finetuned[i])[t]["accuracy"] for i, t in enumerate((target, control))}}
        for lam in (0.0, 0.5, 1.0):
            res = setup.evaluate(jax.block_until_ready(negate(setup.theta0, setup.finetuned[0], scale=lam)))
            record[f"lambda={lam}"] = {t: res[t]["accuracy"] for t in (target, control)}
        print(json.dumps(record), flush=True)
        _record(args.out, "negation", record)


def vectors(args) -> None:
    """Size and overlap of the task vectors: ‖τ_t‖ / ‖θ_0‖ over the backbone, and their pairwise cosines."""
    import numpy as np

    from mtljax.commands.merge import Setup
    from mtljax.merge import flatten

    for seed in _seeds(args):
        base = os.path.join(args.out, f"s{seed}")
        setup = Setup(_config(os.path.join(base, "vectors"), seed), args.pretrained,
                      [os.path.join(base, f"expert_{t}") for t in TASKS], None, lambda s: None)
        theta0 = np.concatenate([np.asarray(x).ravel() for x in flatten(setup.theta0).values()])
        tv = np.stack([np.concatenate([np.asarray(x)[t].ravel() for x in flatten(setup.stacked).values()])
                       for t in range(len(TASKS))])
        norms = np.linalg.norm(tv, axis=1)
        cos = (tv @ tv.T) / np.outer(norms, norms)
        off = cos[~np.eye(len(TASKS), dtype=bool)]
        record = {"seed": seed, "relative_norm": dict(zip(TASKS, (norms / np.linalg.norm(theta0)).round(4).tolist())),
                  "cosine_mean": float(off.mean()), "cosine_min": float(off.min()), "cosine_max": float(off.max())}
        print(json.dumps(record), flush=True)
        _record(args.out, "vectors", record)


def timing(args) -> None:
    """Step time and compiled memory of AdaMerging's layer-wise coefficient search against the number of
    tasks (a fixed batch of 64 images per dataset; memory from XLA's memory analysis of the step)."""
    import jax
    import optax

    from mtljax.commands.merge import Setup
    from mtljax.merge import coefficients as co
    from mtljax.merge.adamerging import entropy_loss

    _setup_jax(args.out)
    base = os.path.join(args.out, "s0")
    for n, tasks in SUBSETS.items():
        setup = Setup(_config(os.path.join(base, "timing"), 0), args.pretrained,
                      [os.path.join(base, f"expert_{t}") for t in tasks], None, lambda s: None)
        forward, _ = setup.forward_fn()
        tx = optax.adam(1e-3)
        c0 = co.init_coefficients(setup.theta0, n, "layer", 0.3)

        def step(c, opt_state, batch, theta0, stacked, setup=setup, forward=forward):  # as coefficients.learn
            def loss(c):
                outputs, masks = forward(co.combine(theta0, stacked, c), batch)
                return entropy_loss(outputs, masks, setup.classification)

            value, grads = jax.value_and_grad(loss)(c)
            updates, opt_state = tx.update(grads, opt_state, c)
            return optax.apply_updates(c, updates), opt_state, value

        batches = setup.unlabelled_batches(64, 0)
        batch = next(batches)
        opt_state = tx.init(c0)
        params = (setup.theta0, setup.stacked)
        compiled = jax.jit(step).lower(c0, opt_state, batch, *params).compile()
        mem = compiled.memory_analysis()
        c, o = c0, opt_state
        for _ in range(3):
            c, o, v = compiled(c, o, batch, *params)
        jax.block_until_ready(v)
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            for _ in range(10):
                c, o, v = compiled(c, o, batch, *params)
            jax.block_until_ready(v)
            times.append((time.perf_counter() - t0) / 10)
        vectors = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(setup.stacked))
        record = {"tasks": n, "step_ms_median": 1000 * sorted(times)[len(times) // 2],
                  "step_ms_all": [round(1000 * t, 2) for t in times],
                  "temp_bytes": int(mem.temp_size_in_bytes), "argument_bytes": int(mem.argument_size_in_bytes),
                  "task_vector_bytes": int(vectors), "batch": int(len(batch["inputs"]))}
        print(json.dumps(record), flush=True)
        _record(args.out, "timing", record)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=["experts", "table", "scaling", "negation", "vectors", "timing", "report"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--pretrained", default="runs/pretrain")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-lora", action="store_true")
    parser.add_argument("--merge-steps", type=int, default=200, help="config.merge.steps of the learned methods")
    parser.add_argument("--merge-batch", type=int, default=64, help="config.merge.batch_size (per dataset)")
    parser.add_argument("--scaling-steps", type=int, default=150, help="scaling: AdaMerging's steps")
    parser.add_argument("--negate", nargs=2, default=["texture", "count"], metavar=("TARGET", "CONTROL"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only-seed", type=int, default=None, help="run one seed of a merging stage")
    parser.add_argument("--kinds", nargs="+", default=["full", "lora"], help="table: which experts")
    args = parser.parse_args(argv)
    ARGS.merge_batch = args.merge_batch
    args.pretrained = os.path.abspath(args.pretrained)
    if args.stage == "report":
        from benchmarks.merge_report import report

        print(report(args.out))
        return
    stages = {"experts": experts, "table": table, "scaling": scaling, "negation": negation, "vectors": vectors,
              "timing": timing}
    stages[args.stage](args)


if __name__ == "__main__":
    main()
