#!/usr/bin/env bash
# Run an mtljax command as N processes on this machine (one coordinator on a free localhost port,
# gloo collectives on CPU), e.g. 2 processes of 4 simulated CPU devices each:
#
#   launch/local.sh 2 --cpu_devices=4 train --config=configs/default.py --workdir=runs/two_procs
#
# The same as `mtljax launch --local=N ...` (see `mtljax launch --help`).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 N [--cpu_devices=K] COMMAND [ARGS...]" >&2
  exit 2
fi
n=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
exec "$py" -m mtljax launch --local="$n" "$@"
