"""Task mixtures: training on tasks that come from different datasets, in heterogeneous batches.

A mixture combines ``K`` component datasets (``config.data.components``, each a complete data config
built with :func:`mtljax.data.build_dataset`). Its tasks are the union of the components' tasks (task
names must not collide) and its inputs must have one shape. Every example still comes from exactly
one component, so it is labelled only for that component's tasks: the other tasks get a zero target
and mask 0, while the component's own masks are kept as they are (partial labels stay partial).

**How often each component is drawn** (``config.data.sampling``), with ``N_k`` its training size:

* ``proportional``: ``r_k ∝ min(N_k, cap)`` (examples-proportional mixing with an artificial size
  limit ``cap``, as in T5; ``cap <= 0`` means no limit);
* ``temperature``: ``r_k ∝ N_k^(1/τ)`` (``τ = 1`` is proportional, ``τ → ∞`` tends to uniform);
* ``uniform``: ``r_k = 1/K``.

**One task per component** (T5's and HyperFormer's setting: every dataset is one task): every batch
then also carries ``task_ids [B]``, each example's own task, so a model with per-task modules (adapters,
LoRA, hypernetwork adapters) runs the batch once, each example through its own task's modules, instead
of once per task (:class:`~mtljax.models.hps.MultiTaskModel`); ``config.data.task_per_example`` keeps
these ids.

**Design.** Every split of the mixture is one :class:`ConcatSource`: the components' examples laid
end to end, component ``k`` occupying global positions ``[offset_k, offset_k + N_k)``. Its
``get_batch(positions)`` splits the positions by component, reads each component's examples in one
vectorised call and assembles the batch over the union of tasks. The *order* of training lives apart,
in ``info["train_indices"]``: a function of the run's seed returning a grain ``MapDataset`` of global
positions built as
``grain.MapDataset.mix([index_stream(N_k, seed_k) + offset_k for k], weights=rates)`` — each component
reshuffled every epoch and repeated forever, interleaved deterministically in the mixing
proportions. It is random access (step ``s`` needs no history), so ``train_dataset(source, tasks,
batch, seed, indices=info["train_indices"])`` (what the training loop does) batches it, host-slices
it and resumes it from iterator state exactly like any other dataset. The per-component seeds are
derived from the run's seed (``config.seed``), so seeds of a sweep see different orders. Evaluation splits simply concatenate the components that have
that split, each example labelled for its own component's tasks only.
"""

from __future__ import annotations

import functools
from typing import Sequence

import grain
import ml_collections as mlc
import numpy as np

from mtljax.config import ConfigError, section
from mtljax.data.base import Dataset, index_stream
from mtljax.data.registry import build_section

SAMPLINGS = ("proportional", "temperature", "uniform")


def mixing_rates(sizes: Sequence[int], sampling: str = "proportional", cap: float = 0,
                 temperature: float = 1.0) -> np.ndarray:
    """Probability of drawing each component, from the components' training sizes."""
    n = np.asarray(sizes, np.float64)
    if n.ndim != 1 or n.size == 0 or np.any(n <= 0):
        raise ValueError(f"mixture: component sizes must be positive, got {list(sizes)}")
    if sampling == "proportional":
        w = np.minimum(n, cap) if cap and cap > 0 else n
    elif sampling == "temperature":
        if not temperature or temperature <= 0:
            raise ConfigError(f"must be > 0, got {temperature}", "temperature")
        w = np.exp(np.log(n) / temperature)
    elif sampling == "uniform":
        w = np.ones_like(n)
    else:
        raise ConfigError(f"unknown {sampling!r}; choose from {SAMPLINGS}", "sampling")
    return w / w.sum()


def _component_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([int(seed), k]).generate_state(1)[0])


def _shift(offset: int, i: int) -> int:
    return offset + int(i)


def mixed_indices(sizes: Sequence[int], rates: Sequence[float], seed: int) -> grain.MapDataset:
    """Endless, deterministic stream of global positions: component ``k`` drawn at rate ``rates[k]``."""
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    streams = [index_stream(int(n), _component_seed(seed, k)).map(functools.partial(_shift, int(o)))
               for k, (n, o) in enumerate(zip(sizes, offsets))]
    if len(streams) == 1:
        return streams[0]
    return grain.MapDataset.mix(streams, weights=[float(r) for r in rates])


class ConcatSource:
    """Sources laid end to end; batches carry the union of tasks, foreign tasks masked out.

    ``specs`` maps every task to ``(k, target shape, target dtype, mask shape)`` (shapes per example);
    it says which component labels the task and how to zero-fill it for the others. ``task_ids``: every
    component has exactly one task, so batches also carry ``task_ids [B]`` — the index of each
    example's own task in ``specs``' order (see :func:`combine`).
    """

    def __init__(self, sources: Sequence, specs: dict[str, tuple], input_shape: tuple[int, ...],
                 task_ids: bool = False):
        self.sources = list(sources)
        self.task_ids = task_ids
        self.sizes = np.array([len(s) for s in self.sources], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.specs = specs
        self.input_shape = tuple(input_shape)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(component, index within the component) of global ``positions``."""
        positions = np.asarray(positions, np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"mixture: positions must lie in [0, {len(self)})")
        comp = np.searchsorted(self.offsets, positions, side="right") - 1
        return comp, positions - self.offsets[comp]

    def get_batch(self, indices: np.ndarray) -> dict:
        comp, local = self.locate(np.asarray(indices).reshape(-1))
        b = len(comp)
        inputs = np.zeros((b,) + self.input_shape, np.float32)
        targets = {t: np.zeros((b,) + shape, dtype) for t, (_, shape, dtype, _) in self.specs.items()}
        masks = {t: np.zeros((b,) + mshape, np.float32) for t, (_, _, _, mshape) in self.specs.items()}
        for k, source in enumerate(self.sources):
            rows = np.nonzero(comp == k)[0]
            if rows.size == 0:
                continue
            part = source.get_batch(local[rows])
            inputs[rows] = part["inputs"]
            for t, (owner, *_rest) in self.specs.items():
                if owner == k:
                    targets[t][rows] = part["targets"][t]
                    masks[t][rows] = part["masks"][t]
        batch = {"inputs": inputs, "targets": targets, "masks": masks}
        if self.task_ids:  # component k's one task, as an index into the mixture's tasks
            own = np.zeros(len(self.sources), np.int32)
            for i, (owner, *_rest) in enumerate(self.specs.values()):
                if owner >= 0:
                    own[owner] = i
            batch["task_ids"] = own[comp]
        return batch


def _component_config(sub, parent) -> mlc.ConfigDict:
    sub = mlc.ConfigDict(sub.to_dict() if hasattr(sub, "to_dict") else dict(sub))
    if "data_dir" not in sub and parent.get("data_dir"):
        sub.data_dir = parent.data_dir  # components share the parent's tfds directory unless set
    return sub


def _task_specs(datasets, names) -> dict[str, tuple]:
    """Owner component and per-example target/mask shapes of every task (probed on one example)."""
    specs, owner = {}, {}
    for k, (ds, name) in enumerate(zip(datasets, names)):
        probe = ds.splits["train"].get_batch(np.zeros(1, np.int64))
        for task in ds.tasks:
            if task.name in owner:
                raise ConfigError(f"task {task.name!r} is defined by both component {owner[task.name]} and "
                                  f"component {name}; task names must be unique", "components")
            owner[task.name] = name
            target, mask = np.asarray(probe["targets"][task.name]), np.asarray(probe["masks"][task.name])
            specs[task.name] = (k, target.shape[1:], target.dtype, mask.shape[1:])
    return specs


def combine(datasets: Sequence[Dataset], sampling: str = "proportional", cap: float = 0,
            temperature: float = 1.0, names: Sequence[str] | None = None) -> Dataset:
    """The mixture of already built ``datasets``; ``names`` label the components in errors."""
    if not datasets:
        raise ConfigError("a mixture needs at least one component", "components")
    names = [f"{k}:{d.name}" for k, d in enumerate(datasets)] if names is None else list(names)
    shapes = {tuple(d.input_shape) for d in datasets}
    if len(shapes) > 1:
        listing = ", ".join(f"{n} {tuple(d.input_shape)}" for n, d in zip(names, datasets))
        raise ConfigError(f"input shapes differ ({listing}); a mixture needs one input shape (e.g. set image_size)",
                          "components")
    for n, d in zip(names, datasets):
        if "train" not in d.splits or len(d.splits["train"]) == 0:
            raise ConfigError(f"component {n} has no training examples", "components")
    input_shape = shapes.pop()
    specs = _task_specs(datasets, names)
    sizes = [len(d.splits["train"]) for d in datasets]
    rates = mixing_rates(sizes, sampling, cap, temperature)
    split_names = dict.fromkeys(s for d in datasets for s in d.splits)  # ordered union
    single = all(len(d.tasks) == 1 for d in datasets)  # every example belongs to one task: batches say which
    splits = {}
    for split in split_names:
        have = [k for k, d in enumerate(datasets) if split in d.splits]
        sub = {t: (have.index(k), *rest) for t, (k, *rest) in specs.items() if k in have}
        # Tasks of components without this split still appear (all masked) so batches stay uniform.
        sub.update({t: (-1, *rest) for t, (k, *rest) in specs.items() if k not in have})
        splits[split] = ConcatSource([datasets[k].splits[split] for k in have], sub, input_shape, task_ids=single)
    info = {
        "task_ids": single,
        "train_indices": functools.partial(mixed_indices, sizes, rates),  # called with the run's seed
        "mixing_rates": rates,
        "components": names,
        "component_sizes": sizes,
        "task_component": {t: names[k] for t, (k, *_rest) in specs.items()},
    }
    tasks = tuple(t for d in datasets for t in d.tasks)
    return Dataset("mixture", tasks, input_shape, splits, info=info)


def build(cfg) -> Dataset:
    """Config keys (``config.data``): components (list of data configs), sampling, cap, temperature.
    The training order is seeded by the run's ``config.seed``."""
    components = list(cfg.get("components", ()) or ())
    if not components:
        raise ConfigError("a mixture needs a non-empty list of data configs", "components")
    datasets, names = [], []
    for k, comp in enumerate(components):
        sub = _component_config(comp, cfg)
        if "name" not in sub:
            raise ConfigError("missing 'name'", f"components[{k}]")
        with section(f"components[{k}]"):
            ds = build_section(sub)
            if sub.get("tasks"):
                ds = ds.select_tasks(list(sub.tasks))
        datasets.append(ds)
        names.append(f"components[{k}] ({sub.name!r})")
    return combine(datasets, cfg.get("sampling", "proportional"), cfg.get("cap", 0) or 0,
                   cfg.get("temperature", 1.0), names=names)
