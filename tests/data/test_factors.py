"""Factors: deterministic, independent factors, and labels read back from the pixels alone (connected
components, hue by ``colorsys``, centroids, areas, second moments)."""

import colorsys

import numpy as np
import pytest
from scipy import ndimage

from mtljax.config import ConfigError, base_config
from mtljax.data import build_dataset
from mtljax.data.factors import (BACKGROUNDS, CHUNK, CLASSES, COLOURS, DOWNSTREAM_TASKS, FACTORS, PRETRAIN_TASKS,
                                  GAP, RANGES, SHAPES, TEXTURES, generate, sample_factors)

S = 32
EIGHT = np.ones((3, 3), bool)  # 8-connectivity


def _cfg(**kw):
    c = base_config().data
    c.name, c.image_size, c.num_train, c.num_test = "factors", S, 300, 100
    for k, v in kw.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def clean():
    """1,500 noise-free images, their targets and masks."""
    return generate(1500, S, 4, seed=7, pixel_noise=0.0)


def _units(name, target):
    lo, hi = RANGES[name]
    return lo + (np.asarray(target) + 1) / 2 * (hi - lo)


def test_build_shapes_dtypes_ranges_and_determinism():
    ds = build_dataset(_cfg())
    assert [t.name for t in ds.tasks] == list(FACTORS) and ds.input_shape == (S, S, 3)
    for t in ds.tasks:
        n = len(CLASSES[t.name]) if t.name in CLASSES else 4 if t.name == "count" else 0
        assert (t.kind, t.num_classes) == (("multiclass", n) if n else ("regression", 0))
    b = ds.splits["train"].get_batch(np.arange(300))
    x = b["inputs"]
    assert x.shape == (300, S, S, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    for t in ds.tasks:
        y = b["targets"][t.name]
        if t.kind == "regression":
            assert y.dtype == np.float32 and -1 <= y.min() and y.max() <= 1
        else:
            assert y.dtype == np.int32 and 0 <= y.min() and y.max() < t.num_classes
    # orientation is unlabelled exactly where it cannot be seen; every other task is fully labelled
    free = np.isin(b["targets"]["shape"], [SHAPES.index("disk"), SHAPES.index("ring")])
    np.testing.assert_array_equal(b["masks"]["orientation"], (~free).astype(np.float32))
    assert all(b["masks"][k].min() == 1 for k in FACTORS if k != "orientation")

    again = build_dataset(_cfg()).splits["train"].get_batch(np.arange(300))
    np.testing.assert_array_equal(x, again["inputs"])
    for k in FACTORS:
        np.testing.assert_array_equal(b["targets"][k], again["targets"][k])
    assert not np.array_equal(x, build_dataset(_cfg(seed=1)).splits["train"].get_batch(np.arange(300))["inputs"])
    test = ds.splits["test"].get_batch(np.arange(100))["inputs"]
    assert len(ds.splits["test"]) == 100
    assert not any((np.abs(x - t).max(axis=(1, 2, 3)) < 1e-6).any() for t in test)  # train, test: own streams


def test_chunks_do_not_depend_on_the_size_asked_for():
    small, ys, _ = generate(CHUNK, 16, 4, seed=2)
    large, yl, _ = generate(CHUNK + 5, 16, 4, seed=2)
    np.testing.assert_array_equal(small, large[:CHUNK])
    np.testing.assert_array_equal(ys["size"], yl["size"][:CHUNK])


def test_every_class_occurs_and_factors_are_independent(clean):
    _, y, _ = clean
    for name, classes in {**CLASSES, "count": range(4)}.items():
        assert np.bincount(y[name], minlength=len(classes)).min() > 1500 / len(classes) / 2, name
    for name in RANGES:
        assert y[name].min() < -0.95 and y[name].max() > 0.95, name
    table = np.stack([y[k].astype(np.float64) for k in FACTORS])
    corr = np.corrcoef(table) - np.eye(len(FACTORS))
    assert np.abs(corr).max() < 0.1, corr  # 1,500 draws: |r| ~ 0.026 for independent factors


def test_objects_keep_apart_and_inside_the_frame():
    f = sample_factors(30_000, 4, np.random.default_rng(0))  # geometry only, nothing drawn
    centres, radii = f["centres"], f["radii"]
    present = radii > 0
    np.testing.assert_array_equal(present.sum(1), f["count"])
    assert (radii[:, 1:].max(1) < 0.81 * radii[:, 0]).all()  # the main object is the largest
    lo, hi = centres - radii[..., None], centres + radii[..., None]
    assert (lo[present] >= 0).all() and (hi[present] <= 1).all()
    dist = np.linalg.norm(centres[:, :, None] - centres[:, None], axis=-1)
    pairs = present[:, :, None] & present[:, None] & ~np.eye(4, dtype=bool)
    assert (dist - radii[:, :, None] - radii[:, None] >= GAP - 1e-9)[pairs].all()


def test_splits_partition_the_factors():
    assert set(PRETRAIN_TASKS) | set(DOWNSTREAM_TASKS) == set(FACTORS)
    assert not set(PRETRAIN_TASKS) & set(DOWNSTREAM_TASKS) and len(DOWNSTREAM_TASKS) >= 6
    ds = build_dataset(_cfg(tasks=PRETRAIN_TASKS, num_train=8, num_test=8)).select_tasks(PRETRAIN_TASKS)
    assert [t.name for t in ds.tasks] == list(PRETRAIN_TASKS)


def _objects(x):
    """Object pixels: objects are saturated colours on grey backgrounds."""
    return x.max(-1) - x.min(-1) > 0.15


def test_count_colour_position_and_size_read_from_the_pixels(clean):
    x, y, _ = clean
    inside = _objects(x)
    ratios = {s: [] for s in SHAPES}  # pixel area of the main object over π size²
    offsets = []
    for i in range(len(x)):
        labels, n = ndimage.label(inside[i], EIGHT)
        assert n == y["count"][i] + 1, i  # objects never touch
        hue = colorsys.rgb_to_hsv(*x[i][inside[i]].mean(0))[0]
        assert round(hue * len(COLOURS)) % len(COLOURS) == y["colour"][i], i
        areas = np.bincount(labels.ravel())[1:]
        main = labels == 1 + areas.argmax()  # the main object is the largest
        centroid = np.array(ndimage.center_of_mass(main))[::-1] + 0.5  # (x, y) in pixels
        offsets.append(centroid - S * np.array([_units("pos_x", y["pos_x"][i]), _units("pos_y", y["pos_y"][i])]))
        shape = SHAPES[y["shape"][i]]
        ratios[shape].append(main.sum() / (np.pi * (S * _units("size", y["size"][i])) ** 2))
        holes = ndimage.binary_fill_holes(main).sum() > main.sum()
        assert holes == (shape == "ring"), (i, shape)
    offsets = np.abs(offsets)
    assert offsets.mean() < 0.15 and offsets.max() < 0.6, (offsets.mean(), offsets.max())
    for shape, r in ratios.items():  # size is √(area / π), whatever the shape
        assert abs(np.median(r) - 1) < 0.03 and np.percentile(r, 90) < 1.1, (shape, np.median(r))
    sizes = _units("size", y["size"])
    for k, shape in enumerate(SHAPES):
        sel = y["shape"] == k
        assert np.corrcoef(sizes[sel] ** 2, np.array(ratios[shape]) * sizes[sel] ** 2)[0, 1] > 0.95, shape


def test_orientation_texture_and_background_read_from_the_pixels(clean):
    x, y, m = clean
    inside = _objects(x)
    rows, cols = np.mgrid[:S, :S]
    errors = []
    for i in np.flatnonzero((y["shape"] == SHAPES.index("ellipse")) & (y["count"] == 0)):
        px, py = cols[inside[i]], -rows[inside[i]]  # y up: orientation is counter-clockwise as seen
        cov = np.cov(px, py)
        angle = 0.5 * np.degrees(np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1]))  # the long axis
        errors.append(angle - _units("orientation", y["orientation"][i]))
    assert len(errors) > 30 and np.abs(errors).mean() < 3 and np.abs(errors).max() < 10, errors
    assert m["orientation"][y["shape"] == SHAPES.index("ellipse")].min() == 1

    brightness = x.max(-1)
    dark = [[] for _ in TEXTURES]
    for i in range(len(x)):
        b = brightness[i][inside[i]]
        dark[y["texture"][i]].append(np.mean(b < 0.7 * b.max()))
    plain, stripes, checker, dots = (np.median(d) for d in dark)
    assert plain == 0 and 0.1 < dots < 0.35 and 0.35 < stripes < 0.65 and 0.35 < checker < 0.65

    for k, name in enumerate(BACKGROUNDS):
        grey = [x[i, ..., 0][~inside[i]] for i in np.flatnonzero(y["background"] == k)]
        spread = np.array([g.std() for g in grey])
        level = np.array([g.mean() for g in grey])
        if name in ("dark", "light"):
            assert spread.max() < 1e-6 and ((level < 0.25) if name == "dark" else (level > 0.65)).all(), name
        else:
            assert spread.min() > 0.03, name


@pytest.mark.parametrize("key,value,message", [
    ("tasks", ("shape", "hue"), "config.data.tasks: factors has no task.*'hue'"),
    ("image_size", 8, "config.data.image_size: 8 is too small"),
    ("num_train", 0, "config.data.num_train: must be a positive integer"),
    ("num_test", -3, "config.data.num_test: must be a positive integer"),
    ("max_objects", 5, "config.data.max_objects: factors draws 2..4"),
    ("max_objects", 1, "config.data.max_objects: factors draws 2..4"),
    ("pixel_noise", -0.1, "config.data.pixel_noise: must be >= 0"),
    ("seed", -1, "config.data.seed: must be an integer >= 0"),
])
def test_bad_config_is_a_one_line_error(key, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        build_dataset(_cfg(**{key: value}))
    assert "\n" not in str(err.value)


def test_few_shot_training_sets_are_balanced_deterministic_and_drawn_as_labelled():
    """shots K = 4 on count (4 classes), texture (4), background (5): n = 20 (the least multiple of
    lcm(4, 4, 5) = 20 >= 4 × 5), every class exactly n / C times; the test split is untouched; the
    pixels show the forced count (connected components), background (flat dark / light levels) and
    texture (plain objects have no shaded pixels)."""
    tasks = ("count", "texture", "background", "size")
    cfg = _cfg(tasks=tasks, shots=4, pixel_noise=0.0, num_train=300)
    ds = build_dataset(cfg)
    train = ds.splits["train"]
    assert len(train) == 20
    b = train.get_batch(np.arange(20))
    y = b["targets"]
    assert np.bincount(y["count"], minlength=4).tolist() == [5] * 4
    assert np.bincount(y["texture"], minlength=4).tolist() == [5] * 4
    assert np.bincount(y["background"], minlength=5).tolist() == [4] * 5
    again = build_dataset(cfg).splits["train"].get_batch(np.arange(20))
    np.testing.assert_array_equal(b["inputs"], again["inputs"])
    other = build_dataset(_cfg(tasks=tasks, shots=4, pixel_noise=0.0, seed=3)).splits["train"].get_batch(np.arange(20))
    assert not np.array_equal(y["count"], other["targets"]["count"])  # shuffled by the seed
    full = build_dataset(_cfg(tasks=tasks, pixel_noise=0.0))
    np.testing.assert_array_equal(ds.splits["test"].get_batch(np.arange(100))["inputs"],
                                  full.splits["test"].get_batch(np.arange(100))["inputs"])

    x = b["inputs"]
    inside = _objects(x)
    for i in range(20):
        assert ndimage.label(inside[i], EIGHT)[1] == y["count"][i] + 1, i
        grey = x[i, ..., 0][~inside[i]]
        name = BACKGROUNDS[y["background"][i]]
        if name in ("dark", "light"):
            assert grey.std() < 1e-6 and (grey.mean() < 0.25 if name == "dark" else grey.mean() > 0.65), i
        bright = x[i].max(-1)[inside[i]]
        if TEXTURES[y["texture"][i]] == "plain":
            assert (bright >= 0.7 * bright.max()).all(), i

    # shape (6) and colour (8): lcm 24, n = 48 >= 4 × 8; shape classes 8 times, colour 6
    y = build_dataset(_cfg(tasks=("shape", "colour"), shots=4)).splits["train"].get_batch(np.arange(48))["targets"]
    assert np.bincount(y["shape"]).tolist() == [8] * 6 and np.bincount(y["colour"]).tolist() == [6] * 8


@pytest.mark.parametrize("changes,message", [
    (dict(shots=-1), "config.data.shots: must be an integer >= 0"),
    (dict(shots=True), "config.data.shots: must be an integer >= 0"),
    (dict(shots=4, tasks=("size", "pos_x")), "config.data.shots: few-shot sets need a classification task"),
])
def test_bad_shots_are_one_line_errors(changes, message):
    with pytest.raises(ConfigError, match=message) as err:
        build_dataset(_cfg(**changes))
    assert "\n" not in str(err.value)


def test_shots_on_another_dataset_is_an_error():
    c = base_config().data
    c.shots = 8
    with pytest.raises(ConfigError, match="config.data.shots: multi_digits has no few-shot"):
        build_dataset(c)
