"""Orbax checkpoints of the train state and the data-iterator state.

One ``ocp.CheckpointManager`` per run directory (``<workdir>/checkpoints``), asynchronous and keeping the
newest ``keep`` steps. A checkpoint holds two items: ``state`` (the sharded :class:`TrainState`, restored
straight onto the mesh with the shardings it is given) and ``data`` (the grain data iterator, written and
read by grain's own orbax handler, ``grain.checkpoint.CheckpointSave`` / ``CheckpointRestore``: one JSON
file of the iterator's position per process, ``data/process_<i>-of-<n>.json``, taken while ``save``
runs, so the iterator may advance as soon as ``save`` returns). Restoring needs the same number of
processes as saving.

Orbax writes a step to a temporary directory and renames it when complete, so a process killed while
saving leaves the previous checkpoints intact and the partial one ignored.
"""

from __future__ import annotations

import os

import grain
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

    def save(self, step: int, state, iterator: grain.DatasetIterator, *, force: bool = False) -> bool:
        """Save ``state`` and the position of ``iterator`` as step ``step`` (asynchronously)."""
        return self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    data=grain.checkpoint.CheckpointSave(iterator)),
            force=force,
        )

    def restore(self, step: int, abstract_state, iterator: grain.DatasetIterator | None = None):
        """The train state of ``step``, its arrays placed with the shardings in ``abstract_state``.

        Given ``iterator``, also moves it to the position saved with that step.
        """
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()
