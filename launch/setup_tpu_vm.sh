#!/usr/bin/env bash
# Install mtljax with TPU support on every host of a TPU VM slice (run once per slice).
#
#   launch/setup_tpu_vm.sh TPU_NAME ZONE
#
# Copies this checkout to ~/mtljax on each host and installs it with jax[tpu] into ~/mtljax/.venv.
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 TPU_NAME ZONE" >&2
  exit 2
fi
tpu=$1 zone=$2
root=$(cd "$(dirname "$0")/.." && pwd)
tar -C "$root" --exclude=.venv --exclude=.venv-bench --exclude=runs --exclude=.git -czf /tmp/mtljax.tgz .
gcloud compute tpus tpu-vm scp /tmp/mtljax.tgz "$tpu":/tmp/mtljax.tgz --zone "$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  'mkdir -p ~/mtljax && tar -C ~/mtljax -xzf /tmp/mtljax.tgz && cd ~/mtljax &&
   python3 -m venv .venv && .venv/bin/pip install -q -e . "jax[tpu]"'
