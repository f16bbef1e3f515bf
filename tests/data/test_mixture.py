"""Task mixtures: mixing rates, the grain-mixed training stream, union-of-tasks batches and errors."""

import ml_collections as mlc
import numpy as np
import pytest

from mtljax.data import build_dataset, eval_batches, train_dataset, train_iterator
from mtljax.data.base import ArraySource, Dataset
from mtljax.data.mixture import combine, mixing_rates
from mtljax.tasks import Task


def _component(name, n, tasks, base, n_test=7, extra_splits=(), shape=(3,), partial=None):
    """Inputs encode the example: feature 0 = base + index, so a batch tells where rows came from."""
    def source(m, first):
        x = (first + np.arange(m, dtype=np.float32))[:, None] * np.ones((1,) + shape, np.float32)
        targets = {t: ((np.arange(m) + i) % 2).astype(np.int32) for i, t in enumerate(tasks)}
        masks = {partial: (np.arange(m) % 3 != 0).astype(np.float32)} if partial else None
        return ArraySource(x, targets, masks)
    splits = {"train": source(n, base), "test": source(n_test, base + 0.5)}
    splits.update({s: source(n_test, base + 0.25) for s in extra_splits})
    return Dataset(name, tuple(Task(t, "binary") for t in tasks), shape, splits)


def _three(**kw):
    return combine([_component("a", 600, ["a1", "a2"], 0, partial="a2"),
                    _component("b", 1200, ["b1"], 10_000, extra_splits=("validation",)),
                    _component("c", 2400, ["c1"], 20_000)], **kw)


def _origin(x):
    return (np.asarray(x)[:, 0] // 10_000).astype(int)


def test_mixing_rates():
    sizes = [100, 1000, 10_000]
    np.testing.assert_allclose(mixing_rates(sizes, "proportional"), np.array(sizes) / 11_100)
    capped = mixing_rates(sizes, "proportional", cap=1000)
    np.testing.assert_allclose(capped, np.array([100, 1000, 1000]) / 2100)
    np.testing.assert_allclose(mixing_rates(sizes, "temperature", temperature=1.0), mixing_rates(sizes))
    sq = np.sqrt(sizes)
    np.testing.assert_allclose(mixing_rates(sizes, "temperature", temperature=2.0), sq / sq.sum())
    np.testing.assert_allclose(mixing_rates(sizes, "temperature", temperature=1e6), [1 / 3] * 3, atol=1e-4)
    np.testing.assert_allclose(mixing_rates(sizes, "uniform"), [1 / 3] * 3)
    for bad, match in [(dict(sampling="weird"), "sampling"),
                       (dict(sampling="temperature", temperature=0), "temperature")]:
        with pytest.raises(ValueError, match=match):
            mixing_rates(sizes, **bad)
    with pytest.raises(ValueError, match="positive"):
        mixing_rates([10, 0])


def test_stream_frequencies_match_rates():
    ds = _three(sampling="temperature", temperature=2.0)
    rates = ds.info["mixing_rates"]
    comp, local = ds.splits["train"].locate(np.array([ds.info["train_indices"](0)[i] for i in range(12_000)]))
    np.testing.assert_allclose(np.bincount(comp, minlength=3) / len(comp), rates, atol=0.01)
    # Each component is itself walked epoch by epoch: the first 600 draws of "a" cover "a" once.
    assert sorted(local[comp == 0][:600].tolist()) == list(range(600))
    it = train_iterator(train_dataset(ds.splits["train"], ds.tasks, 60, 0, indices=ds.info["train_indices"]),
                        prefetch=0)
    origins = np.concatenate([_origin(next(it)["inputs"]) for _ in range(40)])
    np.testing.assert_allclose(np.bincount(origins, minlength=3) / len(origins), rates, atol=0.02)


def test_training_order_is_deterministic_and_resumable():
    def batches(ds, n, state=None, seed=3):
        pipeline = train_dataset(ds.splits["train"], ds.tasks, 16, seed, indices=ds.info["train_indices"])
        it = train_iterator(pipeline, prefetch=0)
        if state is not None:
            it.set_state(state)
        return it, [next(it)["inputs"][:, 0].tolist() for _ in range(n)]

    _, first = batches(_three(), 6)
    _, again = batches(_three(), 6)
    _, other = batches(_three(), 6, seed=4)  # the run's seed (config.seed) changes the order
    assert first == again and first != other
    it, _ = batches(_three(), 2)
    _, resumed = batches(_three(), 4, state=it.get_state())
    assert resumed == first[2:]


def test_batches_mask_foreign_tasks_and_keep_partial_labels():
    ds = _three()
    assert [t.name for t in ds.tasks] == ["a1", "a2", "b1", "c1"]
    src = ds.splits["train"]
    pos = np.array([0, 600, 1800, 3, 601, 4199])  # a0, b0, c0, a3, b1, c2399
    batch = src.get_batch(pos)
    np.testing.assert_array_equal(batch["inputs"][:, 0], [0, 10_000, 20_000, 3, 10_001, 22_399])
    m, t = batch["masks"], batch["targets"]
    np.testing.assert_array_equal(m["a1"], [1, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(m["a2"], [0, 0, 0, 0, 0, 0])  # a0 and a3 are unlabelled for a2
    np.testing.assert_array_equal(src.get_batch(np.array([1, 2, 3]))["masks"]["a2"], [1, 1, 0])
    np.testing.assert_array_equal(m["b1"], [0, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(m["c1"], [0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(t["b1"], [0, 0, 0, 0, 1, 0])  # b1 targets = index % 2; others zero
    np.testing.assert_array_equal(t["c1"], [0, 0, 0, 0, 0, 1])
    assert all(v.dtype == np.int32 for v in t.values()) and all(v.dtype == np.float32 for v in m.values())


def test_zero_fill_keeps_target_and_mask_shapes():
    dense = Dataset("d", (Task("depth", "regression", out_dim=2),), (3,), {"train": ArraySource(
        np.ones((500, 3), np.float32), {"depth": np.full((500, 2), 5.0, np.float32)},
        {"depth": np.ones((500, 2), np.float32)})})
    ds = combine([_component("a", 500, ["a1"], 0), dense])
    batch = ds.splits["train"].get_batch(np.array([0, 500]))
    np.testing.assert_array_equal(batch["targets"]["depth"], [[0, 0], [5, 5]])
    np.testing.assert_array_equal(batch["masks"]["depth"], [[0, 0], [1, 1]])
    test = ds.splits["test"].get_batch(np.arange(3))  # only "a" has a test split: depth all masked
    assert set(ds.splits) == {"train", "test"} and test["masks"]["depth"].shape == (3, 2)
    assert test["masks"]["depth"].sum() == 0 and test["masks"]["a1"].sum() == 3


def test_eval_splits_concatenate_components():
    ds = _three()
    test = ds.splits["test"]
    assert len(test) == 21 and set(ds.splits) == {"train", "test", "validation"}
    batches = list(eval_batches(test, ds.tasks, 8))
    x = np.concatenate([b["inputs"] for b in batches])[:21]
    np.testing.assert_array_equal(_origin(x), [0] * 7 + [1] * 7 + [2] * 7)
    labelled = {k: int(sum(b["masks"][k].sum() for b in batches)) for k in ("a1", "b1", "c1")}
    assert labelled == {"a1": 7, "b1": 7, "c1": 7}
    val = ds.splits["validation"].get_batch(np.arange(7))  # only component b has a validation split
    assert val["masks"]["b1"].sum() == 7 and val["masks"]["a1"].sum() == 0 and val["masks"]["c1"].sum() == 0


def test_bad_components():
    with pytest.raises(ValueError, match="task 'x' is defined by both component 0:a and component 1:b"):
        combine([_component("a", 50, ["x"], 0), _component("b", 50, ["x"], 1)])
    with pytest.raises(ValueError, match=r"input shapes differ \(0:a \(3,\), 1:b \(4,\)\)"):
        combine([_component("a", 50, ["x"], 0), _component("b", 50, ["y"], 1, shape=(4,))])
    with pytest.raises(ValueError, match="at least one component"):
        combine([])


def _multitab(tasks, features=4, **kw):
    return dict(name="multitab", num_tasks=2, num_features=features, rho=0.0, degrees=[1, 1], noise=0.1,
                num_test=40, seed=0, tasks=tasks, **{"num_train": 500, **kw})


def test_build_from_config_via_registry():
    cfg = mlc.ConfigDict(dict(name="mixture", sampling="proportional", cap=0, temperature=1.0, seed=0,
                              data_dir="", components=[_multitab(["t0"]), _multitab(["t1"], num_train=1500)]))
    ds = build_dataset(cfg)
    assert [t.name for t in ds.tasks] == ["t0", "t1"] and ds.input_shape == (4,)
    np.testing.assert_allclose(ds.info["mixing_rates"], [0.25, 0.75])
    assert len(ds.splits["train"]) == 2000 and len(ds.splits["test"]) == 80
    cfg.sampling, cfg.cap = "proportional", 500
    np.testing.assert_allclose(build_dataset(cfg).info["mixing_rates"], [0.5, 0.5])
    batch = next(train_iterator(train_dataset(ds.splits["train"], ds.tasks, 32, 0,
                                              indices=ds.info["train_indices"]), prefetch=0))
    np.testing.assert_array_equal(batch["masks"]["t0"] + batch["masks"]["t1"], np.ones(32))


def test_build_errors_name_the_components():
    def cfg(*components):
        return mlc.ConfigDict(dict(name="mixture", sampling="uniform", components=list(components)))

    with pytest.raises(ValueError, match=r"task 't0' is defined by both component components\[0\]"):
        build_dataset(cfg(_multitab([]), _multitab([])))
    with pytest.raises(ValueError, match=r"input shapes differ .*components\[1\] \('multitab'\) \(5,\)"):
        build_dataset(cfg(_multitab(["t0"]), _multitab(["t1"], features=5)))
    with pytest.raises(ValueError, match="non-empty list"):
        build_dataset(cfg())
    with pytest.raises(ValueError, match=r"components\[0\]: missing 'name'"):
        build_dataset(cfg({"num_train": 3}))


def test_single_task_components_carry_their_task_ids():
    """Every component one task: each example's ``task_ids`` entry is its component's task, in the run's
    task order after ``filter_tasks`` (here reordered), and ``task_per_example`` keeps them."""
    mix = combine([_component("b", 300, ["b1"], 10_000), _component("c", 300, ["c1"], 20_000)])
    assert mix.info["task_ids"] and not _three().info["task_ids"]
    tasks = (mix.tasks[1], mix.tasks[0])  # c1 first
    for per_example in (False, True):
        batch = next(iter(train_dataset(mix.splits["train"], tasks, 64, seed=3, indices=mix.info["train_indices"],
                                        task_per_example=per_example)))
        origin = _origin(batch["inputs"])  # 1: component b, 2: component c
        np.testing.assert_array_equal(batch["task_ids"], np.where(origin == 2, 0, 1))
        np.testing.assert_array_equal(batch["masks"]["c1"], (origin == 2).astype(np.float32))
    assert "task_ids" not in next(iter(train_dataset(_three().splits["train"], _three().tasks, 16, seed=0)))
