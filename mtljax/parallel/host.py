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

:func:`retain_freed_memory` sets glibc's ``mallopt`` so that the memory stays with the process:
one arena (``M_ARENA_MAX=1``, so every thread allocates from the heap that can grow without ``mmap``),
no ``mmap`` for large blocks (``M_MMAP_MAX=0``) and no trimming of the heap's top
(``M_TRIM_THRESHOLD=-1``, which glibc reads as the largest size; with 2³¹−1, the largest ``int``, a
buffer above 2 GiB was still handed back and faulted in again every time). The next step's buffer
then reuses the last one's pages: no faults, the same results (only where the bytes live changes).
The cost: the process keeps its peak heap until it exits, as a caching allocator does, and all
threads share one arena's lock.

**When it pays.** Only steps whose buffer is above glibc's largest ``mmap`` threshold (32 MiB) fault
every step; smaller ones already reuse the heap. For those, the one arena costs: its lock is shared by
XLA's executor threads. Measured (BENCHMARKS.md, "Host memory kept between steps"): the quickstart's
ViT run 76 → 63–71 s, ViT steps 1.13–1.19× faster, the MoE layer at D = 64 1.6× faster, UPGrad at
parameter level with 10 tasks 1.18× faster; but the MultiTab MLP run (7 tasks, 512-wide) 13.3 →
17.5 s, and its 3-task steps 7–25 % slower. So it is a choice per config, not a default:
``config.dist.host_allocator='retain'`` (``configs/default.py`` sets it), ``'system'`` (the default)
leaves glibc as it is.

It must run before JAX starts its thread pools (threads that already allocated keep their arena, and
a late call changes nothing: measured), so :class:`mtljax.trainer.experiment.Experiment` applies the
setting before anything touches a device. Outside glibc (macOS, musl) it does nothing. Code that runs
steps without the trainer calls :func:`retain_freed_memory` first thing, or starts Python with the
same settings in the environment:
``GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776``.
"""

from __future__ import annotations

import ctypes
import sys

from mtljax.config import ConfigError

CHOICES = ("retain", "system")
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
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
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
    _applied = ok
    return ok


def configure(setting) -> bool:
    """Apply ``config.dist.host_allocator`` (``'retain'`` | ``'system'``); True when freed memory is
    now retained."""
    if setting not in CHOICES:
        raise ConfigError(f"must be one of {', '.join(map(repr, CHOICES))}, got {setting!r}", "dist.host_allocator")
    return setting == "retain" and retain_freed_memory()
