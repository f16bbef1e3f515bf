"""``mtljax.parallel.host``: freed host memory stays with the process, read from the kernel's own
page-fault counter, in a fresh process (the settings must come before any thread allocates)."""

import json
import subprocess
import sys

import pytest

from mtljax.config import ConfigError
from mtljax.parallel import host

# A worker thread (as XLA's executor threads are) allocates, writes and frees a 64 MiB buffer five
# times; the minor page faults of each round are what the kernel counted for the process.
_PROBE = r"""
import ctypes, json, resource, sys, threading
from mtljax.parallel import host
applied = host.configure(sys.argv[1])
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
faults = []
def rounds():
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(64 << 20)
        ctypes.memset(p, 1, 64 << 20)
        libc.free(p)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=rounds)
t.start(); t.join()
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _probe(setting):
    out = subprocess.run([sys.executable, "-c", _PROBE, setting], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retained_memory_is_not_faulted_in_again():
    pages = (64 << 20) // 4096
    system, retain = _probe("system"), _probe("retain")
    assert system["applied"] is False and retain["applied"] is True
    # glibc's default: a fresh mmap per buffer, so every round faults in all its pages again
    assert all(f >= 0.9 * pages for f in system["faults"]), system
    # retained: the first round faults the pages in, the later ones reuse them
    assert retain["faults"][0] >= 0.9 * pages, retain
    assert all(f < 0.05 * pages for f in retain["faults"][1:]), retain


def test_settings():
    with pytest.raises(ConfigError) as err:
        host.configure("retian")
    assert str(err.value) == "config.dist.host_allocator: must be one of 'retain', 'system', got 'retian'"
    assert host.configure("system") is False
