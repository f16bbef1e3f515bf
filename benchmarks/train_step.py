"""Train-step throughput of mtljax's HPS ViT against the same model as a PyTorch eager train step,
with achieved FLOP/s as a fraction of this machine's measured matmul peak, and mixed precision.

What runs (everything in one process and interleaved):

* **mtljax** (``vit_case.py``): the real train step — ``build_model`` (HPS, ``backbone='vit'``,
  ``pool='gap'``, linear heads), ``make_train_step`` (the chain ``as_optax(equal(), T)``, Adam 1e-3) +
  ``jit_train_step`` on a 1-device mesh, compiled once with ``.lower(...).compile()`` and called with
  the state donated, as the trainer does; ``config.model.dtype`` ``float32`` and ``bfloat16``
  (parameters and Adam state float32 in both). With ``--cpu-devices N`` also the same step
  data-parallel over N simulated CPU devices (``jax_num_cpu_devices = N``, mesh ``{'data': N}``, batch
  sharded with ``batch_sharding``): XLA's CPU backend runs many non-dot ops on one thread, and one
  device per core lets every core work on them. Its row stands next to the 1-device row.
* **PyTorch**: ``benchmarks/torch_vit_step.py`` — the same network written in eager PyTorch (fused
  qkv, ``scaled_dot_product_attention``, tanh-GELU like Flax's ``nn.gelu`` default, LayerNorm eps 1e-6)
  with summed cross-entropy losses and ``torch.optim.Adam`` (the LibMTL shape), f32 and
  ``torch.autocast('cpu', bfloat16)``, with **torch's default thread count** — the peer every
  "mtljax ÷ torch" ratio of the summary is against. ``--torch-threads`` adds extra f32 rows at other
  thread counts (default: one thread), for reference only. Before timing, the benchmark asserts that
  both models have the same number of parameters, copies mtljax's parameters into the torch model and
  checks that the per-task logits agree (heads set to random values for the check, since mtljax
  initialises them at zero); both steps then start from identical parameters.
* **matmul peak** (``matmul_peak.py``): square ``n × n`` matmuls (default n = 2048) in XLA and in
  torch, f32 and bf16, timed in the same rounds as the steps (a rate is from the best round median).
  The machine's f32 peak, for each case, is the fastest f32 rate measured in its rounds (XLA, torch
  with default threads, torch at the extra thread counts); a matmul whose first call takes longer
  than ``--peak-max-s`` is measured at n/2 (then n/4 ...) and the size used is reported.
* **FLOPs** per step: XLA's ``compiled.cost_analysis()['flops']`` of mtljax's f32 step, checked
  against an analytic count (3 × forward matmul FLOPs: ``2·B·N·(matmul params)`` plus attention's
  ``4·B·N²·D`` per layer); achieved FLOP/s = those FLOPs / step time, for every row (they all do the
  same arithmetic).

Timing (as in ``mtl_step.py``): per case, all contenders run once (compile, allocation); then
``--rounds`` rounds, in rotating and alternating order, in each of which every contender runs one
untimed call (only if its first call took < 1 s) and ``--per-round`` timed calls. A time is the
median of all timed calls; a ratio is the median over rounds of the ratio of round medians. A step
whose first call takes longer than ``--max-step-s`` is not put in the rounds; its first-call time is
reported as such (marked ``*``). A torch step whose time, predicted from the GFLOP/s it reached on an
earlier case, exceeds ``--max-step-s`` is skipped with a note (torch bf16 on AVX2-only CPUs).

Afterwards, unless ``--no-sweep``, the XLA CPU flag sweep of ``xla_flags.py`` runs on one case (its
options ``--flags``, ``--flag-case``, ``--flag-dtypes``, ``--flag-reps``, ``--worker-calls`` are
accepted here too; ``benchmarks/xla_flags.py`` runs the sweep alone).

  .venv-bench/bin/python benchmarks/train_step.py --quick --no-sweep                  # tiny ViT, ~1 min
  .venv-bench/bin/python benchmarks/train_step.py --quick --no-sweep --cpu-devices 2  # + data-parallel row
  .venv-bench/bin/python benchmarks/train_step.py --quick                             # + a one-flag sweep
  .venv-bench/bin/python benchmarks/train_step.py --no-sweep --rounds 3               # Ti/S x 16x16x1, 32x32x3
  .venv-bench/bin/python benchmarks/train_step.py                # the same four cases, then the full sweep

Environment: ``python3 -m venv .venv-bench && .venv-bench/bin/pip install -e . &&
.venv-bench/bin/pip install -r benchmarks/requirements.txt`` (torch's CPU wheel lives only there; it is
never an mtljax dependency). ``--no-torch`` runs the mtljax side alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import (Contender, add_host_allocator_flag, apply_host_allocator, environment, fmt_ratio,  # noqa: E402
                    measure, median_time, speed_ratio)
from matmul_peak import peak_rate, torch_default_threads, torch_matmul, xla_matmul  # noqa: E402
from vit_case import DEFAULT_CASES, Case, analytic_flops, make_tasks, mtljax_contender, numpy_batch  # noqa: E402
import xla_flags  # noqa: E402

from mtljax.models import build_model  # noqa: E402


# ------------------------------------------------------------------------------------- torch peer
def equivalence_check(case: Case, model, params_np, torch_vit, classes, batch: int) -> dict:
    """Same parameter count, and the same logits when both models hold the same (random-head) weights."""
    import torch

    tasks = make_tasks(classes)
    tmodel = torch_vit.build(case.dims(), case.shape, case.patch, classes)
    n_jax = sum(int(np.size(p)) for p in jax.tree.leaves(params_np))
    n_torch = torch_vit.param_count(tmodel)
    if n_jax != n_torch:
        raise AssertionError(f"{case.label}: mtljax has {n_jax:,} parameters, the torch model {n_torch:,}")
    rng = np.random.default_rng(1)
    check = {k: v for k, v in params_np.items()}
    for t in tasks:  # mtljax heads start at zero, which would make any backbone look equal
        h = params_np[f"heads_{t.name}"]["out"]
        check[f"heads_{t.name}"] = {"out": {"kernel": rng.normal(0, 0.5, h["kernel"].shape).astype(np.float32),
                                            "bias": rng.normal(0, 0.5, h["bias"].shape).astype(np.float32)}}
    x, _ = numpy_batch(case, min(batch, 8), classes, seed=2)
    out_jax, _ = model.apply({"params": check}, jnp.asarray(x))
    torch_vit.load_flax_params(tmodel, check, [t.name for t in tasks])
    tmodel.eval()
    with torch.no_grad():
        out_torch = tmodel(torch.from_numpy(x))
    diff = max(float(np.max(np.abs(np.asarray(out_jax[t.name]) - o.numpy()))) for t, o in zip(tasks, out_torch))
    scale = max(float(np.max(np.abs(np.asarray(out_jax[t.name])))) for t in tasks)
    if not diff <= 1e-3 * max(scale, 1.0):
        raise AssertionError(f"{case.label}: mtljax and torch logits differ by {diff:.3g} (scale {scale:.3g})")
    return {"params": n_jax, "max_abs_logit_diff": diff, "logit_scale": scale}


def torch_contender(case: Case, bf16: bool, params_np, torch_vit, batch: int, classes: list[int],
                    threads: int | None = None):
    """The eager torch step; ``threads`` (default: torch's default count, the peer the summary is
    against) is set before every call."""
    import torch

    tasks = make_tasks(classes)
    tmodel = torch_vit.build(case.dims(), case.shape, case.patch, classes)
    torch_vit.load_flax_params(tmodel, params_np, [t.name for t in tasks])
    x, ys = numpy_batch(case, batch, classes)
    step = torch_vit.make_step(tmodel, x, ys, bf16=bf16)
    dtype = "bfloat16" if bf16 else "float32"
    nthreads = threads or torch_default_threads()
    box = {"loss": None}

    def run():
        if torch.get_num_threads() != nthreads:
            torch.set_num_threads(nthreads)
        box["loss"] = step()

    name = f"torch/{dtype}" + (f"/{threads}t" if threads else "")
    c = Contender(name, "torch", dtype, run, info={"threads": nthreads, "default_threads": threads is None})
    c.info["finite"] = lambda: box["loss"] is None or bool(np.isfinite(float(box["loss"])))
    return c


# ----------------------------------------------------------------------------------------- reports
def case_rows(case: Case, cs: list[Contender], batch: int, analytic: float, equiv: dict | None) -> dict:
    by = {c.name: c for c in cs}
    peaks = {c.name: {"gflops": peak_rate(c), "n": c.info.get("n")} for c in cs if "matmul" in c.framework}
    f32_peak = max((v["gflops"] for k, v in peaks.items() if "/float32" in k), default=float("nan"))
    flops = by["mtljax/float32"].info["xla_flops"] if "mtljax/float32" in by else float("nan")
    rows = []
    for c in cs:
        if c.framework not in ("mtljax", "torch"):
            continue
        sec = median_time(c)
        row = {"name": c.name, "framework": c.framework, "dtype": c.dtype, "threads": c.info.get("threads"),
               "default_threads": c.info.get("default_threads"), "devices": c.info.get("devices"),
               "ms": 1e3 * sec, "examples_per_s": batch / sec, "gflops": flops / sec / 1e9,
               "frac_f32_peak": flops / sec / 1e9 / f32_peak, "first_call_only": c.excluded}
        mine = by.get(f"mtljax/{c.dtype}")
        if c.framework == "torch" and mine is not None:
            row["mtljax_speed_over_this"] = speed_ratio(mine, c)
        if c.framework == "mtljax":
            row.update(xla_flops=c.info["xla_flops"], compile_s=c.info["compile_s"],
                       temp_mib=c.info["memory"].get("temp_size_in_bytes", 0) / 2 ** 20)
        rows.append(row)
    summary = []  # per dtype: mtljax (1 device, and N CPU devices) against torch eager with its default threads
    for dtype in ("float32", "bfloat16"):
        mine, peer = by.get(f"mtljax/{dtype}"), by.get(f"torch/{dtype}")
        if mine is None:
            continue
        s = {"dtype": dtype, "mtljax_ms": 1e3 * median_time(mine),
             "mtljax_frac_f32_peak": flops / median_time(mine) / 1e9 / f32_peak}
        if peer is not None:
            s.update(torch_threads=peer.info["threads"], torch_ms=1e3 * median_time(peer),
                     torch_frac_f32_peak=flops / median_time(peer) / 1e9 / f32_peak,
                     mtljax_over_torch=speed_ratio(mine, peer))
        for c in cs:
            if c.framework == "mtljax" and c.dtype == dtype and c.info.get("devices", 1) > 1:
                s.update(devices=c.info["devices"], multi_ms=1e3 * median_time(c),
                         multi_frac_f32_peak=flops / median_time(c) / 1e9 / f32_peak,
                         multi_over_one_device=speed_ratio(c, mine))
                if peer is not None:
                    s["multi_over_torch"] = speed_ratio(c, peer)
        summary.append(s)
    bf16 = {}
    for fw in ("mtljax", "torch"):
        a, b = by.get(f"{fw}/bfloat16"), by.get(f"{fw}/float32")
        if a is not None and b is not None:
            bf16[fw] = speed_ratio(a, b)
    return {"case": case.spec, "label": case.label, "tokens": case.tokens, "batch": batch, "rows": rows,
            "summary": summary, "bf16_speedup": bf16, "peaks": peaks, "f32_peak_gflops": f32_peak, "xla_flops": flops,
            "analytic_flops": analytic, "equivalence": equiv,
            "samples_ms": {c.name: [[1e3 * s for s in ts] for ts in c.samples] for c in cs},
            "first_call_ms": {c.name: 1e3 * c.first_s for c in cs}}


def step_label(row: dict) -> str:
    if row["framework"] == "mtljax":
        n = row.get("devices") or 1
        return "mtljax (XLA)" + (f", data-parallel over {n} CPU devices" if n > 1 else "")
    threads = f"{row['threads']} thread{'s' if row['threads'] != 1 else ''}"
    return f"torch eager, {threads}" + (" (default)" if row.get("default_threads") else "")


def step_table(results: list[dict]) -> str:
    lines = ["| model (input, patch, tokens) | dtype | step | ms/step | examples/s | GFLOP/s (% of f32 matmul peak) | "
             "mtljax (1 device) speed ÷ this (min–max over rounds) |",
             "|---|---|---|---:|---:|---:|---:|"]
    for res in results:
        for dtype in ("float32", "bfloat16"):
            for row in (r for r in res["rows"] if r["dtype"] == dtype):
                star = "*" if row["first_call_only"] else ""
                sp = fmt_ratio(row["mtljax_speed_over_this"]) if "mtljax_speed_over_this" in row else "–"
                lines.append(f"| {res['label']} | {dtype} | {step_label(row)} | {row['ms']:.0f}{star} | "
                             f"{row['examples_per_s']:.1f}{star} | {row['gflops']:.0f} "
                             f"({100 * row['frac_f32_peak']:.0f} %){star} | {sp} |")
    return "\n".join(lines)


def flops_table(results: list[dict]) -> str:
    lines = ["| model | params | XLA GFLOP/step (cost analysis) | analytic GFLOP/step | XLA ÷ analytic | "
             "bf16 step GFLOP (XLA) | temp MiB f32 / bf16 | compile s f32 / bf16 | max logit diff vs torch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for res in results:
        by = {r["name"]: r for r in res["rows"]}
        f32, b16 = by.get("mtljax/float32"), by.get("mtljax/bfloat16")
        eq = res["equivalence"] or {}
        params = eq.get("params")
        lines.append("| " + " | ".join([
            res["label"],
            f"{params:,}" if params else "–",
            f"{res['xla_flops'] / 1e9:.1f}",
            f"{res['analytic_flops'] / 1e9:.1f}",
            f"{res['xla_flops'] / res['analytic_flops']:.3f}",
            f"{b16['xla_flops'] / 1e9:.1f}" if b16 else "–",
            (f"{f32['temp_mib']:.0f}" if f32 else "–") + " / " + (f"{b16['temp_mib']:.0f}" if b16 else "–"),
            (f"{f32['compile_s']:.0f}" if f32 else "–") + " / " + (f"{b16['compile_s']:.0f}" if b16 else "–"),
            f"{eq['max_abs_logit_diff']:.1e}" if "max_abs_logit_diff" in eq else "–",
        ]) + " |")
    return "\n".join(lines)


def bf16_table(results: list[dict]) -> str:
    lines = ["| model | mtljax bf16 speed ÷ f32 (min–max) | torch bf16 speed ÷ f32 (min–max) |", "|---|---:|---:|"]
    for res in results:
        b = res["bf16_speedup"]
        lines.append(f"| {res['label']} | {fmt_ratio(b['mtljax']) if 'mtljax' in b else '–'} | "
                     f"{fmt_ratio(b['torch']) if 'torch' in b else '–'} |")
    return "\n".join(lines)


def peak_table(results: list[dict]) -> str:
    names = ["xla-matmul/float32", "xla-matmul/bfloat16", "torch-matmul/float32", "torch-matmul/float32/1t",
             "torch-matmul/bfloat16"]
    lines = ["| measured during | " + " | ".join(f"{n} (n)" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for res in results:
        cells = []
        for n in names:
            p = res["peaks"].get(n)
            cells.append(f"{p['gflops']:.0f} ({p['n']})" if p else "–")
        lines.append(f"| {res['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(results: list[dict]) -> str:
    """The headline: mtljax's step against PyTorch eager with torch's default threads (and, with
    ``--cpu-devices N``, the data-parallel step over N CPU devices next to the 1-device one)."""
    multi = any("devices" in s for res in results for s in res["summary"])
    head = ["model (input, patch, tokens)", "dtype", "torch eager ms (default threads)", "mtljax ms",
            "mtljax speed ÷ torch (min–max)", "% of f32 matmul peak: mtljax / torch"]
    if multi:
        head += ["mtljax ms, N CPU devices", "N devices speed ÷ torch (min–max)", "N devices ÷ 1 device"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for res in results:
        for s in res["summary"]:
            has_torch = "torch_ms" in s
            cells = [res["label"], s["dtype"],
                     f"{s['torch_ms']:.0f} ({s['torch_threads']} threads)" if has_torch else "–",
                     f"{s['mtljax_ms']:.0f}",
                     fmt_ratio(s["mtljax_over_torch"]) if has_torch else "–",
                     f"{100 * s['mtljax_frac_f32_peak']:.0f} % / "
                     + (f"{100 * s['torch_frac_f32_peak']:.0f} %" if has_torch else "–")]
            if multi:
                if "devices" in s:
                    cells += [f"{s['multi_ms']:.0f} (N = {s['devices']})",
                              fmt_ratio(s["multi_over_torch"]) if "multi_over_torch" in s else "–",
                              fmt_ratio(s["multi_over_one_device"])]
                else:
                    cells += ["–", "–", "–"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- main
def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny ViT, batch 16, few rounds, one-flag sweep")
    p.add_argument("--cases", default=None, help=f"comma-separated VARIANT:HxWxC:pPATCH (default {DEFAULT_CASES})")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--per-round", type=int, default=None)
    p.add_argument("--max-step-s", type=float, default=30.0,
                   help="a step whose first call is slower is reported from that call only")
    p.add_argument("--cpu-devices", type=int, default=0, metavar="N",
                   help="also time the mtljax step data-parallel over N simulated CPU devices "
                        "(jax_num_cpu_devices = N; the batch must be divisible by N); default off")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch side")
    p.add_argument("--torch-threads", default="1", help="extra torch.set_num_threads values timed beside "
                   "torch's default for the f32 torch step and matmul; empty for none")
    p.add_argument("--no-sweep", action="store_true", help="skip the XLA flag sweep (xla_flags.py)")
    xla_flags.add_case_args(p)  # --batch --classes --peak-n --peak-max-s --pause
    xla_flags.add_sweep_args(p)  # --flags --flag-case --flag-dtypes --flag-reps --worker-calls
    add_host_allocator_flag(p)
    p.add_argument("--json", default=None, help="write every number here (default for full runs: "
                                                "benchmarks/results/train_step.json)")
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    apply_host_allocator(args.host_allocator)
    multi = args.cpu_devices if args.cpu_devices > 1 else 0
    if multi:  # before anything initialises JAX's backends
        jax.config.update("jax_num_cpu_devices", multi)
    q = args.quick
    xla_flags.resolve_defaults(args)
    if multi and args.batch % multi:
        p.error(f"--batch {args.batch} is not divisible by --cpu-devices {multi}")
    cases = [Case.parse(s) for s in (args.cases or ("tiny:32x32x3:p4" if q else DEFAULT_CASES)).split(",")]
    classes = [int(s) for s in args.classes.split(",")]
    dtypes = [d for d in args.dtypes.split(",") if d]
    rounds = args.rounds or (2 if q else 4)
    per_round = args.per_round or (2 if q else 2)
    json_path = args.json or (None if q else os.path.join(HERE, "results", "train_step.json"))

    torch_vit = None
    notes = []
    if not args.no_torch:
        try:
            import torch_vit_step as torch_vit
        except ImportError as e:
            notes.append(f"PyTorch side skipped: {e}")

    env = environment()
    if multi:
        env["cpu_devices"] = multi
        env["jax_devices"] = jax.device_count()
    extra_threads = []
    if torch_vit is not None:
        env.update(torch_vit.versions())
        default_threads = torch_default_threads()  # read before anything calls torch.set_num_threads
        extra_threads = [int(k) for k in args.torch_threads.split(",") if k and int(k) != default_threads]
    cmd = "python benchmarks/train_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print("# train_step benchmark")
    print(json.dumps(env))
    print(f"command: {cmd.strip()}")
    print(f"HPS ViT (pool gap, linear heads {classes}), batch {args.batch}, Adam 1e-3, equal weighting; "
          f"rounds {rounds} x {per_round} timed calls")

    t_all = time.perf_counter()
    results, torch_rates = [], {}
    for case in cases:
        print(f"\n== {case.label}", flush=True)
        cs, equiv = [], None
        model0, params0 = None, None
        for dtype in dtypes:
            c, model, params_np = mtljax_contender(case, dtype, args.batch, classes)
            print(f"   mtljax {dtype}: compiled in {c.info['compile_s']:.1f} s, "
                  f"{c.info['xla_flops'] / 1e9:.2f} GFLOP/step (XLA)", flush=True)
            cs.append(c)
            if dtype == "float32" or model0 is None:
                model0, params0 = (build_model(case.model_config("float32"), make_tasks(classes), case.shape),
                                   params_np)
            if multi:
                cm = mtljax_contender(case, dtype, args.batch, classes, devices=multi)[0]
                print(f"   mtljax {dtype} on {multi} CPU devices: compiled in {cm.info['compile_s']:.1f} s",
                      flush=True)
                cs.append(cm)
        analytic = analytic_flops(case, args.batch, classes)
        if torch_vit is not None:
            equiv = equivalence_check(case, model0, params0, torch_vit, classes, args.batch)
            print(f"   torch model: {equiv['params']:,} parameters (= mtljax), logits agree to "
                  f"{equiv['max_abs_logit_diff']:.1e}", flush=True)
            for dtype in dtypes:
                rate = torch_rates.get(dtype)  # GFLOP/s this torch step reached on an earlier case
                if rate and analytic / rate / 1e9 > args.max_step_s:
                    notes.append(f"{case.label}: torch {dtype} step skipped, predicted "
                                 f"{analytic / rate / 1e9:.0f} s/step from the {rate:.1f} GFLOP/s it reached "
                                 f"on an earlier case (> --max-step-s {args.max_step_s:g})")
                    print(f"   {notes[-1]}", flush=True)
                    continue
                cs.append(torch_contender(case, dtype == "bfloat16", params0, torch_vit, args.batch, classes))
            for k in extra_threads:
                cs.append(torch_contender(case, False, params0, torch_vit, args.batch, classes, threads=k))
        else:
            equiv = {"params": sum(int(np.size(p)) for p in jax.tree.leaves(params0))}
        cs += [xla_matmul(d, args.peak_n, args.peak_max_s) for d in dtypes]
        if torch_vit is not None:
            cs += [torch_matmul(d, args.peak_n, args.peak_max_s) for d in dtypes]
            cs += [torch_matmul("float32", args.peak_n, args.peak_max_s, threads=k) for k in extra_threads]
        measure(cs, rounds=rounds, per_round=per_round, pause=args.pause, max_step_s=args.max_step_s)
        for c in cs:
            ok = c.info.get("finite")
            if ok is not None and not ok():
                notes.append(f"{case.label} {c.name}: last step was not finite")
        results.append(case_rows(case, cs, args.batch, analytic, equiv))
        for row in results[-1]["rows"]:
            if row["framework"] == "torch" and row["default_threads"]:
                torch_rates[row["dtype"]] = row["gflops"]
        print()
        print(step_table(results[-1:]))

    if results:
        print("\n### Train step: examples/s and achieved FLOP/s\n")
        print(step_table(results))
        print("\n### FLOPs per step and compiled memory (mtljax)\n")
        print(flops_table(results))
        print("\n### Mixed precision (bf16 compute, f32 parameters): speed of the bf16 step ÷ the f32 step\n")
        print(bf16_table(results))
        print("\n### Measured matmul rates (best round median; n = matrix size)\n")
        print(peak_table(results))
        print("\n### Summary: mtljax's step ÷ PyTorch eager with torch's default threads "
              "(speed ratio, median over rounds)\n")
        print(summary_table(results))

    sweep = None
    if not args.no_sweep:
        sweep = xla_flags.run_sweep(args)
    if notes:
        print("\nnotes:")
        for n in dict.fromkeys(notes):
            print(f"- {n}")
    print(f"\ntotal wall time {time.perf_counter() - t_all:.0f} s")
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump({"env": env, "command": cmd, "cases": results, "sweep": sweep, "notes": notes}, f, indent=1)
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
