"""Model merging on the factors + multi-digits experts (issue 13): the FusionBench-style table, merged
accuracy against the number of tasks, task negation, AdaMerging's coefficients by depth, and the time and
memory of AdaMerging's coefficient search.

    python benchmarks/merge.py experts --out DIR --pretrained RUN [--seeds 3] [--workers 2]   # fine-tune
    python benchmarks/merge.py table --out DIR --pretrained RUN [--seeds 3]     # every method, per seed
    python benchmarks/merge.py scaling --out DIR --pretrained RUN               # 2, 4, 8 merged tasks
    python benchmarks/merge.py negation --out DIR --pretrained RUN              # forget one task
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=["experts"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--pretrained", default="runs/pretrain")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-lora", action="store_true")
    args = parser.parse_args(argv)
    {"experts": experts}[args.stage](args)


if __name__ == "__main__":
    main()
