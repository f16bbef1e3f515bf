"""This machine's matmul rate: square ``n × n`` matmuls (default n = 2048) in XLA (``jax.jit(a @ b)``)
and in PyTorch (``torch.mm``; default threads, plus ``--torch-threads`` extras such as one thread),
float32 and bfloat16, timed in interleaved rounds. A rate is ``2·n³`` FLOPs over the best round
median (the peak is what the machine can do, load permitting). A matmul whose first call takes
longer than ``--max-s`` is measured at n/2 (then n/4 ...) and the size used is reported (torch's
bf16 matmul on a CPU without AVX-512-BF16 is that slow).

``train_step.py`` imports :func:`xla_matmul` and :func:`torch_matmul` and times them in the same
rounds as the train steps, so a step's FLOP/s can be read as a fraction of the measured f32 peak;
``xla_flags.py`` times :func:`xla_matmul` under each XLA flag setting. Run alone:

  .venv-bench/bin/python benchmarks/matmul_peak.py --quick     # n = 512, 2 rounds, seconds
  .venv-bench/bin/python benchmarks/matmul_peak.py             # n = 2048, 4 rounds
  .venv-bench/bin/python benchmarks/matmul_peak.py --no-torch  # XLA only (the plain dev venv is enough)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Contender, environment, measure  # noqa: E402


def shrink_to(first_call: Callable[[int], float], n: int, max_s: float) -> tuple[int, float]:
    """Largest n / 2^k (>= 256) whose first timed call takes <= max_s seconds."""
    while True:
        t = first_call(n)
        if t <= max_s or n <= 256:
            return n, t
        n //= 2


def xla_matmul(dtype: str, n: int, max_s: float) -> Contender:
    dt = jnp.dtype(dtype)
    state = {}
    f = jax.jit(lambda a, b: a @ b)

    def setup(m):
        key = jax.random.PRNGKey(0)
        a = jax.random.normal(key, (m, m), jnp.float32).astype(dt)
        b = jax.random.normal(jax.random.fold_in(key, 1), (m, m), jnp.float32).astype(dt)
        f(a, b).block_until_ready()  # compile
        state.update(a=a, b=b)
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        return time.perf_counter() - t0

    n, t = shrink_to(setup, n, max_s)

    def run():
        f(state["a"], state["b"]).block_until_ready()

    return Contender(f"xla-matmul/{dtype}", "xla-matmul", dtype, run, flops=2.0 * n ** 3, info={"n": n})


def torch_default_threads() -> int:
    """PyTorch's own default intra-op thread count (physical cores, or ``OMP_NUM_THREADS``), read once
    before anything here calls ``torch.set_num_threads``."""
    global _TORCH_DEFAULT_THREADS
    if _TORCH_DEFAULT_THREADS is None:
        import torch

        _TORCH_DEFAULT_THREADS = torch.get_num_threads()
    return _TORCH_DEFAULT_THREADS


_TORCH_DEFAULT_THREADS: int | None = None


def torch_matmul(dtype: str, n: int, max_s: float, threads: int | None = None) -> Contender:
    """``threads``: ``torch.set_num_threads`` before every call (default: torch's default count)."""
    import torch

    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    nthreads = threads or torch_default_threads()
    state = {}

    def setup(m):
        torch.set_num_threads(nthreads)
        g = torch.Generator().manual_seed(0)
        a = torch.randn(m, m, generator=g).to(dt)
        b = torch.randn(m, m, generator=g).to(dt)
        torch.mm(a, b)
        state.update(a=a, b=b)
        t0 = time.perf_counter()
        torch.mm(a, b)
        return time.perf_counter() - t0

    n, t = shrink_to(setup, n, max_s)

    def run():
        if torch.get_num_threads() != nthreads:
            torch.set_num_threads(nthreads)
        torch.mm(state["a"], state["b"])

    name = f"torch-matmul/{dtype}" + (f"/{threads}t" if threads else "")
    return Contender(name, "torch-matmul", dtype, run, flops=2.0 * n ** 3, info={"n": n, "threads": nthreads})


def peak_rate(c: Contender) -> float:
    """Matmul GFLOP/s: best round median (the peak is what the machine can do, load permitting)."""
    if c.excluded or not c.samples:
        return c.flops / c.first_s / 1e9
    return c.flops / min(statistics.median(ts) for ts in c.samples) / 1e9


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="n = 512, 2 rounds")
    p.add_argument("--n", type=int, default=None, help="matrix size (default 2048; quick 512)")
    p.add_argument("--max-s", type=float, default=1.0, help="halve n until a call takes at most this long")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--per-round", type=int, default=2)
    p.add_argument("--torch-threads", default="1", help="extra torch.set_num_threads values timed beside "
                   "torch's default for the f32 matmul; empty for none")
    p.add_argument("--no-torch", action="store_true", help="XLA only")
    p.add_argument("--json", default=None, help="write the rates here")
    args = p.parse_args(argv)
    n = args.n or (512 if args.quick else 2048)
    rounds = args.rounds or (2 if args.quick else 4)
    dtypes = [d for d in args.dtypes.split(",") if d]
    env = environment()
    cs = [xla_matmul(d, n, args.max_s) for d in dtypes]
    if not args.no_torch:
        try:
            import torch
        except ImportError as e:
            print(f"note: torch skipped: {e}")
        else:
            default = torch_default_threads()
            env.update(torch=torch.__version__, torch_threads=default)
            extra = [int(k) for k in args.torch_threads.split(",") if k and int(k) != default]
            cs += [torch_matmul(d, n, args.max_s) for d in dtypes]
            cs += [torch_matmul("float32", n, args.max_s, threads=k) for k in extra]
    print("# matmul_peak benchmark")
    print(json.dumps(env))
    measure(cs, rounds=rounds, per_round=args.per_round, pause=0.05)
    print("\n| matmul | n | threads | GFLOP/s (best round median) | ms (median) |\n|---|---:|---:|---:|---:|")
    rates = {}
    for c in cs:
        rates[c.name] = {"n": c.info["n"], "gflops": peak_rate(c), "threads": c.info.get("threads")}
        ms = 1e3 * statistics.median(t for ts in c.samples for t in ts) if c.samples else 1e3 * c.first_s
        threads = c.info.get("threads") or "XLA pool"
        print(f"| {c.name} | {c.info['n']} | {threads} | {rates[c.name]['gflops']:.0f} | {ms:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rates": rates}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
