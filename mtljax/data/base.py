"""Data sources and grain pipelines shared by every dataset.

A dataset is a :class:`Dataset`: its tasks, the shape of one input, and random-access example sources
per split. A source answers ``get_batch(indices)`` with a batch dict::

    {"inputs": float32[B, ...], "targets": {task: [B, ...]}, "masks": {task: float32[B] or [B, ...]}}

Training batches come from a grain pipeline over *indices*: ``range(N).shuffle(seed).repeat()``
(a fresh permutation every epoch), batched to the global batch size; each process keeps its own
contiguous slice of every global batch (so the global batch does not depend on the number of hosts),
and only then are the examples read, vectorised, by ``get_batch``. The pipeline is deterministic given
the seed, and its iterator state (``{"next_index": k}``) is what the checkpoint stores for an exact
resume.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Protocol, Sequence

import grain
import numpy as np

from mtljax.config import ConfigError
from mtljax.tasks import Task

Batch = dict


class ExampleSource(Protocol):
    def __len__(self) -> int: ...

    def get_batch(self, indices: np.ndarray) -> Batch: ...


@dataclasses.dataclass
class ArraySource:
    """Examples held in memory as arrays; every example is labelled unless ``masks`` says otherwise."""

    inputs: np.ndarray
    targets: dict[str, np.ndarray]
    masks: dict[str, np.ndarray] | None = None

    def __post_init__(self):
        n = len(self.inputs)
        for name, arr in {**self.targets, **(self.masks or {})}.items():
            if len(arr) != n:
                raise ValueError(f"ArraySource: {name!r} has {len(arr)} rows, inputs have {n}")

    def __len__(self) -> int:
        return len(self.inputs)

    def get_batch(self, indices: np.ndarray) -> Batch:
        masks = self.masks or {}
        return {
            "inputs": self.inputs[indices],
            "targets": {k: v[indices] for k, v in self.targets.items()},
            "masks": {
                k: (masks[k][indices] if k in masks else np.ones(len(indices), np.float32))
                for k in self.targets
            },
        }


@dataclasses.dataclass
class Dataset:
    """A multi-task dataset: tasks, per-example input shape and random-access splits."""

    name: str
    tasks: tuple[Task, ...]
    input_shape: tuple[int, ...]
    splits: dict[str, ExampleSource]
    info: dict = dataclasses.field(default_factory=dict)

    def select_tasks(self, names: Sequence[str]) -> "Dataset":
        """The same data restricted to ``names`` (e.g. for a single-task baseline)."""
        by_name = {t.name: t for t in self.tasks}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ConfigError(f"dataset {self.name!r} has no task(s) {unknown}; it has {list(by_name)}", "tasks")
        return dataclasses.replace(self, tasks=tuple(by_name[n] for n in names))


def filter_tasks(batch: Batch, tasks: Sequence[Task]) -> Batch:
    """The batch restricted to ``tasks``, in their order. A batch whose examples each belong to one task
    (``task_ids``, indices into its own ``targets``' order: mixtures of single-task components) keeps
    them, renumbered into ``tasks``' order (an example of a dropped task gets 0; its masks are all 0)."""
    names = [t.name for t in tasks]
    out = {
        "inputs": batch["inputs"],
        "targets": {n: batch["targets"][n] for n in names},
        "masks": {n: np.asarray(batch["masks"][n], np.float32) for n in names},
    }
    if "task_ids" in batch:
        renumber = np.array([names.index(n) if n in names else 0 for n in batch["targets"]], np.int32)
        out["task_ids"] = renumber[np.asarray(batch["task_ids"])]
    return out


def host_slice(global_batch: int, process_index: int, process_count: int) -> slice:
    """This process's rows of a global batch."""
    if global_batch % process_count:
        raise ValueError(f"batch size {global_batch} is not divisible by {process_count} processes")
    per = global_batch // process_count
    return slice(process_index * per, (process_index + 1) * per)


def index_stream(num_examples: int, seed: int) -> grain.MapDataset:
    """Example indices, freshly shuffled every epoch, repeated forever."""
    return grain.MapDataset.range(num_examples).shuffle(seed=seed).repeat()


def train_dataset(
    source: ExampleSource,
    tasks: Sequence[Task],
    global_batch: int,
    seed: int,
    *,
    indices: grain.MapDataset | None = None,
    process_index: int = 0,
    process_count: int = 1,
    task_per_example: bool = False,
) -> grain.MapDataset:
    """Random-access dataset of this process's share of global training batch ``k``.

    ``indices``: the order of examples, either a grain dataset of positions or a function of the seed
    returning one (mixtures); default: ``index_stream(len(source), seed)``. ``task_per_example``: see
    :func:`one_task_per_example`.
    """
    rows = host_slice(global_batch, process_index, process_count)
    if callable(indices) and not isinstance(indices, grain.MapDataset):
        indices = indices(seed)  # a seeded order (e.g. a mixture's), built for this run's seed
    stream = index_stream(len(source), seed) if indices is None else indices
    ds = (
        stream.batch(global_batch, drop_remainder=True)
        .map(lambda idx: np.asarray(idx)[rows])
        .map(lambda idx: filter_tasks(source.get_batch(idx), tasks))
    )
    return ds.map(lambda b: one_task_per_example(b, rows, len(tasks))) if task_per_example else ds


def one_task_per_example(batch: Batch, rows: slice, num_tasks: int) -> Batch:
    """Make every example of a batch train one task: the example at global batch position ``j``
    trains task ``j mod T`` — its other tasks' masks are set to 0 — and the batch carries
    ``task_ids [B]`` (``int32``). A model with per-task modules then runs the batch *once*, each
    example through its own task's modules (``MultiTaskModel(task_ids=...)``), instead of once per
    task; each task's loss averages over its ``B/T`` examples. Positions are random draws of the
    shuffled stream, so every example trains every task over the epochs (``config.data.task_per_example``).
    """
    if "task_ids" in batch:  # the examples already have one task each (a mixture of single-task components)
        return batch
    ids = (np.arange(rows.start, rows.stop) % num_tasks).astype(np.int32)
    masks = {name: m * (ids == i).reshape((-1,) + (1,) * (np.ndim(m) - 1)).astype(m.dtype)
             for i, (name, m) in enumerate(batch["masks"].items())}
    return dict(batch, masks=masks, task_ids=ids)


def train_iterator(dataset: grain.MapDataset, prefetch: int = 2) -> grain.DatasetIterator:
    """A checkpointable iterator (``get_state``/``set_state``) with background prefetch."""
    options = grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)
    return iter(dataset.to_iter_dataset(options))


def eval_batches(
    source: ExampleSource,
    tasks: Sequence[Task],
    global_batch: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
    max_examples: int | None = None,
) -> Iterator[Batch]:
    """Every example of a split once, in order; the last batch is padded with zero masks."""
    rows = host_slice(global_batch, process_index, process_count)
    n = len(source) if max_examples is None else min(len(source), max_examples)
    for start in range(0, n, global_batch):
        idx = np.arange(start, start + global_batch)
        valid = idx < n
        batch = filter_tasks(source.get_batch(np.where(valid, idx, 0)[rows]), tasks)
        v = valid[rows].astype(np.float32)
        batch["masks"] = {k: m * v.reshape(v.shape + (1,) * (m.ndim - 1)) for k, m in batch["masks"].items()}
        yield batch
