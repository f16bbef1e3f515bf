"""Multi-process start-up: ``jax.distributed.initialize()`` when launched as several processes.

On TPU pods (and SLURM / Open MPI clusters) JAX discovers the coordinator itself; elsewhere set
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. Single-process runs skip it.
"""

from __future__ import annotations

import os

import jax

_ENV_HINTS = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def maybe_initialize(force: bool = False) -> bool:
    """Initialise the distributed runtime if this looks like a multi-process launch."""
    if jax.distributed.is_initialized():
        return True
    multi = force or os.environ.get("MTLJAX_DISTRIBUTED") == "1"
    multi = multi or any(os.environ.get(k) for k in _ENV_HINTS[:1])
    if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
        multi = True
    if not multi:
        return False
    jax.distributed.initialize()
    return True
