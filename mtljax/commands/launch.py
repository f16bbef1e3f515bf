"""``mtljax launch``: run an mtljax command as several processes — here, or on the engine you use.

    mtljax launch --local=2 [--cpu_devices=4] train --config=...        # 2 processes on this machine
    mtljax launch --slurm --nodes=2 --gpus_per_node=8 [--per_node] [--dry_run] train --config=...
    mtljax launch --k8s --image=IMAGE --processes=4 [--gpus_per_process=8] [--dry_run] train ...
    mtljax launch --tpu=NAME --zone=ZONE [--dry_run] train --config=...   # every host of a TPU VM slice
    mtljax launch --xpk=CLUSTER --tpu_type=v5p-32 --image=IMAGE [--num_slices=1] [--dry_run] train ...

Everything after the command name (``train``, ``eval``, ...) is passed to it unchanged. ``--dry_run``
prints the script, manifest or command instead of submitting it.

- ``--local=N`` starts N processes of ``python -m mtljax ...`` with ``JAX_COORDINATOR_ADDRESS`` (a free
  localhost port), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; on CPU their collectives run over gloo and
  ``--cpu_devices`` sets each one's device count, so N × cpu_devices devices form one mesh. Process 0's
  output is shown as is, the others' errors prefixed ``[process i]``. SIGTERM or Ctrl-C is passed on to
  every process (each saves a checkpoint and exits 0, see :mod:`mtljax.trainer.preemption`). When a
  process fails, the others end within ``config.dist.heartbeat_timeout`` seconds; the launcher exits
  with the first failure's status.
- ``--slurm`` writes an ``sbatch`` script: one task per GPU (``srun``; JAX reads SLURM's variables and
  gives each task its GPU), or with ``--per_node`` one task per node driving all its GPUs
  (``--config.dist.local_device_ids``). ``--signal=TERM@120`` makes SLURM send the preemption notice
  two minutes before the time limit, and ``--requeue`` reruns (resumes) the job.
- ``--k8s`` renders an indexed Job with a headless Service: pod ``i`` is process ``i`` (its completion
  index), process 0's pod is the coordinator. With ``pip install 'jax[k8s]'`` and a service account that
  may read pods, JAX finds the same settings itself.
- ``--tpu`` runs the command on every host of a Cloud TPU VM slice (``gcloud ... ssh --worker=all``),
  where JAX finds the coordinator itself; the workdir must be shared storage (``gs://...``). ``--xpk``
  submits it as an XPK workload on a GKE TPU cluster.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

USAGE = "mtljax launch (--local=N | --slurm | --k8s | --tpu=NAME | --xpk=CLUSTER) [options] COMMAND [ARGS...]"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtljax launch", usage=USAGE, add_help=False)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--local", type=int, metavar="N", help="N processes on this machine")
    where.add_argument("--slurm", action="store_true", help="an sbatch script")
    where.add_argument("--k8s", action="store_true", help="a Kubernetes indexed Job")
    where.add_argument("--tpu", metavar="NAME", help="every host of the Cloud TPU VM slice NAME")
    where.add_argument("--xpk", metavar="CLUSTER", help="an XPK workload on the GKE cluster CLUSTER")
    p.add_argument("--dry_run", action="store_true", help="print what would be run or submitted")
    p.add_argument("--cpu_devices", type=int, default=0, help="local: CPU devices per process")
    p.add_argument("--grace", type=float, default=60.0, help="local: seconds the others get after one fails")
    p.add_argument("--nodes", type=int, default=1, help="slurm: nodes")
    p.add_argument("--gpus_per_node", type=int, default=8, help="slurm: GPUs per node")
    p.add_argument("--per_node", action="store_true", help="slurm: one process per node instead of per GPU")
    p.add_argument("--time", default="24:00:00", help="slurm: time limit")
    p.add_argument("--partition", default="", help="slurm: partition")
    p.add_argument("--job_name", default="mtljax", help="slurm / k8s / xpk: job name")
    p.add_argument("--image", default="", help="k8s / xpk: container image with mtljax installed")
    p.add_argument("--processes", type=int, default=2, help="k8s: processes (pods)")
    p.add_argument("--gpus_per_process", type=int, default=0, help="k8s: GPUs per pod (0: CPU only)")
    p.add_argument("--zone", default="", help="tpu: the slice's zone")
    p.add_argument("--tpu_type", default="", help="xpk: TPU type, e.g. v5p-32")
    p.add_argument("--num_slices", type=int, default=1, help="xpk: slices")
    p.add_argument("--repo", default="~/mtljax", help="tpu: the checkout on every host")
    return p


def help_text() -> str:
    """``mtljax launch --help``: what it does and its options."""
    options = _parser().format_help().split("\n", 1)[1].strip()
    return f"usage: {USAGE}\n\n{__doc__.strip()}\n\n{options}"


class LaunchError(ValueError):
    """A bad ``mtljax launch`` argument (printed as one line, exit status 2)."""


def parse(argv: list[str], commands: tuple[str, ...]):
    """``(options, command_argv)`` from the arguments after ``launch``; ``commands``: mtljax's commands."""
    COMMANDS = commands  # noqa: N806 (cli.COMMANDS, passed in: cli imports this module)
    split = next((i for i, a in enumerate(argv) if a in COMMANDS or a == "--"), None)
    if split is None:  # no command: name the likeliest typo
        words = [a for a in argv if not a.startswith("-") and not a.isdigit()]
        if words:
            import difflib

            close = difflib.get_close_matches(words[0], COMMANDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise LaunchError(f"expected an mtljax command after the launch options, got {words[0]!r}{hint}")
        split = len(argv)
    mine, command = argv[:split], argv[split:]
    if command[:1] == ["--"]:
        command = command[1:]
    parser = _parser()
    parser.error = lambda message: (_ for _ in ()).throw(LaunchError(message))  # no argparse exit
    opts = parser.parse_args(mine)
    if opts.local is None and not any([opts.slurm, opts.k8s, opts.tpu, opts.xpk]):
        raise LaunchError("say where to run: --local=N, --slurm, --k8s, --tpu=NAME or --xpk=CLUSTER")
    if not command or command[0] not in COMMANDS or command[0] == "launch":
        got = command[0] if command else "nothing"
        raise LaunchError(f"expected an mtljax command ({', '.join(c for c in COMMANDS if c != 'launch')}) "
                          f"after the launch options, got {got!r}")
    for key in ("local", "nodes", "gpus_per_node", "processes", "num_slices"):
        value = getattr(opts, key)
        if value is not None and value < 1:
            raise LaunchError(f"--{key} must be >= 1, got {value}")
    if opts.cpu_devices < 0 or opts.gpus_per_process < 0:
        raise LaunchError("--cpu_devices and --gpus_per_process must be >= 0")
    if (opts.k8s or opts.xpk) and not opts.image:
        raise LaunchError(f"--{'k8s' if opts.k8s else 'xpk'} needs --image=IMAGE (a container with mtljax)")
    if opts.tpu and not opts.zone:
        raise LaunchError("--tpu needs --zone=ZONE")
    if opts.xpk and not opts.tpu_type:
        raise LaunchError("--xpk needs --tpu_type=TYPE (e.g. v5p-32)")
    return opts, command


# ---- renderers (pure: tested by rendering them) -----------------------------------------------------------
def slurm_script(opts, command: list[str]) -> str:
    per_node = opts.per_node
    tasks = 1 if per_node else opts.gpus_per_node
    args = list(command)
    if per_node:
        args.append("--config.dist.local_device_ids=" + ",".join(map(str, range(opts.gpus_per_node))))
    lines = ["#!/bin/bash", f"#SBATCH --job-name={opts.job_name}", f"#SBATCH --nodes={opts.nodes}",
             f"#SBATCH --ntasks-per-node={tasks}", f"#SBATCH --gpus-per-node={opts.gpus_per_node}",
             f"#SBATCH --time={opts.time}", "#SBATCH --signal=TERM@120", "#SBATCH --requeue",
             "#SBATCH --output=%x-%j.out"]
    if opts.partition:
        lines.append(f"#SBATCH --partition={opts.partition}")
    lines += ["# JAX reads SLURM_JOB_NODELIST / SLURM_NTASKS / SLURM_PROCID / SLURM_LOCALID: no settings needed",
              "set -euo pipefail", f"cd {shlex.quote(os.getcwd())}",
              "srun --kill-on-bad-exit=1 .venv/bin/mtljax " + shlex.join(args), ""]
    return "\n".join(lines)


def k8s_manifest(opts, command: list[str]) -> str:
    name, n, port = opts.job_name, opts.processes, 8476
    gpus = (f"\n          resources:\n            limits:\n              nvidia.com/gpu: {opts.gpus_per_process}"
            if opts.gpus_per_process else "")
    cmd = ", ".join(f'"{a}"' for a in ["mtljax", *command])
    return f"""apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  clusterIP: None  # headless: pod i is reachable as {name}-i.{name}
  selector:
    job-name: {name}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
  completionMode: Indexed
  completions: {n}
  parallelism: {n}
  backoffLimit: 0
  template:
    spec:
      subdomain: {name}
      restartPolicy: Never
      terminationGracePeriodSeconds: 120  # SIGTERM first: each process saves a checkpoint and exits 0
      containers:
        - name: mtljax
          image: {opts.image}
          command: [{cmd}]
          env:
            - name: JAX_COORDINATOR_ADDRESS
              value: "{name}-0.{name}:{port}"
            - name: JAX_NUM_PROCESSES
              value: "{n}"
            - name: JAX_PROCESS_ID
              valueFrom:
                fieldRef:
                  fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']{gpus}
"""


def tpu_command(opts, command: list[str]) -> list[str]:
    remote = f"cd {opts.repo} && .venv/bin/mtljax {shlex.join(command)}"
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", opts.tpu, f"--zone={opts.zone}", "--worker=all",
            f"--command={remote}"]


def xpk_command(opts, command: list[str]) -> list[str]:
    return ["xpk", "workload", "create", f"--cluster={opts.xpk}", f"--workload={opts.job_name}",
            f"--tpu-type={opts.tpu_type}", f"--num-slices={opts.num_slices}", f"--docker-image={opts.image}",
            f"--command=mtljax {shlex.join(command)}"]


# ---- local processes --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def local_env(i: int, n: int, port, cpu_devices: int, base=None) -> dict:
    env = dict(os.environ if base is None else base)
    env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i))
    if cpu_devices:
        env["JAX_NUM_CPU_DEVICES"] = str(cpu_devices)
    return env


def _pump(stream, out, prefix: str):
    for line in stream:
        out.write(prefix + line)
        out.flush()


def run_local(n: int, command: list[str], cpu_devices: int = 0, grace: float = 60.0) -> int:
    """Run ``mtljax <command>`` as ``n`` processes here; the first failure's exit status, else 0."""
    port = free_port()
    procs, pumps = [], []
    for i in range(n):
        p = subprocess.Popen([sys.executable, "-m", "mtljax", *command], env=local_env(i, n, port, cpu_devices),
                             stdout=None if i == 0 else subprocess.DEVNULL,
                             stderr=None if i == 0 else subprocess.PIPE, text=True)
        procs.append(p)
        if i:
            t = threading.Thread(target=_pump, args=(p.stderr, sys.stderr, f"[process {i}] "), daemon=True)
            t.start()
            pumps.append(t)

    def forward(signum, frame):
        del frame
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    first_failure, deadline = None, None
    try:
        while any(p.poll() is None for p in procs):
            for i, p in enumerate(procs):
                if p.returncode not in (None, 0) and first_failure is None:
                    first_failure, deadline = (i, p.returncode), time.monotonic() + grace
            if deadline is not None and time.monotonic() > deadline:
                for i, p in enumerate(procs):
                    if p.poll() is None:
                        print(f"mtljax launch: process {i} still running {grace:.0f} s after process "
                              f"{first_failure[0]} failed; killing it", file=sys.stderr)
                        p.kill()
            time.sleep(0.1)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    for t in pumps:
        t.join(timeout=5)
    codes = [p.returncode for p in procs]
    if first_failure is None:
        first_failure = next(((i, c) for i, c in enumerate(codes) if c != 0), None)
    return 0 if first_failure is None else (first_failure[1] if first_failure[1] > 0 else 1)


def main(argv: list[str], commands: tuple[str, ...]) -> int:
    """``mtljax launch ARGS``; returns the exit status. ``commands``: the mtljax commands it may start."""
    try:
        opts, command = parse(argv, commands)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if opts.local:
        if opts.dry_run:
            for i in range(opts.local):  # the port is chosen when the processes start
                env = local_env(i, opts.local, "PORT", opts.cpu_devices, base={})
                print(" ".join(f"{k}={v}" for k, v in env.items()), shlex.join(["mtljax", *command]), "&")
            return 0
        return run_local(opts.local, command, opts.cpu_devices, opts.grace)
    if opts.slurm:
        script = slurm_script(opts, command)
        if opts.dry_run:
            print(script, end="")
            return 0
        path = f"{opts.job_name}.sbatch"
        with open(path, "w") as f:
            f.write(script)
        return subprocess.call(["sbatch", path])
    if opts.k8s:
        manifest = k8s_manifest(opts, command)
        if opts.dry_run:
            print(manifest, end="")
            return 0
        return subprocess.run(["kubectl", "apply", "-f", "-"], input=manifest, text=True).returncode
    cmd = tpu_command(opts, command) if opts.tpu else xpk_command(opts, command)
    if opts.dry_run:
        print(shlex.join(cmd))
        return 0
    return subprocess.call(cmd)
