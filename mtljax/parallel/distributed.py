"""Multi-process start-up and liveness: one process per host (or per GPU), all running the same command.

``initialize(config.dist)`` decides, before JAX touches a device, whether this process is one of several
and, if so, calls ``jax.distributed.initialize`` with every setting made explicit. The settings come from,
in order (the first that gives a value wins)::

    --config.dist.coordinator / num_processes / process_id / local_device_ids   (the command line)
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID / JAX_LOCAL_DEVICE_IDS   (the environment)
    the cluster the process runs in: a multi-host Cloud TPU slice (TPU_WORKER_HOSTNAMES), SLURM
    (SLURM_JOB_ID + SLURM_NTASKS > 1), Open MPI (OMPI_COMM_WORLD_SIZE > 1) or a Kubernetes indexed Job
    (JOB_COMPLETION_INDEX; needs ``pip install 'jax[k8s]'``), left to JAX's own detection.

One process (no setting, or ``num_processes=1`` with no coordinator) skips it; ``mtljax launch --local=1``
gives one process that runs its collectives as several processes do (over gloo on CPU: sums then match a
multi-process run's bit for bit, while JAX's in-process collectives sum in another order). Giving some explicit settings but not all is a
one-line :class:`~mtljax.config.ConfigError` naming the missing key. On CPU the processes' collectives
run over gloo, and ``config.dist.cpu_devices`` sets how many (simulated) CPU devices each process has.

A process that dies (killed, out of memory, a lost host) stops sending heartbeats; after
``config.dist.heartbeat_timeout`` seconds the coordination service declares it dead. A watchdog thread in
every process polls the service each second and, when a peer is gone, prints one line naming it and
ends this process with exit status 1, so no process hangs in a collective or at the shutdown barrier.
Checkpoints written so far stay intact (orbax renames a step into place only when every process has
written it). A collective that fails first (gloo notices a closed connection at once) ends the same way,
and so does JAX's coordination client when it would abort the process (it does when the service reports
a dead peer, or cannot be reached): its error callback, and a SIGABRT handler as the last resort, print
the one line instead of a C++ stack dump (JAX's own log lines before it cannot be silenced).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import os
import re
import sys
import threading
import time

import jax

from mtljax.config import ConfigError

ENV = {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID", "local_device_ids": "JAX_LOCAL_DEVICE_IDS"}
LOST_PEER_EXIT = 1
_heartbeat_timeout = 20


@dataclasses.dataclass(frozen=True)
class Plan:
    """How this process joins a multi-process run: explicit settings, or a cluster JAX detects."""
    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    local_device_ids: tuple[int, ...] | None
    cluster: str  # "explicit" | "tpu" | "slurm" | "openmpi" | "k8s"


def _int(value, key: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"must be an integer, got {value!r}", f"dist.{key}") from None


def detect_cluster(environ=None) -> str | None:
    """The multi-process cluster this process was started in, from its environment, or None."""
    env = os.environ if environ is None else environ
    if env.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0 or int(env.get("MEGASCALE_NUM_SLICES", "1") or 1) > 1:
        return "tpu"
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "openmpi"
    if env.get("JOB_COMPLETION_INDEX") is not None and env.get("KUBERNETES_SERVICE_HOST"):
        return "k8s"
    return None


def plan(dist, environ=None) -> Plan | None:
    """This process's :class:`Plan` from ``config.dist`` and the environment; None for one process."""
    env = os.environ if environ is None else environ
    given = {
        "coordinator": dist.coordinator or env.get(ENV["coordinator"]) or None,
        "num_processes": dist.num_processes or env.get(ENV["num_processes"]) or None,
        "process_id": dist.process_id if dist.process_id >= 0 else env.get(ENV["process_id"]),
        "local_device_ids": dist.local_device_ids or env.get(ENV["local_device_ids"]) or None,
    }
    if given["num_processes"] is not None:
        given["num_processes"] = _int(given["num_processes"], "num_processes")
        if given["num_processes"] < 1:
            raise ConfigError(f"must be >= 1, got {given['num_processes']}", "dist.num_processes")
        if given["num_processes"] == 1 and not given["coordinator"]:
            return None  # (with a coordinator, one process still runs its collectives like N processes)
    if given["process_id"] not in (None, ""):
        given["process_id"] = _int(given["process_id"], "process_id")
    else:
        given["process_id"] = 0 if given["num_processes"] == 1 else None
    ids = given["local_device_ids"]
    if ids is not None:
        ids = tuple(_int(i, "local_device_ids") for i in str(ids).replace(" ", "").split(",") if i != "")
    cluster = detect_cluster(env)
    explicit = [k for k in ("coordinator", "num_processes", "process_id") if given[k] is not None]
    if explicit and cluster is None and len(explicit) < 3:
        missing = [k for k in ("coordinator", "num_processes", "process_id") if given[k] is None][0]
        raise ConfigError(f"is not set but {' and '.join('dist.' + k for k in explicit)} "
                          f"{'is' if len(explicit) == 1 else 'are'}: a multi-process run "
                          f"needs all three (or the environment variable {ENV[missing]})", f"dist.{missing}")
    if not explicit and cluster is None:
        return None
    n, i = given["num_processes"], given["process_id"]
    if n is not None and i is not None and not 0 <= i < n:
        raise ConfigError(f"must be in [0, {n}) for {n} processes, got {i}", "dist.process_id")
    return Plan(given["coordinator"], n, i, ids, "explicit" if len(explicit) == 3 else cluster)


def initialize(dist) -> bool:
    """Join the multi-process run described by ``config.dist`` and the environment (see the module
    docstring); False when this is the only process. Call before anything touches a JAX device."""
    if jax.distributed.is_initialized():
        return True
    if dist.cpu_devices:
        n = _int(dist.cpu_devices, "cpu_devices")
        if n != jax.config.jax_num_cpu_devices:
            try:
                jax.config.update("jax_num_cpu_devices", n)
            except RuntimeError:  # JAX already chose its devices in this process
                raise ConfigError(f"cannot become {n} once JAX has started in this process; set it before "
                                  "anything runs (the command line does), or use JAX_NUM_CPU_DEVICES",
                                  "dist.cpu_devices") from None
    p = plan(dist)
    if p is None:
        return False
    for key in ("heartbeat_timeout", "init_timeout"):
        if _int(dist[key], key) < 1:
            raise ConfigError(f"must be >= 1 second, got {dist[key]}", f"dist.{key}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    with _on_service_error(_service_error):
        jax.distributed.initialize(
            coordinator_address=p.coordinator, num_processes=p.num_processes, process_id=p.process_id,
            local_device_ids=list(p.local_device_ids) if p.local_device_ids else None,
            initialization_timeout=int(dist.init_timeout), heartbeat_timeout_seconds=int(dist.heartbeat_timeout))
    _catch_abort()
    global _heartbeat_timeout
    _heartbeat_timeout = int(dist.heartbeat_timeout)
    Watchdog(_heartbeat_timeout).start()
    atexit.register(_stop_watchdog)  # runs before JAX's own exit handler (registered at import) shuts down
    return True


@contextlib.contextmanager
def _on_service_error(callback):
    """While JAX creates its coordination-service client, give it ``callback`` for the errors the service
    reports (a peer that stopped sending heartbeats): JAX's default aborts the process with a C++ stack
    dump. Private API: when it is not there, the :class:`Watchdog` alone reports lost peers."""
    from jax._src import distributed as jd

    lib = getattr(jd, "_jax", None)
    make = getattr(lib, "get_distributed_runtime_client", None)
    if make is None or "missed_heartbeat_callback" not in (make.__doc__ or ""):
        yield
        return
    lib.get_distributed_runtime_client = functools.partial(make, missed_heartbeat_callback=callback)
    try:
        yield
    finally:
        lib.get_distributed_runtime_client = make


def _service_error(status=None) -> None:
    """The coordination service reported an error: name the processes it lists as gone, and exit."""
    text = str(status)
    match = re.search(r"stopped sending heartbeats\)?:?\s*([\d,\s]+)", text)
    if match and match.group(1).strip():
        gone = ", ".join(x for x in re.split(r"[,\s]+", match.group(1).strip()) if x)
        lost_peer(f"process {gone} of {jax.process_count()} stopped (no heartbeat for {_heartbeat_timeout} s)")
    lost_peer(f"the coordination service reported an error ({_first_line(text)})")


_abort_handler = None  # kept alive: the C signal handler calls it
_poll_now = threading.Event()  # asks the watchdog to poll at once
_stopping = threading.Event()  # the process is exiting normally: the watchdog polls no more


def _stop_watchdog() -> None:
    """At a normal exit, before JAX shuts the coordination service (process 0) and its client down: tell
    the watchdog that a failed poll from now on is the shutdown, not a lost peer (else a finished run could
    end with "the coordinator is unreachable" and exit status 1). It does not wait for a poll in flight:
    a poll can wait for the other processes' polls, which may have stopped already (waiting for it here
    kept process 0 from JAX's shutdown barrier until that timed out)."""
    _stopping.set()


def _catch_abort() -> None:
    """When a peer dies, JAX's coordination client may abort this process from one of its threads
    (SIGABRT after a C++ error, e.g. when process 0 is gone and the service is unreachable). Turn that into
    the one-line exit of :func:`lost_peer`. Linux/macOS only; elsewhere nothing changes."""
    global _abort_handler
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None)
        handler_type = ctypes.CFUNCTYPE(None, ctypes.c_int)

        me, count = jax.process_index(), jax.process_count()
        if count == 2:
            who = f"process {1 - me} of 2{' (the coordinator)' if me else ''} stopped or became unreachable"
        else:
            who = "the JAX distributed runtime aborted, most likely another process stopped"
        line = (f"error: {who}; process {me} exits too. Checkpoints already written are intact: rerun the same "
                "command on every host to resume\n").encode()

        def on_abort(signum):  # in the aborting thread: let the watchdog name the lost process, if it can
            del signum
            _poll_now.set()
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:  # the watchdog exits the process when it finds the lost one
                time.sleep(0.05)
            os.write(2, line)
            os._exit(LOST_PEER_EXIT)

        _abort_handler = handler_type(on_abort)
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = [ctypes.c_int, handler_type]
        libc.signal(signal.SIGABRT, _abort_handler)
    except (OSError, AttributeError):
        pass


def _client():
    from jax._src import distributed as jd  # the coordination-service client (no public accessor)

    return jd.global_state.client


class Watchdog(threading.Thread):
    """Polls the coordination service once a second; when a process is gone, says which in one line
    and ends this process (exit status 1) instead of letting it hang in a collective."""

    def __init__(self, heartbeat_timeout: int, interval: float = 1.0):
        super().__init__(name="mtljax-peer-watchdog", daemon=True)
        self.heartbeat_timeout, self.interval = heartbeat_timeout, interval
        self.count = jax.process_count()

    def run(self):
        client, everyone = _client(), list(range(self.count))
        while True:
            _poll_now.wait(self.interval)
            _poll_now.clear()
            if _stopping.is_set():
                return
            try:
                live = client.get_live_nodes(everyone)
            except Exception as e:  # the coordinator (process 0) is unreachable
                if _stopping.is_set():
                    return
                lost_peer(f"process 0 of {self.count} (the coordinator) is unreachable ({_first_line(e)})")
            if _stopping.is_set():
                return
            gone = [i for i in everyone if i not in live]
            if gone:
                lost_peer(f"process {', '.join(map(str, gone))} of {self.count} stopped (no heartbeat for "
                          f"{self.heartbeat_timeout} s)")


def lost_peer(what: str) -> None:
    """Print the one line for a lost peer and end this process at once (no shutdown barrier to hang on)."""
    me = jax.process_index() if jax.distributed.is_initialized() else 0
    sys.stdout.flush()
    print(f"error: {what}; process {me} exits too. Checkpoints already written are intact: rerun the same "
          "command on every host to resume", file=sys.stderr, flush=True)
    os._exit(LOST_PEER_EXIT)


def explain_collective_failure(error: BaseException) -> None:
    """After a failed collective in a multi-process run: let the :class:`Watchdog` name the lost process
    (it polls at once, and exits the process when it finds it; the coordination service needs up to the
    heartbeat timeout), else end this process with one line naming the failed collective."""
    deadline = time.monotonic() + _heartbeat_timeout + 2.0
    while time.monotonic() < deadline:
        _poll_now.set()
        time.sleep(0.25)
    lost_peer(f"a collective failed ({_first_line(error)})")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]
