"""Orbax checkpoints of the train state and the data-iterator state.

One ``ocp.CheckpointManager`` per run directory (``<workdir>/checkpoints``), asynchronous and keeping the
newest ``keep`` steps. A checkpoint holds two items: ``state`` (the sharded :class:`TrainState`, restored
straight onto the mesh with the shardings it is given) and ``data`` (the grain iterator state as JSON).
Orbax writes a step to a temporary directory and renames it when complete, so a process killed while
saving leaves the previous checkpoints intact and the partial one ignored.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, *, force: bool = False) -> bool:
        return self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
            force=force,
        )

    def restore(self, step: int, abstract_state):
        """(state, data_state) of ``step``; arrays land with the shardings in ``abstract_state``."""
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()),
        )
        return out["state"], out["data"]

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()
