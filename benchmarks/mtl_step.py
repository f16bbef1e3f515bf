"""Per-step time and compiled memory of every multi-task method, relative to equal weighting.

Model: mtljax's hard-parameter-sharing model with the ``mlp`` backbone (3 x 512 hidden layers by
default: Dense, GELU, LayerNorm) and one linear head per task; batch 256 of 64 random features.
Even-numbered tasks are scalar regressions, odd-numbered ones 5-class classifications. Every step is
mtljax's real train step (``make_train_step`` + ``jit_train_step`` on a 1-device mesh, the chain
``as_optax(method, T)`` then Adam 1e-3),
compiled once with ``.lower(...).compile()`` and then called with the state donated, exactly as the
trainer does.

For each ``T`` in ``--tasks`` (default 2, 3, 10), for each method of ``mtljax.optim.METHODS`` whose
module exists, and for each level it supports:

* loss weightings (``needs='losses'``) have one step whatever the level (one VJP with cotangent ``w``),
  shown with level ``-``;
* Gramian methods are timed at ``param`` (stacked per-task gradients of the shared parameters),
  ``gramian`` (only ``G = J Jᵀ``, then one more pullback) and ``rep`` (Gramian of the gradients w.r.t.
  the shared representation, MGDA-UB style) and ``autogram`` (``G`` from the layer-wise Gramian of the
  dense kernels, no per-task kernel gradients; the update without another pullback);
* Jacobian methods (GradDrop) only at ``param``.

Timing: all steps of one ``T`` (and, unless ``--no-torch``, the PyTorch/TorchJD steps of
``benchmarks/torchjd_step.py`` on the same architecture and batch) are interleaved in rounds; in
every round each step runs once untimed and then ``--per-round`` timed calls. A step's time is the
median of all its timed calls; its ratio to a reference is the median over rounds of the ratio of
the two round medians, so load from other processes that drifts between rounds cancels out.

Memory (mtljax only): XLA's buffer assignment for the compiled step
(``compiled.memory_analysis()``): ``temp`` = scratch the step needs on top of its arguments and
outputs (activations, per-task gradients, Gramian, optimizer temporaries); ``peak`` = XLA's own
``peak_memory_in_bytes`` estimate (arguments + outputs + live temporaries; the donated state is
aliased into the output). Both are static, per compiled program, and exact for that program.

  python benchmarks/mtl_step.py --quick      # tiny sizes, < 1 minute
  python benchmarks/mtl_step.py              # full run (3x512 MLP, batch 256, T = 2, 3, 10)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtljax.config import base_config
from mtljax.models import build_model
from mtljax.optim import METHODS, get_method
from mtljax.parallel.mesh import make_mesh
from mtljax.parallel.rules import DEFAULT_RULES, batch_sharding
from mtljax.tasks import Task
from mtljax.models.objective import objective
from mtljax.optim import as_optax
from mtljax.trainer.state import create_state
from mtljax.trainer.step import jit_train_step, make_train_step

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import measure, memory_stats  # noqa: E402

NUM_CLASSES = 5
LEVELS = ("param", "gramian", "rep", "autogram")


@dataclass
class Contender:
    name: str  # unique key
    framework: str  # mtljax | torch
    method: str
    level: str
    run: Callable[[], None]
    compile_s: float = float("nan")
    mem: dict = field(default_factory=dict)
    check: Callable[[], str] | None = None  # returns a warning (or "") after timing
    samples: list = field(default_factory=list)  # per round: list of seconds
    first_s: float = float("nan")  # first (untimed) call
    excluded: bool = False


# ------------------------------------------------------------------------------------------ mtljax
def make_tasks(num_tasks: int) -> list[Task]:
    return [Task(f"t{i}", "regression") if i % 2 == 0 else Task(f"t{i}", "multiclass", num_classes=NUM_CLASSES)
            for i in range(num_tasks)]


def numpy_batch(num_tasks: int, batch: int, in_dim: int, seed: int = 0):
    """Same values as ``torchjd_step.make_batch`` (same generator calls, same order)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, in_dim), dtype=np.float32)
    ys = []
    for t in range(num_tasks):
        if t % 2 == 0:
            ys.append(rng.standard_normal((batch,), dtype=np.float32))
        else:
            ys.append(rng.integers(0, NUM_CLASSES, size=(batch,), dtype=np.int32))
    return x, ys


def method_variants(names, levels):
    """``[(name, level, method)]`` for every method whose module exists; notes for the rest."""
    out, notes = [], []
    for name in names:
        try:
            method = get_method(name)
        except ModuleNotFoundError as e:
            notes.append(f"{name}: skipped, module not there yet ({e.name})")
            continue
        except Exception as e:  # noqa: BLE001 - a benchmark reports and goes on
            notes.append(f"{name}: skipped, could not build it ({type(e).__name__}: {e})")
            continue
        if method.needs == "losses":
            out.append((name, "-", method))
        elif method.needs == "jacobian":
            if "param" in levels:
                out.append((name, "param", method))
        else:
            out.extend((name, lv, method) for lv in levels)
    return out, notes


def jax_contenders(num_tasks: int, variants, *, batch: int, in_dim: int, hidden, chunk_size, notes):
    tasks = make_tasks(num_tasks)
    cfg = base_config().model
    cfg.backbone = "mlp"
    cfg.mlp.hidden = tuple(hidden)
    model = build_model(cfg, tasks, (in_dim,))
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    rules = DEFAULT_RULES
    b_shard = batch_sharding(mesh, rules)
    x, ys = numpy_batch(num_tasks, batch, in_dim)
    batch_tree = {
        "inputs": jnp.asarray(x),
        "targets": {t.name: jnp.asarray(y) for t, y in zip(tasks, ys)},
        "masks": {t.name: jnp.ones((batch,), jnp.float32) for t in tasks},
    }
    batch_tree = jax.device_put(batch_tree, b_shard)
    obj = objective(model, tasks)
    out = []
    for name, level, method in variants:
        label = f"{name}/{level}"
        try:
            tx = optax.chain(as_optax(method, num_tasks), optax.adam(1e-3))
            state, shardings, _ = create_state(model, tx, (in_dim,), 0, mesh, rules)
            step = make_train_step(obj, tx, level=level if level != "-" else "param", chunk_size=chunk_size)
            jitted = jit_train_step(step, mesh, shardings, b_shard)
            t0 = time.perf_counter()
            compiled = jitted.lower(state, batch_tree).compile()
            compile_s = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001
            notes.append(f"T={num_tasks} {label}: skipped, failed to build/compile "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            continue
        box = {"state": state, "metrics": None}

        def run(box=box, compiled=compiled):
            box["state"], box["metrics"] = compiled(box["state"], batch_tree)
            jax.block_until_ready(box["metrics"]["loss"])
            jax.block_until_ready(box["state"].params)

        def check(box=box):
            m = box["metrics"]
            if m is not None and not bool(m["finite"]):
                return "last step was not finite (state kept)"
            return ""

        out.append(Contender(label, "mtljax", name, level, run, compile_s, memory_stats(compiled), check))
        out[-1].compiled = compiled  # for benchmarks/profile_step.py (its HLO text)
    return out


# ------------------------------------------------------------------------------------------- torch
def torch_contenders(num_tasks: int, *, batch: int, in_dim: int, hidden, names, notes):
    try:
        import torchjd_step
    except ImportError as e:
        notes.append(f"PyTorch/TorchJD side skipped: {e}")
        return []
    steps = torchjd_step.make_steps(num_tasks, batch=batch, in_dim=in_dim, hidden=tuple(hidden), names=names)
    return [Contender(n, "torch", n, "param" if n != "torch_sum" else "-", f) for n, f in steps.items()]


# ------------------------------------------------------------------------------------------ timing
def median_time(c: Contender) -> float:
    return statistics.median(t for ts in c.samples for t in ts)


def ratio(a: Contender, b: Contender) -> float:
    """Median over rounds of (round median of a) / (round median of b)."""
    return statistics.median(statistics.median(x) / statistics.median(y) for x, y in zip(a.samples, b.samples))


def spread(a: Contender, b: Contender) -> tuple[float, float]:
    rs = [statistics.median(x) / statistics.median(y) for x, y in zip(a.samples, b.samples)]
    return min(rs), max(rs)


# ----------------------------------------------------------------------------------------- reports
def mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def method_table(num_tasks: int, cs: list[Contender]) -> str:
    js = [c for c in cs if c.framework == "mtljax"]
    base = next((c for c in js if c.method == "equal"), None)
    lines = [f"### T = {num_tasks}", "",
             "| method | level | step ms | × equal (min–max over rounds) | temp MiB | × equal | peak MiB | × equal | compile s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in js:
        t = median_time(c)
        if base is not None:
            lo, hi = spread(c, base)
            rel = f"{ratio(c, base):.2f} ({lo:.2f}–{hi:.2f})"
        else:
            rel = "n/a"
        temp, peak = c.mem.get("temp_size_in_bytes", 0), c.mem.get("peak_memory_in_bytes", 0)
        btemp = base.mem.get("temp_size_in_bytes", 0) if base else 0
        bpeak = base.mem.get("peak_memory_in_bytes", 0) if base else 0
        rtemp = f"{temp / btemp:.2f}" if btemp else "n/a"
        rpeak = f"{peak / bpeak:.2f}" if bpeak else "n/a"
        lines.append(f"| {c.method} | {c.level} | {1e3 * t:.2f} | {rel} | {mib(temp)} | {rtemp} | {mib(peak)} | "
                     f"{rpeak} | {c.compile_s:.1f} |")
    return "\n".join(lines)


def torch_rows(num_tasks: int, cs: list[Contender]) -> dict | None:
    by = {c.name: c for c in cs}
    plain, eq = by.get("torch_sum"), by.get("equal/-")
    jd = [by[n] for n in ("torchjd_upgrad", "torchjd_upgrad_gram") if n in by]
    if plain is None or not jd:
        return None
    best = min(jd, key=median_time)
    row = {"T": num_tasks, "torch_sum_ms": 1e3 * median_time(plain), "torchjd_best": best.name,
           "torchjd_ms": {c.name: 1e3 * median_time(c) for c in jd},
           "torchjd_over_plain": {c.name: ratio(c, plain) for c in jd}}
    if "torchjd_autogram_upgrad" in by:
        ag = by["torchjd_autogram_upgrad"]
        row["autogram_ms"] = 1e3 * median_time(ag)
        row["autogram_over_plain"] = ratio(ag, plain)
    if eq is not None:
        row["mtljax_equal_ms"] = 1e3 * median_time(eq)
        row["plain_speedup"] = ratio(plain, eq)  # torch plain / mtljax equal
    for lv in LEVELS:
        c = by.get(f"upgrad/{lv}")
        if c is not None:
            row[f"upgrad_{lv}_ms"] = 1e3 * median_time(c)
            row[f"speedup_{lv}"] = ratio(best, c)
            row[f"speedup_{lv}_range"] = spread(best, c)
    return row


def torch_table(rows: list[dict]) -> str:
    lines = ["| T | torch plain ms | TorchJD UPGrad ms (jac / gram-opt) | TorchJD ÷ plain (jac / gram-opt) | "
             "TorchJD autogram ÷ plain | mtljax equal ms | plain torch ÷ mtljax equal | "
             "mtljax UPGrad ms (param / gramian / rep / autogram) | speedup vs best TorchJD (param / gramian / rep / autogram) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ms = r["torchjd_ms"]
        ov = r["torchjd_over_plain"]
        jd_ms = " / ".join(f"{ms[n]:.1f}" if n in ms else "–" for n in ("torchjd_upgrad", "torchjd_upgrad_gram"))
        jd_ov = " / ".join(f"{ov[n]:.2f}" if n in ov else "–" for n in ("torchjd_upgrad", "torchjd_upgrad_gram"))
        ag = f"{r['autogram_over_plain']:.2f}" if "autogram_over_plain" in r else "–"
        eq = f"{r['mtljax_equal_ms']:.2f}" if "mtljax_equal_ms" in r else "–"
        ps = f"{r['plain_speedup']:.2f}" if "plain_speedup" in r else "–"
        up = " / ".join(f"{r[f'upgrad_{lv}_ms']:.2f}" if f"upgrad_{lv}_ms" in r else "–" for lv in LEVELS)
        sp = " / ".join(f"{r[f'speedup_{lv}']:.2f}×" if f"speedup_{lv}" in r else "–" for lv in LEVELS)
        lines.append(f"| {r['T']} | {r['torch_sum_ms']:.2f} | {jd_ms} | {jd_ov} | {ag} | {eq} | {ps} | {up} | {sp} |")
    return "\n".join(lines)


def environment() -> dict:
    env = common.environment(("flax", "optax"))
    try:
        import torchjd_step

        env.update(torchjd_step.versions())
    except ImportError:
        pass
    return env


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny model and few rounds (a smoke run, < 1 min)")
    p.add_argument("--tasks", default=None, help="comma-separated task counts (default 2,3,10; quick: 2,3)")
    p.add_argument("--methods", default=None, help="comma-separated method names (default: every method "
                                                     "whose module exists; quick: a few)")
    p.add_argument("--levels", default=",".join(LEVELS))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--in-dim", type=int, default=None)
    p.add_argument("--hidden", default=None, help="comma-separated widths (default 512,512,512)")
    p.add_argument("--chunk-size", type=int, default=0, help="tasks per batched pullback; 0 = all at once")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--per-round", type=int, default=None)
    p.add_argument("--pause", type=float, default=0.05, help="seconds of sleep before each block of calls")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch/TorchJD steps")
    p.add_argument("--no-autogram", action="store_true", help="skip TorchJD's autogram (Gramian engine) step")
    p.add_argument("--json", default=None, help="also write every number to this JSON file")
    common.add_host_allocator_flag(p, default="system")  # the MLP's steps: as configs/multitab.py runs
    args = p.parse_args(argv)
    common.apply_host_allocator(args.host_allocator)

    q = args.quick
    tasks = [int(s) for s in (args.tasks or ("2,3" if q else "2,3,10")).split(",")]
    batch = args.batch or (32 if q else 256)
    in_dim = args.in_dim or (16 if q else 64)
    hidden = tuple(int(s) for s in (args.hidden or ("64,64,64" if q else "512,512,512")).split(","))
    rounds = args.rounds or (2 if q else 5)
    per_round = args.per_round or (3 if q else 5)
    levels = tuple(s for s in args.levels.split(",") if s)
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad:
        p.error(f"--levels: unknown {bad}; choose from {LEVELS}")
    if args.methods:
        names = [s for s in args.methods.split(",") if s]
    else:
        names = ["equal", "uw", "mgda", "upgrad", "graddrop"] if q else list(METHODS)
    if "equal" not in names:
        names.insert(0, "equal")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {unknown}; choose from {sorted(METHODS)}")
    torch_names = ("torch_sum", "torchjd_upgrad", "torchjd_upgrad_gram") + (
        () if args.no_autogram else ("torchjd_autogram_upgrad",))

    env = environment()
    print("# mtl_step benchmark")
    print(json.dumps(env))
    cmd = "python benchmarks/mtl_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"command: {cmd.strip()}")
    print(f"model: MLP {'x'.join(map(str, hidden))} (GELU, LayerNorm) + T linear heads, batch {batch}, "
          f"in_dim {in_dim}, adam; rounds {rounds} x {per_round} timed calls")

    notes: list[str] = []
    variants, vnotes = method_variants(names, levels)
    notes += vnotes
    for n in vnotes:
        print(f"note: {n}")
    results, torch_summary = {}, []
    t_all = time.perf_counter()
    for t in tasks:
        print(f"\n== T = {t}: compiling {len(variants)} mtljax steps", flush=True)
        t0 = time.perf_counter()
        cs = jax_contenders(t, variants, batch=batch, in_dim=in_dim, hidden=hidden,
                            chunk_size=args.chunk_size or None, notes=notes)
        print(f"   compiled in {time.perf_counter() - t0:.1f} s", flush=True)
        if not args.no_torch:
            cs += torch_contenders(t, batch=batch, in_dim=in_dim, hidden=hidden, names=torch_names, notes=notes)
        measure(cs, rounds=rounds, per_round=per_round, pause=args.pause)
        for c in cs:
            if c.check is not None:
                w = c.check()
                if w:
                    notes.append(f"T={t} {c.name}: {w}")
        print()
        print(method_table(t, cs))
        row = torch_rows(t, cs)
        if row is not None:
            torch_summary.append(row)
        results[t] = [{"name": c.name, "framework": c.framework, "method": c.method, "level": c.level,
                       "median_ms": 1e3 * median_time(c), "compile_s": c.compile_s, "memory": c.mem,
                       "samples_ms": [[1e3 * s for s in ts] for ts in c.samples]} for c in cs]
    if torch_summary:
        print("\n### mtljax vs PyTorch / TorchJD (UPGrad, same model and batch, interleaved)\n")
        print(torch_table(torch_summary))
    if notes:
        print("\nnotes:")
        for n in dict.fromkeys(notes):
            print(f"- {n}")
    print(f"\ntotal wall time {time.perf_counter() - t_all:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "command": cmd, "results": results, "torch_summary": torch_summary,
                       "notes": notes}, f, indent=1)


if __name__ == "__main__":
    main()
