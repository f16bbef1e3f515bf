"""Shared by the benchmark scripts: interleaved timing rounds and the machine/environment record.

A *contender* is any object with ``name``, ``run()`` (one call, blocking until done) and writable
``samples``, ``first_s`` and ``excluded`` attributes.
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import subprocess
import time

import jax


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


def environment(packages=("jaxlib", "flax", "optax")) -> dict:
    """Date, versions, CPU model and SIMD flags, XLA flags and load average, for a results file."""
    env = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "python": platform.python_version(), "jax": jax.__version__, "jax_backend": jax.default_backend(),
           "cores": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", "")}
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
