"""Metric sinks: a JSONL file (one record per log event), TensorBoard event files, and the console.

TensorBoard events are written with tensorboardX (no TensorFlow needed). Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os

import jax


def _flatten(prefix: str, value, out: dict):
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}/{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = float(value)


class MetricWriter:
    def __init__(self, workdir: str, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self.file = open(self.path, "a", buffering=1)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict):
        """Log nested scalar ``metrics`` under ``split`` (``train`` / ``eval``) at ``step``."""
        if not self.enabled:
            return
        flat: dict[str, float] = {}
        _flatten("", metrics, flat)
        record = {"step": int(step), "split": split}
        record.update({k: (v if math.isfinite(v) else str(v)) for k, v in flat.items()})
        self.file.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in flat.items():
                self.tb.add_scalar(f"{split}/{k}", v, int(step))

    def close(self):
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """The records of ``<workdir>/metrics.jsonl``."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
