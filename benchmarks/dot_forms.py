"""The three products of a dense layer's train step, one at a time: XLA against PyTorch, per shape.

For a dense layer ``y = x W`` (``x``: ``[N, K]``, every batch and token position flattened into ``N``;
``W``: ``[K, M]``) a train step runs three products of the same FLOP count ``2·N·K·M``:

* ``NN``  forward, ``x W``;
* ``NT``  the input gradient, ``∇y Wᵀ``;
* ``TN``  the kernel gradient, ``xᵀ ∇y``: it contracts the leading (row) axis of both operands;
* ``TN-copy``  the kernel gradient with ``xᵀ`` written out first (behind an optimisation barrier, so
  that XLA does not fold the transpose back into the product): an NN product plus a copy.

Each is one jitted ``dot_general`` (XLA) or one ``torch.mm`` on transposed views (PyTorch, default
threads), timed in interleaved rounds (``common.measure``); the rate is ``2·N·K·M`` over the median.
``TN-copy``'s column says whether it equals ``TN`` bit for bit (``=``) or its largest difference
relative to the largest entry. BENCHMARKS.md's table "The kernel gradient is the slow product" is its output.

  .venv-bench/bin/python benchmarks/dot_forms.py                       # the MLP and ViT-Ti/S shapes
  .venv-bench/bin/python benchmarks/dot_forms.py --shapes 256x512x512 --rounds 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (Contender, add_host_allocator_flag, apply_host_allocator, environment, measure,  # noqa: E402
                    median_time)

# N x K x M: the tabular MLP of mtl_step.py (batch 256), ViT-Ti/S MLP and projections at 16 and 64 tokens
DEFAULT_SHAPES = ("256x64x512,256x512x512,1024x192x768,1024x768x192,1024x192x192,"
                  "4096x192x768,4096x768x192,4096x384x1536,4096x1536x384")
FORMS = ("NN", "NT", "TN", "TN-copy")


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    out = []
    for s in text.split(","):
        parts = s.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"{s!r} is not NxKxM (three positive integers)")
        out.append(tuple(int(p) for p in parts))
    return out


def xla_forms(n: int, k: int, m: int, rng):
    """``({form: (compiled, args)}, (x, w, gy))``: the four compiled products and their operands."""
    x = jnp.asarray(rng.standard_normal((n, k), np.float32))
    w = jnp.asarray(rng.standard_normal((k, m), np.float32))
    gy = jnp.asarray(rng.standard_normal((n, m), np.float32))
    fns = {"NN": (lambda a, b: a @ b, (x, w)),
           "NT": (lambda a, b: a @ b.T, (gy, w)),
           "TN": (lambda a, b: a.T @ b, (x, gy)),
           "TN-copy": (lambda a, b: lax.optimization_barrier(a.T) @ b, (x, gy))}
    out = {}
    for form, (f, args) in fns.items():
        compiled = jax.jit(f).lower(*args).compile()
        out[form] = (compiled, args)
    return out, (x, w, gy)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated NxKxM")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", default="")
    add_host_allocator_flag(ap)
    args = ap.parse_args(argv)
    try:
        shapes = parse_shapes(args.shapes)
    except ValueError as e:
        ap.error(f"--shapes: {e}")
    apply_host_allocator(args.host_allocator)
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("note: no torch here; XLA only")
    env = environment()
    if torch is not None:
        env["torch"], env["torch_threads"] = torch.__version__, torch.get_num_threads()
    print(f"command: python benchmarks/dot_forms.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(json.dumps(env))
    rng = np.random.default_rng(0)
    rows, header = [], "| N x K x M | " + " | ".join(f"{f} XLA ms (GFLOP/s)" for f in FORMS)
    header += " | TN-copy = TN? |" + (" NN / NT / TN torch GFLOP/s |" if torch is not None else "")
    print("\n" + header + "\n|" + "---|" * (header.count("|") - 1))
    for n, k, m in shapes:
        flops = 2.0 * n * k * m
        forms, (x, w, gy) = xla_forms(n, k, m, rng)
        cs = []
        for form, (compiled, a) in forms.items():
            cs.append(Contender(f"xla/{form}", "xla", "float32",
                                lambda c=compiled, a=a: jax.block_until_ready(c(*a)), flops))
        if torch is not None:
            tx, tw, tg = (torch.from_numpy(np.array(v)) for v in (x, w, gy))
            for form, f in (("NN", lambda tx=tx, tw=tw: tx @ tw), ("NT", lambda tg=tg, tw=tw: tg @ tw.T),
                            ("TN", lambda tx=tx, tg=tg: tx.T @ tg)):
                cs.append(Contender(f"torch/{form}", "torch", "float32", f, flops))
        measure(cs, rounds=args.rounds, per_round=args.per_round, log=lambda *a, **k: None)
        ms = {c.name: 1e3 * median_time(c) for c in cs}
        tn = np.asarray(forms["TN"][0](*forms["TN"][1]))
        cp = np.asarray(forms["TN-copy"][0](*forms["TN-copy"][1]))
        same = "=" if np.array_equal(tn, cp) else f"{np.max(np.abs(tn - cp)) / np.max(np.abs(tn)):.1e}"
        row = {"shape": [n, k, m], "ms": ms, "gflops": {k_: flops / v / 1e6 for k_, v in ms.items()}, "copy_equal": same}
        rows.append(row)
        cells = [f"{ms[f'xla/{f}']:.3f} ({row['gflops'][f'xla/{f}']:.0f})" for f in FORMS]
        line = f"| {n}x{k}x{m} | " + " | ".join(cells) + f" | {same} |"
        if torch is not None:
            line += " " + " / ".join(f"{row['gflops'][f'torch/{f}']:.0f}" for f in ("NN", "NT", "TN")) + " |"
        print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
