"""``mtljax.parallel.host``: freed host memory stays with the process, read from the kernel's own
page-fault counter, in a fresh process (the settings must come before JAX starts)."""

import json
import subprocess
import sys

import jax
import pytest

from mtljax.config import ConfigError
from mtljax.parallel import host

# A jitted function whose 64 MiB output is a fresh buffer every call, called twelve times on one input and
# twelve times on a fresh copy of its input; the minor page faults of each call are what the kernel
# counted for the process (its pages: 16,384).
_PROBE = r"""
import json, resource, sys
from mtljax.parallel import host
applied = host.configure(sys.argv[1])
import jax, jax.numpy as jnp, numpy as np
x = jnp.ones((4096, 4096), jnp.float32)
f = jax.jit(lambda x: jnp.tanh(x) * 2.0 + 1.0)
f(x).block_until_ready()
faults, fresh = [], []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = f(x)
    y.block_until_ready()
    del y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
src = np.ones((4096, 4096), np.float32)
for _ in range(12):  # a fresh input each call, as the trainer's batches (waited for by host.settle)
    z = host.settle(jax.device_put(src))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = f(z)
    y.block_until_ready()
    del y, z
    fresh.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults, "fresh": fresh,
                  "async": jax.config.values["jax_cpu_enable_async_dispatch"]}))
"""


def _probe(setting):
    out = subprocess.run([sys.executable, "-c", _PROBE, setting], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retained_memory_is_not_faulted_in_again():
    pages = (64 << 20) // 4096
    system, retain = _probe("system"), _probe("retain")
    assert system["applied"] is False and system["async"] is True
    assert retain["applied"] is True and retain["async"] is False  # steps run in the calling thread
    # glibc's defaults: a fresh mmap per buffer, so every call faults in all its pages again
    assert all(f >= 0.9 * pages for f in system["faults"]), system
    # retained: the heap grows until it holds the buffers in flight, then their pages are reused. How many
    # are in flight at once depends on when the runtime gets round to freeing the last output (under load
    # a later call may find the one before still held), so count the calls that grew the heap: a few at
    # most, where the system allocator faults in every call's pages.
    for calls in ("faults", "fresh"):
        grew = [f >= 0.5 * pages for f in retain[calls]]
        assert sum(grew) <= len(grew) // 2, retain
        assert sum(retain[calls]) <= 0.5 * sum(system[calls]), (retain, system)
    assert all(f >= 0.9 * pages for f in system["fresh"]), system


def test_settings():
    with pytest.raises(ConfigError) as err:
        host.configure("retian")
    assert str(err.value) == "config.dist.host_allocator: must be one of 'retain', 'system', got 'retian'"
    assert host.configure("system") is False


def test_settle_waits_only_when_memory_is_retained(monkeypatch):
    x = {"a": jax.numpy.ones(3)}
    monkeypatch.setattr(host, "_applied", False)
    assert host.settle(x) is x
    monkeypatch.setattr(host, "_applied", True)
    assert host.settle(x) is x and x["a"].is_ready()
