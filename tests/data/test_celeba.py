"""CelebA: numpy crop/resize, attribute selection and the tfds source (mocked, offline)."""

import ml_collections as mlc
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mtljax.data import build_dataset
from mtljax.data import celeba
from mtljax.data.tfds_util import DatasetNotPreparedError


def _cfg(**kw):
    return mlc.ConfigDict({"name": "celeba", "data_dir": "", **kw})


def test_area_matrix_averages_cells():
    r = celeba.area_matrix(178, 64)
    assert r.shape == (64, 178)
    np.testing.assert_allclose(r.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(r.sum(axis=0), 64 / 178, rtol=1e-5)  # every source pixel counts equally
    np.testing.assert_allclose(celeba.area_matrix(5, 5), np.eye(5), atol=1e-7)
    halves = celeba.area_matrix(4, 2)
    np.testing.assert_allclose(halves, [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])


def test_center_crop_resize():
    img = np.zeros((2, 218, 178, 3), np.uint8)
    img[:, 20:198] = 255  # exactly the central 178x178 square is white
    out = celeba.center_crop_resize(img, 64)
    assert out.shape == (2, 64, 64, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 1.0, rtol=1e-5)
    blocks = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1).repeat(3, axis=3)
    small = celeba.center_crop_resize(blocks, 2)[0, :, :, 0] * 255
    np.testing.assert_allclose(small, [[2.5, 4.5], [10.5, 12.5]], rtol=1e-5)  # 2x2 block means


def test_select_attributes():
    assert celeba.select_attributes([]) == celeba.ATTRIBUTES and len(celeba.ATTRIBUTES) == 40
    assert celeba.select_attributes(["smiling", "Male"]) == ("Smiling", "Male")
    with pytest.raises(ValueError, match="attributes: unknown CelebA attribute"):
        celeba.select_attributes(["smile"])
    with pytest.raises(ValueError, match="repeated"):
        celeba.select_attributes(["Male", "male"])


def test_mocked_tfds_gives_forty_binary_tasks():
    with tfds.testing.mock_data(num_examples=4):
        ds = build_dataset(_cfg(image_size=32))
        raw = tfds.data_source("celeb_a", split="validation")
        batch = ds.splits["validation"].get_batch(np.array([3, 1]))
        records = [raw[3], raw[1]]
    assert set(ds.splits) == {"train", "validation", "test"}
    assert [t.name for t in ds.tasks] == [a.lower() for a in celeba.ATTRIBUTES]
    assert all(t.kind == "binary" for t in ds.tasks) and ds.input_shape == (32, 32, 3)
    x = batch["inputs"]
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    np.testing.assert_allclose(x, celeba.center_crop_resize(np.stack([r["image"] for r in records]), 32))
    for a in celeba.ATTRIBUTES:
        want = [int(bool(r["attributes"][a])) for r in records]
        np.testing.assert_array_equal(batch["targets"][a.lower()], want)
        np.testing.assert_array_equal(batch["masks"][a.lower()], [1.0, 1.0])


def test_attribute_subset_and_default_size():
    cfg = mlc.ConfigDict(dict(name="celeba", data_dir="", attributes=["Smiling", "eyeglasses"]))
    with tfds.testing.mock_data(num_examples=3):
        ds = build_dataset(cfg)
        batch = ds.splits["train"].get_batch(np.arange(3))
    assert [t.name for t in ds.tasks] == ["smiling", "eyeglasses"]
    assert ds.input_shape == (64, 64, 3) and batch["inputs"].shape == (3, 64, 64, 3)
    assert set(batch["targets"]) == {"smiling", "eyeglasses"}


def test_bad_image_size():
    with pytest.raises(ValueError, match="config.data.image_size: 0"):
        build_dataset(_cfg(image_size=0))
    with pytest.raises(ValueError, match="config.data.image_size: 300"):
        build_dataset(_cfg(image_size=300))


def test_not_prepared_is_one_clear_line(tmp_path):
    with pytest.raises(DatasetNotPreparedError) as err:
        build_dataset(_cfg(data_dir=str(tmp_path)))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("config.data.name: 'celeba': tfds dataset 'celeb_a'")
    assert str(tmp_path) in msg and "tfds build celeb_a" in msg
