"""CIFAR100-MTL: the fine -> superclass table, label/mask layout and the tfds source (mocked, offline)."""

import ml_collections as mlc
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mtljax.data import build_dataset, eval_batches, train_dataset, train_iterator
from mtljax.data import cifar100_mtl as c100
from mtljax.config import ConfigError
from mtljax.data.tfds_util import DatasetNotPreparedError, read_examples

# The standard CIFAR-100 fine -> coarse table as commonly published (fine ids in alphabetical order),
# an independent check of the table the module derives from superclass membership by name.
PUBLISHED_COARSE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4,
    18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19,
    5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
]


def _cfg(**kw):
    return mlc.ConfigDict({"name": "cifar100_mtl", "data_dir": "", **kw})


def test_every_superclass_has_five_fine_classes_and_every_fine_class_one_superclass():
    assert len(c100.TASK_NAMES) == 20 and len(c100.FINE_NAMES) == 100
    assert len(set(c100.FINE_NAMES)) == 100  # no fine class listed under two superclasses
    assert list(c100.FINE_NAMES) == sorted(c100.FINE_NAMES)
    assert np.bincount(c100.FINE_TO_COARSE, minlength=20).tolist() == [5] * 20
    for c in range(20):
        assert sorted(c100.FINE_TO_POSITION[c100.FINE_TO_COARSE == c].tolist()) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(c100.FINE_TO_COARSE, PUBLISHED_COARSE)
    assert c100.FINE_NAMES[0] == "apple" and c100.TASK_NAMES[c100.FINE_TO_COARSE[0]] == "fruit_and_vegetables"
    assert c100.FINE_TO_POSITION[c100.FINE_NAMES.index("whale")] == 4  # last of aquatic mammals


def test_labels_to_batch_labels_exactly_one_task_per_example():
    fine = np.array([0, 4, 99, 55])  # apple, beaver, worm, otter
    targets, masks = c100.labels_to_batch(fine)
    assert set(targets) == set(c100.TASK_NAMES)
    np.testing.assert_array_equal(sum(masks.values()), np.ones(4))
    np.testing.assert_array_equal(masks["aquatic_mammals"], [0, 1, 0, 1])
    np.testing.assert_array_equal(targets["aquatic_mammals"], [0, 0, 0, 2])  # beaver 0, otter 2
    np.testing.assert_array_equal(targets["non_insect_invertebrates"], [0, 0, 4, 0])  # worm
    assert all(t.dtype == np.int32 for t in targets.values())
    assert all(m.dtype == np.float32 for m in masks.values())


def test_mocked_tfds_batches_follow_the_raw_labels():
    with tfds.testing.mock_data(num_examples=6):
        ds = build_dataset(_cfg())
        raw = tfds.data_source("cifar100", split="train")
        idx = np.array([5, 0, 3])
        batch = ds.splits["train"].get_batch(idx)
        records = [raw[int(i)] for i in idx]
    assert [t.name for t in ds.tasks] == list(c100.TASK_NAMES)
    assert all(t.kind == "multiclass" and t.num_classes == 5 for t in ds.tasks)
    assert ds.input_shape == (32, 32, 3) and set(ds.splits) == {"train", "test"}
    assert len(ds.splits["train"]) == 6
    x = batch["inputs"]
    assert x.shape == (3, 32, 32, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    np.testing.assert_allclose(x, np.stack([r["image"] for r in records]) / 255.0, rtol=1e-6)
    for row, r in enumerate(records):
        fine = int(r["label"])
        own = c100.TASK_NAMES[c100.FINE_TO_COARSE[fine]]
        for name in c100.TASK_NAMES:
            assert batch["masks"][name][row] == (1.0 if name == own else 0.0)
            want = c100.FINE_TO_POSITION[fine] if name == own else 0
            assert batch["targets"][name][row] == want


def test_normalize_and_pipelines():
    with tfds.testing.mock_data(num_examples=8):
        plain = build_dataset(_cfg())
        normed = build_dataset(_cfg(normalize=True))
        a = plain.splits["test"].get_batch(np.arange(4))["inputs"]
        b = normed.splits["test"].get_batch(np.arange(4))["inputs"]
        train = next(train_iterator(train_dataset(plain.splits["train"], plain.tasks, 4, seed=0), prefetch=0))
        evals = list(eval_batches(plain.splits["test"], plain.tasks, 8))
    np.testing.assert_allclose(b, (a - c100.MEAN) / c100.STD, rtol=1e-5, atol=1e-6)
    assert train["inputs"].shape == (4, 32, 32, 3)
    assert len(evals) == 1 and sum(m.sum() for m in evals[0]["masks"].values()) == 8


def test_not_prepared_is_one_clear_line(tmp_path):
    with pytest.raises(DatasetNotPreparedError) as err:
        build_dataset(_cfg(data_dir=str(tmp_path)))
    msg = str(err.value)
    assert isinstance(err.value, ConfigError) and "\n" not in msg
    assert msg.startswith("config.data.name: 'cifar100_mtl': tfds dataset 'cifar100' is not prepared")
    assert str(tmp_path) in msg and "tfds build cifar100" in msg and "--config.data.data_dir" in msg


def test_read_examples_uses_batched_reads_when_available():
    class Batched(list):
        calls = []

        def __getitems__(self, keys):
            self.calls.append(list(keys))
            return [self[k] for k in keys]

    src = Batched([{"v": i} for i in range(5)])
    assert [r["v"] for r in read_examples(src, np.array([4, 1]))] == [4, 1]
    assert Batched.calls == [[4, 1]]
    assert [r["v"] for r in read_examples([{"v": 7}, {"v": 8}], [1])] == [8]  # no __getitems__
    assert read_examples(src, np.array([], np.int64)) == []


def test_prepared_but_unreadable_data_gets_its_own_line(monkeypatch, tmp_path):
    class Prepared:
        data_dir = str(tmp_path / "cifar100" / "3.0.2")

        def is_prepared(self):
            return True

    def refuse(*args, **kwargs):
        raise NotImplementedError("Random access for file format TFRECORD is not supported.\nmore")

    monkeypatch.setattr(tfds, "data_source", refuse)
    monkeypatch.setattr(tfds, "builder", lambda *a, **k: Prepared())
    with pytest.raises(ValueError) as err:
        build_dataset(_cfg(data_dir=str(tmp_path)))
    msg = str(err.value)
    assert not isinstance(err.value, DatasetNotPreparedError) and "\n" not in msg
    assert "cannot open split 'train'" in msg and "TFRECORD is not supported" in msg
    assert "--file_format=array_record" in msg and str(tmp_path) in msg
