"""Multi-process settings and launchers, without starting processes: which settings ``config.dist`` and the
environment give, the one-line errors, and the scripts/manifests/commands ``mtljax launch`` renders."""

import subprocess

import pytest
import yaml

from mtljax.commands import cli
from mtljax.config import ConfigError, base_config
from mtljax.parallel import distributed as dd


def _dist(**kw):
    d = base_config().dist
    with d.unlocked():
        d.update(kw)
    return d


@pytest.mark.parametrize("env, kw, want", [
    ({}, {}, None),
    ({"JAX_NUM_PROCESSES": "1"}, {}, None),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}, {},
     ("h:1", 4, 3, None, "explicit")),
    ({}, dict(coordinator="h:2", num_processes=2, process_id=0, local_device_ids="0,1"),
     ("h:2", 2, 0, (0, 1), "explicit")),
    ({"JAX_COORDINATOR_ADDRESS": "env:1", "JAX_NUM_PROCESSES": "8", "JAX_PROCESS_ID": "5"},
     dict(coordinator="flag:9", process_id=1), ("flag:9", 8, 1, None, "explicit")),  # flags win over env
    # a coordinator with one process: a 1-process distributed runtime (its sums run like N processes')
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "1"}, {}, ("h:1", 1, 0, None, "explicit")),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, {}, (None, None, None, None, "slurm")),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, {}, None),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, {}, (None, None, None, None, "openmpi")),
    ({"TPU_WORKER_HOSTNAMES": "a,b,c,d"}, {}, (None, None, None, None, "tpu")),
    ({"TPU_WORKER_HOSTNAMES": "a"}, {}, None),  # a single-host TPU VM
    ({"JOB_COMPLETION_INDEX": "2", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}, {}, (None, None, None, None, "k8s")),
])
def test_plan_from_flags_environment_and_cluster(env, kw, want):
    p = dd.plan(_dist(**kw), env)
    got = None if p is None else (p.coordinator, p.num_processes, p.process_id, p.local_device_ids, p.cluster)
    assert got == want


@pytest.mark.parametrize("env, kw, key", [
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, {}, "config.dist.num_processes"),
    ({}, dict(coordinator="h:1", num_processes=2), "config.dist.process_id"),
    ({}, dict(num_processes=2, process_id=0), "config.dist.coordinator"),
    ({}, dict(coordinator="h:1", num_processes=2, process_id=2), "config.dist.process_id"),
    ({"JAX_NUM_PROCESSES": "two"}, {}, "config.dist.num_processes"),
    ({}, dict(num_processes=-3), "config.dist.num_processes"),
    ({}, dict(coordinator="h:1", num_processes=2, process_id=0, local_device_ids="0,x"),
     "config.dist.local_device_ids"),
])
def test_incomplete_or_bad_settings_are_one_line_errors(env, kw, key):
    with pytest.raises(ConfigError) as e:
        dd.plan(_dist(**kw), env)
    assert str(e.value).startswith(key + ":") and "\n" not in str(e.value)


def _render(capsys, *argv):
    assert cli.main(["mtljax", "launch", *argv]) == 0
    return capsys.readouterr().out


TRAIN = ["train", "--config=configs/default.py", "--workdir=gs://b/runs/x"]


def test_launchers_render_their_scripts(capsys, tmp_path):
    script = _render(capsys, "--slurm", "--nodes=2", "--gpus_per_node=4", "--dry_run", *TRAIN)
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=4" in script
    assert "#SBATCH --signal=TERM@120" in script and "srun --kill-on-bad-exit=1 .venv/bin/mtljax train" in script
    (tmp_path / "job.sbatch").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")]).returncode == 0
    per_node = _render(capsys, "--slurm", "--nodes=2", "--gpus_per_node=4", "--per_node", "--dry_run", *TRAIN)
    assert "--ntasks-per-node=1" in per_node and "--config.dist.local_device_ids=0,1,2,3" in per_node

    manifest = _render(capsys, "--k8s", "--image=img:1", "--processes=4", "--gpus_per_process=8", "--dry_run",
                       *TRAIN)
    service, job = list(yaml.safe_load_all(manifest))
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == ["mtljax", *TRAIN]
    env = {e["name"]: e for e in container["env"]}
    assert env["JAX_NUM_PROCESSES"]["value"] == "4" and env["JAX_COORDINATOR_ADDRESS"]["value"].startswith("mtljax-0.")
    assert "job-completion-index" in env["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8

    tpu = _render(capsys, "--tpu=pod", "--zone=us-central2-b", "--dry_run", *TRAIN)
    assert tpu.startswith("gcloud compute tpus tpu-vm ssh pod --zone=us-central2-b --worker=all '--command=cd ~/mtljax")
    assert ".venv/bin/mtljax train --config=configs/default.py --workdir=gs://b/runs/x" in tpu
    xpk = _render(capsys, "--xpk=c1", "--tpu_type=v5p-32", "--image=img:1", "--dry_run", *TRAIN)
    assert xpk.startswith("xpk workload create --cluster=c1") and "--tpu-type=v5p-32" in xpk
    local = _render(capsys, "--local=2", "--cpu_devices=4", "--dry_run", *TRAIN).splitlines()
    assert len(local) == 2 and all("JAX_NUM_PROCESSES=2" in line and "JAX_NUM_CPU_DEVICES=4" in line
                                   for line in local)
    assert "JAX_PROCESS_ID=1" in local[1]


@pytest.mark.parametrize("argv, words", [
    (["train"], "say where to run"),
    (["--local=2"], "expected an mtljax command"),
    (["--local=2", "trian"], "expected an mtljax command"),
    (["--local=0", "train"], "--local must be >= 1"),
    (["--k8s", "train"], "--k8s needs --image"),
    (["--tpu=pod", "train"], "--tpu needs --zone"),
    (["--xpk=c", "--image=i", "train"], "--xpk needs --tpu_type"),
    (["--local=2", "--slurm", "train"], "not allowed with"),
    (["--lcoal=2", "train"], "unrecognized arguments"),
])
def test_bad_launch_arguments_are_one_line_errors(capsys, argv, words):
    assert cli.main(["mtljax", "launch", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and "\n" not in err, err
