"""Preemption: SIGTERM (the notice TPU and Spot VMs, SLURM and Kubernetes send before they stop a job)
saves a checkpoint at the current step and ends the run with exit status 0; the same command resumes it.

One process: a Python SIGTERM handler sets a flag that the training loop reads after each step. Several
processes: JAX's preemption sync manager (started by ``jax.distributed.initialize``) catches SIGTERM in any
process and the processes agree on the step to save at (orbax's ``CheckpointManager.reached_preemption``),
so all of them save the same step together, even when only one host got the notice.
"""

from __future__ import annotations

import logging
import signal
import threading

import jax


class Preempted(Exception):
    """The run received SIGTERM and stopped after saving the checkpoint of ``step``."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"preempted (SIGTERM) at step {step}: checkpoint saved in {directory}; run the same "
                         "command again to resume")
        self.step, self.directory = step, directory


def _quiet_sync_point(record: logging.LogRecord) -> bool:
    return "preemption sync point" not in record.getMessage()


class Notice:
    """``with Notice(manager) as notice: ... if notice.reached(step): save and stop``."""

    def __init__(self, manager):
        self.manager = manager
        self.multi = jax.process_count() > 1
        self.received = False
        self._previous = None

    def _handle(self, signum, frame):
        del signum, frame
        self.received = True

    def __enter__(self):
        if self.multi:  # orbax logs a warning per call once the sync point is reached; one line is ours
            logging.getLogger("absl").addFilter(_quiet_sync_point)
        elif threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        logging.getLogger("absl").removeFilter(_quiet_sync_point)
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        return False

    def reached(self, step: int) -> bool:
        """True at the step where this process (and, with several, every process) should save and stop."""
        if self.multi:
            return bool(self.manager.reached_preemption(step))
        return self.received
