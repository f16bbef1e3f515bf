"""Shared by the benchmark scripts: interleaved timing rounds, the statistics read from them, and the
machine/environment record. Not run by itself.

A *contender* is any object with ``name``, ``run()`` (one call, blocking until done) and writable
``samples``, ``first_s`` and ``excluded`` attributes; :class:`Contender` is the one the ViT step,
matmul-peak and XLA-flag benchmarks use.
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

import jax


@dataclass
class Contender:
    name: str
    framework: str  # mtljax | torch | xla-matmul | torch-matmul
    dtype: str
    run: Callable[[], None]
    flops: float = float("nan")  # per call
    info: dict = field(default_factory=dict)
    first_s: float = float("nan")
    samples: list = field(default_factory=list)  # per round: list of seconds
    excluded: bool = False  # first call slower than --max-step-s: not timed in rounds


def measure(contenders, *, rounds: int, per_round: int, pause: float = 0.0, max_step_s: float = float("inf"),
            log=print) -> None:
    """Time every contender in ``rounds`` interleaved rounds of ``per_round`` timed calls.

    Each contender is called once first (allocations, caches; ``first_s``); one slower than
    ``max_step_s`` is marked ``excluded`` and not timed. The order rotates every round and reverses every
    other round, and a contender whose first call took under a second runs once untimed before its timed
    calls, so drifting load from other processes falls on every contender alike. ``samples`` gets one
    list of seconds per round.
    """
    for c in contenders:
        c.samples = []
        t0 = time.perf_counter()
        c.run()
        c.first_s = time.perf_counter() - t0
        c.excluded = c.first_s > max_step_s
        if c.excluded:
            log(f"    {c.name}: first call {c.first_s:.1f} s > --max-step-s {max_step_s}: not timed in rounds")
    timed = [c for c in contenders if not c.excluded]
    n = len(timed)
    for r in range(rounds):
        t_round = time.perf_counter()
        order = timed[r % n:] + timed[:r % n]
        if r % 2:
            order = order[::-1]
        for c in order:
            if pause:
                time.sleep(pause)  # let the other framework's worker threads go idle
            if c.first_s < 1.0:
                c.run()  # untimed: warm caches after the other contenders ran
            ts = []
            for _ in range(per_round):
                t0 = time.perf_counter()
                c.run()
                ts.append(time.perf_counter() - t0)
            c.samples.append(ts)
        log(f"    round {r + 1}/{rounds}: {time.perf_counter() - t_round:.1f} s", flush=True)


def memory_stats(compiled) -> dict:
    """XLA's buffer assignment of a compiled step (bytes; ``{}`` where the backend gives none)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return {}
    if m is None:
        return {}
    keys = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "generated_code_size_in_bytes", "peak_memory_in_bytes")
    return {k: int(getattr(m, k, 0) or 0) for k in keys}


def median_time(c) -> float:
    """Median of all timed calls (the first call's time for a contender kept out of the rounds)."""
    if c.excluded or not c.samples:
        return c.first_s
    return statistics.median(t for ts in c.samples for t in ts)


def speed_ratio(a, b) -> tuple[float, float, float]:
    """Speed of a relative to b (time of b / time of a): median over rounds of the ratio of round
    medians, min, max."""
    if a.excluded or b.excluded:
        r = b.first_s / a.first_s
        return r, r, r
    rs = [statistics.median(y) / statistics.median(x) for x, y in zip(a.samples, b.samples)]
    return statistics.median(rs), min(rs), max(rs)


def fmt_ratio(r) -> str:
    return f"{r[0]:.2f} ({r[1]:.2f}–{r[2]:.2f})"


def add_host_allocator_flag(parser, default: str | None = "retain") -> None:
    """``--host-allocator``: ``config.dist.host_allocator`` (``mtljax.parallel.host``) for the whole
    benchmark process, the PyTorch peer's allocations too. ``default``: what the configs of the
    benchmarked model use (``retain`` for the ViTs and MoE layers, ``system`` for the MLP)."""
    parser.add_argument("--host-allocator", default=default, choices=("retain", "system"),
                        help="retain: keep freed host memory for the next step (no page faults on a step "
                             "buffer above 32 MiB); system: glibc's defaults" + (f" (default {default})" if default else ""))


def apply_host_allocator(choice: str) -> bool:
    """Apply ``--host-allocator``; call before JAX runs anything (``mtljax.parallel.host``)."""
    from mtljax.parallel.host import configure

    _HOST["allocator"] = choice
    _HOST["retained"] = configure(choice)
    return _HOST["retained"]


_HOST: dict = {}


def environment(packages=("jaxlib", "flax", "optax")) -> dict:
    """Date, versions, CPU model and SIMD flags, XLA flags and load average, for a results file."""
    env = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "python": platform.python_version(), "jax": jax.__version__, "jax_backend": jax.default_backend(),
           "cores": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
           "host_allocator": _HOST.get("allocator", "system"), "host_memory_retained": _HOST.get("retained", False)}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                env["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("Flags:"):
                flags = line.split(":", 1)[1].split()
                env["cpu_simd"] = [f for f in flags if f.startswith(("avx", "fma", "amx"))]
    except (OSError, subprocess.SubprocessError):
        pass
    for pkg in packages:
        try:
            env[pkg] = importlib.import_module(pkg).__version__
        except Exception:  # noqa: BLE001
            pass
    try:
        env["load_avg_at_start"] = os.getloadavg()
    except OSError:
        pass
    return env
