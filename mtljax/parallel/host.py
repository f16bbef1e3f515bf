"""The host's memory allocator: keep freed memory for the next step instead of handing it back.

XLA:CPU allocates one temporary buffer per execution of a compiled step (the activations, the
gradients: 234 MiB for the ViT-Ti step of ``benchmarks/train_step.py`` at 16 tokens, about 1 GiB at
64 tokens) and frees it when the step ends. glibc's ``malloc`` serves a request that large from a
fresh ``mmap`` and returns it with ``munmap`` on ``free`` (above 32 MiB, its largest threshold,
always; in the per-thread arenas of XLA's executing threads even with ``M_MMAP_MAX=0``), so every step
starts on untouched pages: the kernel zero-fills each 4 KiB page on its first write. Measured on the
2-core CPU of BENCHMARKS.md, the ViT-Ti step took 59,000 page faults and 0.10–0.15 s of kernel time per
step at 16 tokens, 260,000 and 0.5 s at 64 tokens, with the matrix products in between running at one
core's speed.

:func:`retain_freed_memory` makes the memory stay with the process. It sets glibc's ``mallopt`` to
no ``mmap`` for large blocks (``M_MMAP_MAX=0``) and no trimming of the heap's top
(``M_TRIM_THRESHOLD=-1``, which glibc reads as the largest size; with 2³¹−1, the largest ``int``, a
buffer above 2 GiB was still handed back and faulted in again every time), and it turns JAX's
asynchronous CPU dispatch off (``jax_cpu_enable_async_dispatch``), so that a step runs in the thread
that calls it and its buffer comes from that thread's heap, which grows with ``brk``: the per-thread
arenas of JAX's worker threads cannot hold a block above 64 MiB and ``mmap`` it whatever the settings.
The trainer also waits for each batch it puts on the device (:func:`settle`): a step whose input is
still being copied is deferred to a worker thread all the same. The next step's buffer then reuses the
last one's pages: no faults, the same results (only where the bytes live, and which thread runs the
step, change). The cost: the process keeps its peak heap until it exits, as a caching allocator does,
and a step no longer overlaps the Python code that follows its call.
(Routing every thread to the main arena instead, ``M_ARENA_MAX=1``, also removed the faults, but its
shared lock made the ViT-Ti steps 4–9 % slower than this.)

**When it pays.** Only steps whose buffer is above glibc's largest ``mmap`` threshold (32 MiB) fault
every step; smaller ones already reuse the heap. Measured (BENCHMARKS.md, "Host memory kept between
steps"): the quickstart's ViT run 76 → 53–61 s, the ViT steps 0.76–0.92× → 0.90–1.01× torch's speed,
the MoE layer at D = 64 1.7× faster, UPGrad with 10 tasks 1.35–1.46× faster; small MLP steps unchanged,
but a whole run of them (MultiTab, 1,500 steps) 4–15 % slower: without async dispatch its Python loop
no longer runs beside the step. So it is a choice per config, not a default:
``config.dist.host_allocator='retain'`` (every ViT config that runs on the bundled data sets it: 200-step
runs 14–32 % less time), ``'system'`` (the default) leaves glibc as it is.

Call it before JAX runs anything: :class:`mtljax.trainer.experiment.Experiment` applies the setting
before anything touches a device. Outside glibc (macOS, musl) it does nothing. Code that runs steps
without the trainer calls :func:`retain_freed_memory` first thing (and passes each batch it puts on
the device through :func:`settle`), or starts Python with the same settings in the environment:
``JAX_CPU_ENABLE_ASYNC_DISPATCH=false GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776``.
"""

from __future__ import annotations

import ctypes
import sys

import jax

from mtljax.config import ConfigError

CHOICES = ("retain", "system")
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h
_TRIM_THRESHOLD = -1  # mallopt takes an int; glibc stores it as a size_t: the largest size, never trim
_applied = False


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory in the process (see the module docstring); True when it did (or had
    already), False where the C library has no ``mallopt`` that takes these settings."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl's mallopt ignores these settings
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
    if ok:  # run each step in the calling thread, whose heap keeps the step buffer (see the module docstring)
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    _applied = ok
    return ok


def settle(tree):
    """``tree`` (arrays just put on a device), waited for when freed memory is retained; as it is otherwise.

    With async dispatch off, a step still does not run in the calling thread when one of its inputs is
    not yet defined: PjRt then defers the execution to a worker thread, which takes the step buffer from
    its own arena by ``mmap`` (the faults are back). A batch just copied to the device is such an input
    (the host-to-device copy runs on a worker): measured on M³ViT's digits run, 74 of 80 steps were
    deferred so, none after waiting for the batch. The step would wait for it anyway.
    """
    if _applied:
        jax.block_until_ready(tree)
    return tree


def configure(setting) -> bool:
    """Apply ``config.dist.host_allocator`` (``'retain'`` | ``'system'``); True when freed memory is
    now retained."""
    if setting not in CHOICES:
        raise ConfigError(f"must be one of {', '.join(map(repr, CHOICES))}, got {setting!r}", "dist.host_allocator")
    return setting == "retain" and retain_freed_memory()
