"""What mixed precision buys: the HPS ViT train step in float32, bfloat16 and float16 compute, interleaved.

Each step is ``vit_case.mtljax_contender`` (the step of ``benchmarks/train_step.py``): parameters and
Adam state float32, ``config.model.dtype`` the compute dtype; float16 runs with dynamic loss scaling
(``config.train.loss_scale='auto'``, :mod:`mtljax.optim.loss_scale`), bfloat16 without. Also with
``--cpu-devices N``: every dtype data parallel over N CPU devices. Reported per case: ms per step,
speed relative to float32 (median of per-round ratios, ``benchmarks/common.py``), XLA's temporary
memory of the compiled step, and the loss after the timed steps (all start from the same parameters
and batch, so the three should agree to a few digits; a float16 step skipped for overflow shows in
the loss-scale column).

  python benchmarks/precision.py                                   # ViT-Ti, 16 and 64 tokens, this machine
  python benchmarks/precision.py --cases S:32x32x3:p4 --rounds 3   # ViT-S, 64 tokens
  python benchmarks/precision.py --cases B:32x32x3:p4 --batch 256  # on a GPU

On a CPU without native bfloat16/float16 arithmetic (AVX2) XLA converts around float32 kernels, so
expect no gain there; GPUs and TPUs run both at their 16-bit rates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DTYPES = ("float32", "bfloat16", "float16")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="Ti:16x16x1:p4,Ti:32x32x3:p4", help="VARIANT:HxWxC:pPATCH, comma-separated")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--per-round", type=int, default=2)
    ap.add_argument("--cpu-devices", type=int, default=1)
    ap.add_argument("--json", default="")
    from common import add_host_allocator_flag, apply_host_allocator

    add_host_allocator_flag(ap)
    args = ap.parse_args(argv)
    apply_host_allocator(args.host_allocator)
    dtypes = [d for d in args.dtypes.split(",") if d]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or "float32" not in dtypes:
        ap.error(f"--dtypes: choose from {list(DTYPES)}, float32 included (the reference), got {args.dtypes!r}")
    import jax

    if args.cpu_devices > 1:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    from common import environment, measure, median_time, speed_ratio
    from vit_case import Case, mtljax_contender

    print(f"command: python benchmarks/precision.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"device: {jax.devices()[0].device_kind} x {args.cpu_devices}; jax {jax.__version__}")
    out = {"env": environment(), "cases": []}
    print("\n| case | compute dtype | ms/step | speed ÷ float32 (min–max) | temp MiB | loss after | loss scale |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for spec in args.cases.split(","):
        case = Case.parse(spec)
        cs = [mtljax_contender(case, d, args.batch, [10, 10, 19], devices=args.cpu_devices)[0] for d in dtypes]
        for c, d in zip(cs, dtypes):
            c.name = d
        measure(cs, rounds=args.rounds, per_round=args.per_round, log=lambda *a, **k: None)
        ref = cs[0]
        for c in cs:
            m = jax.device_get(c.box["metrics"])
            r = speed_ratio(c, ref) if c is not ref else (1.0, 1.0, 1.0)
            row = {"case": case.label, "dtype": c.name, "ms": 1e3 * median_time(c), "vs_float32": r,
                   "temp_mib": c.info["memory"].get("temp_size_in_bytes", 0) / 2 ** 20, "loss": float(m["loss"]),
                   "loss_scale": float(m["aux"].get("loss_scale", float("nan")))}
            out["cases"].append(row)
            scale = "" if c.name != "float16" else f"{row['loss_scale']:g}"
            print(f"| {case.label} | {c.name} | {row['ms']:.0f} | {r[0]:.2f} ({r[1]:.2f}–{r[2]:.2f}) | "
                  f"{row['temp_mib']:.0f} | {row['loss']:.4f} | {scale} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
