#!/usr/bin/env bash
# Launch an mtljax run on every host of a Cloud TPU pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE [mtljax train arguments...]
#   e.g. launch/tpu_pod.sh my-v4-32 us-central2-b --config=configs/cifar100_mtl.py:S \
#          --config.data.data_dir=gs://BUCKET/tfds --workdir=gs://BUCKET/runs/c100_s
#
# The same command runs on all hosts (--worker=all), the same as `mtljax launch --tpu=NAME --zone=ZONE train ...`.
# Each process calls jax.distributed.initialize()
# (TPU hosts find the coordinator themselves), reads its own slice of every global batch, and orbax
# writes one checkpoint from all hosts together; the workdir must be shared storage (e.g. GCS).
# Assumes the repository is checked out at ~/mtljax on every host (use setup first).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 TPU_NAME ZONE [mtljax train args...]" >&2
  exit 2
fi
tpu=$1 zone=$2
shift 2
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd ~/mtljax && .venv/bin/mtljax train$args"
