"""Factors: generated images of many independent factors of variation, one task per factor.

A dSprites / 3D-Shapes-like dataset, richer and in colour, that needs no download: the project's
source of pretraining data and of downstream tasks for adaptation. Every
``image_size × image_size`` RGB image (``float32[H, W, 3]`` in [0, 1]; 32×32 in the configs) shows
1..``max_objects`` copies of one object on a grey background. The *main* object is the largest;
the others ("companions") are smaller copies of it (size 0.06–0.08 against 0.10–0.18, see below),
placed anywhere in the frame. No two objects overlap or touch (their bounding circles keep a gap of
5 % of the image side), and every object lies inside the frame.

Factors, each drawn independently and uniformly for every image, and their tasks:

===============  ==========  ======================================================================
task             kind        values
===============  ==========  ======================================================================
``shape``        6 classes   ``SHAPES``: square, disk, triangle (pointing up at orientation 0),
                             cross (a plus sign), ring (inner radius 0.45 of the outer), ellipse
                             (axes 1 : 0.5, long axis horizontal at orientation 0); shared by all
                             objects
``colour``       8 classes   ``COLOURS``: hue ``k · 45°`` (red, orange, lime, green, cyan, azure,
                             violet, magenta) ± 6.75°, saturation 0.75–1, value 0.8–1; shared
``size``         regression  ``√(area / π)`` of the main object (the radius of a disk of the same
                             area), 0.10–0.18 of the image side: objects of one size cover the
                             same area whatever their shape
``pos_x``        regression  centre of the main object, 0.28–0.72 of the image width (left to
                             right)
``pos_y``        regression  centre of the main object, 0.28–0.72 of the image height (top to
                             bottom)
``orientation``  regression  −30°..30°, counter-clockwise as seen; shared. Disks and rings look the
                             same at every angle, so their orientation is unlabelled (mask 0)
``texture``      4 classes   ``TEXTURES``: plain, stripes, checker, dots — parts of the object drawn
                             at 0.6 of its colour, in a pattern of period ``image_size / 8``
                             pixels that turns with the object; shared
``count``        classes     number of objects, 1..``max_objects``; label ``count − 1``
``background``   5 classes   ``BACKGROUNDS``, all grey (objects are saturated colours): dark
                             (level 0.05–0.2), light (0.7–0.85), gradient (0.05–0.2 to 0.6–0.85
                             along a random direction), clouds (smooth noise 0.15–0.75), grid
                             (lines every ``image_size / 4`` pixels)
===============  ==========  ======================================================================

Regression targets are scaled to [−1, 1]: ``2 (v − lo) / (hi − lo) − 1`` with ``(lo, hi) =
RANGES[task]`` (so predicting 0 gives MSE 1/3). Pixel noise ``N(0, pixel_noise²)`` is added last,
then images are clipped to [0, 1]. The orientation range (60°) is less than any shape's symmetry
angle (90° for squares and crosses), so orientation is determined by the image where it is labelled.

Images are generated in chunks of ``CHUNK`` from ``SeedSequence(seed, spawn_key=(split, chunk))``:
deterministic by ``config.data.seed``, train and test from independent streams, memory bounded
for any size, and the first ``k · CHUNK`` images do not depend on how many are asked for.

Few-shot training sets (``config.data.shots = K > 0``; 0, the default, is off): the training split
becomes a balanced set of ``n`` images, ``n`` the smallest multiple of the least common multiple of
the class counts ``C`` of the classification tasks among ``config.data.tasks`` (all the factors when
it is empty) that is at least ``K × max C``. In it every one of those factors takes each of its
``C`` classes exactly ``n / C >= K`` times — ``K`` examples per class at least, exactly ``K`` for the
tasks with the most classes whenever ``K × max C`` is such a multiple (count, texture, background:
``C`` = 4, 4, 5, ``n = 5K`` for ``K`` a multiple of 4, e.g. ``K = 16``: ``n = 80``, 20 images per
count and texture class, 16 per background) — in an order shuffled independently per factor by
``SeedSequence(seed, spawn_key=(2,))``; every other factor (the regression ones, the nuisances) is
drawn as usual from the training stream, given the forced classes. ``num_train`` is then unused;
the test split is unchanged. Deterministic by ``config.data.seed``.

``PRETRAIN_TASKS`` are the factors to pretrain a backbone on (``--config.data.tasks``); ``DOWNSTREAM_TASKS``, the
others, are the tasks to adapt the pretrained model to.
"""

from __future__ import annotations

import numpy as np

from mtljax.config import ConfigError, positive_int, require
from mtljax.data.base import ArraySource, Dataset
from mtljax.tasks import Task

SHAPES = ("square", "disk", "triangle", "cross", "ring", "ellipse")
COLOURS = ("red", "orange", "lime", "green", "cyan", "azure", "violet", "magenta")
TEXTURES = ("plain", "stripes", "checker", "dots")
BACKGROUNDS = ("dark", "light", "gradient", "clouds", "grid")
CLASSES = {"shape": SHAPES, "colour": COLOURS, "texture": TEXTURES, "background": BACKGROUNDS}
RANGES = {"size": (0.10, 0.18), "pos_x": (0.28, 0.72), "pos_y": (0.28, 0.72), "orientation": (-30.0, 30.0)}
FACTORS = ("shape", "colour", "size", "pos_x", "pos_y", "orientation", "texture", "count", "background")
PRETRAIN_TASKS = ("shape", "colour", "size")
DOWNSTREAM_TASKS = ("count", "texture", "background", "orientation", "pos_x", "pos_y")
MAX_OBJECTS = 4  # more copies do not always fit next to a large main object
MIN_IMAGE_SIZE = 16
FEW_SHOT = True  # config.data.shots (mtljax.data.registry)
CHUNK = 2048  # images generated at a time (part of the definition of the stream: keep it fixed)

COMPANION_SIZE = (0.06, 0.08)  # size of the companions, below the main object's smallest
GAP = 0.05  # between the bounding circles of two objects, in image sides (> √2 pixels at 32)
SHADE = 0.6  # brightness of the patterned parts of a textured object
RING_HOLE = 0.45  # inner radius of a ring, in outer radii
# area of each shape over its bounding radius squared (see _shape); size = √(area / π)
AREAS = {"square": 2.0, "disk": np.pi, "triangle": 3 * np.sqrt(3) / 4, "cross": 2 * 1.9 * 0.6 - 0.6 ** 2,
         "ring": np.pi * (1 - RING_HOLE ** 2), "ellipse": np.pi / 2}
_ROTATION_FREE = (SHAPES.index("disk"), SHAPES.index("ring"))


def tasks(max_objects: int = MAX_OBJECTS) -> tuple[Task, ...]:
    """One task per factor, in the order of ``FACTORS``."""
    out = []
    for name in FACTORS:
        if name in CLASSES:
            out.append(Task(name, "multiclass", num_classes=len(CLASSES[name])))
        elif name == "count":
            out.append(Task(name, "multiclass", num_classes=max_objects))
        else:
            out.append(Task(name, "regression"))
    return tuple(out)


def default_task_names(cfg) -> list[str]:
    """The tasks of ``cfg = config.data`` when ``tasks`` is empty (all factors), without building it."""
    return list(FACTORS)


def num_classes(name: str, max_objects: int = MAX_OBJECTS) -> int:
    """Classes of the classification factor ``name`` (0 for a regression factor)."""
    return len(CLASSES[name]) if name in CLASSES else max_objects if name == "count" else 0


def shot_labels(shots: int, task_names, max_objects: int = MAX_OBJECTS, seed: int = 0) -> dict[str, np.ndarray]:
    """The forced class labels (``count``: ``count − 1``) of a balanced few-shot training set with
    ``shots`` examples of every class of the classification tasks among ``task_names`` (module
    docstring): ``{task: int array [n]}``, every class of a ``C``-class task exactly ``n / C`` times."""
    counts = {t: num_classes(t, max_objects) for t in task_names if num_classes(t, max_objects)}
    if not counts:
        return {}
    lcm = int(np.lcm.reduce(list(counts.values())))
    n = -(-shots * max(counts.values()) // lcm) * lcm
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    return {t: rng.permutation(np.tile(np.arange(c), n // c)) for t, c in counts.items()}


# ------------------------------------------------------------------------------------------ factors
def sample_factors(num: int, max_objects: int, rng: np.random.Generator,
                   forced: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Factors and nuisances of ``num`` images (every length-``N`` array, ``centres [N, K, 2]`` and
    bounding ``radii [N, K]`` in image sides, slot 0 the main object, radius 0 for absent objects).
    ``forced``: class labels (``[N]``, as :func:`targets` gives them) that replace the drawn ones of
    those classification factors; everything else is drawn as usual, given them."""
    f = {name: rng.integers(0, len(values), num) for name, values in CLASSES.items()}
    f["count"] = rng.integers(1, max_objects + 1, num)
    for name, labels in (forced or {}).items():
        f[name] = np.asarray(labels, np.int64) + (1 if name == "count" else 0)
    for name, (lo, hi) in RANGES.items():
        f[name] = rng.uniform(lo, hi, num)
    f["hue"] = (f["colour"] + rng.uniform(-0.15, 0.15, num)) / len(COLOURS)
    f["saturation"] = rng.uniform(0.75, 1.0, num)
    f["value"] = rng.uniform(0.8, 1.0, num)
    f["bg_level"] = rng.uniform(0.0, 1.0, (num, 2))  # two levels per background, scaled by its kind
    f["bg_angle"] = rng.uniform(0.0, 2 * np.pi, num)
    f["bg_grid"] = rng.uniform(0.0, 1.0, (num, 5, 5))  # clouds: coarse noise; grid: its phase
    sizes = np.concatenate([f["size"][:, None], rng.uniform(*COMPANION_SIZE, (num, max_objects - 1))], 1)
    sizes[np.arange(max_objects)[None, :] >= f["count"][:, None]] = 0.0  # absent objects
    bounding = np.sqrt(np.pi / np.array([AREAS[s] for s in SHAPES]))[f["shape"], None]  # radius / size
    f["radii"] = sizes * bounding
    f["centres"] = _place(np.stack([f["pos_x"], f["pos_y"]], -1), f["radii"], rng)
    return f


def _place(main_xy: np.ndarray, radii: np.ndarray, rng: np.random.Generator, candidates: int = 64,
           rounds: int = 100) -> np.ndarray:
    """Centres ``[N, K, 2]`` of objects of bounding ``radii [N, K]`` (0: absent), object 0 at ``main_xy``.

    Companions are placed one after the other, each at the first of ``candidates`` uniform positions
    that keeps clear of the objects already placed; an image where some companion finds no room
    (earlier ones can block it) starts again from its main object in the next round.
    """
    n, max_objects = radii.shape
    centres = np.zeros((n, max_objects, 2))
    centres[:, 0] = main_xy
    todo = np.flatnonzero(radii[:, 1] > 0)
    for _ in range(rounds):
        if not todo.size:
            return centres
        placed = np.ones(todo.size, bool)
        for k in range(1, max_objects):
            rows = np.flatnonzero(placed & (radii[todo, k] > 0))
            img = todo[rows]
            rk = radii[img, k, None, None]
            xy = rk + (1 - 2 * rk) * rng.uniform(0, 1, (img.size, candidates, 2))  # [m, C, 2] in frame
            dist = np.linalg.norm(xy[:, :, None] - centres[img, None, :k], axis=-1)  # [m, C, k]
            ok = np.all(dist >= radii[img, None, :k] + rk + GAP, axis=-1)  # [m, C]
            found = ok.any(1)
            centres[img[found], k] = xy[found, ok.argmax(1)[found]]
            placed[rows[~found]] = False
        todo = todo[~placed]
    raise RuntimeError(f"factors: could not place the objects of {todo.size} images")  # never seen


def targets(f: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Task targets (int32 classes, float32 regression values in [−1, 1]) and masks of factors."""
    out = {name: f[name].astype(np.int32) for name in CLASSES}
    out["count"] = (f["count"] - 1).astype(np.int32)
    for name, (lo, hi) in RANGES.items():
        out[name] = (2 * (f[name] - lo) / (hi - lo) - 1).astype(np.float32)
    masks = {"orientation": (~np.isin(f["shape"], _ROTATION_FREE)).astype(np.float32)}
    return {name: out[name] for name in FACTORS}, masks


# ---------------------------------------------------------------------------------------- rendering
def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``[...]`` hue (in turns), saturation, value -> ``[..., 3]`` RGB."""
    k = (np.array([5.0, 3.0, 1.0]) + 6 * h[..., None]) % 6
    return v[..., None] * (1 - s[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1))


def _background(f: dict[str, np.ndarray], idx: np.ndarray, kind: int, s: int) -> np.ndarray:
    """Grey backgrounds ``[n, S, S]`` of images ``idx``, all of background ``kind``."""
    lo, hi = f["bg_level"][idx, 0, None, None], f["bg_level"][idx, 1, None, None]
    grid = (np.arange(s) + 0.5) / s
    x, y = grid[None, None, :], grid[None, :, None]
    name = BACKGROUNDS[kind]
    if name == "dark":
        return np.broadcast_to(0.05 + 0.15 * lo, (len(idx), s, s))
    if name == "light":
        return np.broadcast_to(0.7 + 0.15 * lo, (len(idx), s, s))
    if name == "gradient":
        c, sn = np.cos(f["bg_angle"][idx])[:, None, None], np.sin(f["bg_angle"][idx])[:, None, None]
        t = 0.5 + ((x - 0.5) * c + (y - 0.5) * sn) / (np.abs(c) + np.abs(sn))  # 0..1 corner to corner
        return (0.05 + 0.15 * lo) + t * ((0.6 + 0.25 * hi) - (0.05 + 0.15 * lo))
    if name == "clouds":  # bilinear interpolation of a 5 × 5 grid of levels
        g = 0.15 + 0.6 * f["bg_grid"][idx]
        pos = grid * 4
        i = np.minimum(pos.astype(int), 3)
        w = (pos - i)[None]
        rows = g[:, i] * (1 - w[..., None]) + g[:, i + 1] * w[..., None]  # [n, S, 5]
        return rows[:, :, i] * (1 - w[:, None]) + rows[:, :, i + 1] * w[:, None]
    period = max(s // 4, 2)  # grid
    phase = (f["bg_grid"][idx, :2, 0] * period).astype(int)
    px = np.arange(s)
    on_x = (px[None, :] + phase[:, :1]) % period == 0
    on_y = (px[None, :] + phase[:, 1:]) % period == 0
    return 0.15 + 0.15 * lo + 0.35 * (on_x[:, None, :] | on_y[:, :, None])


def _shape(kind: int, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Inside-masks of shape ``kind`` in object coordinates (``v`` up), bounding radius ``r``."""
    name = SHAPES[kind]
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= r / np.sqrt(2)
    if name in ("disk", "ring"):
        rho2 = u * u + v * v
        inside = rho2 <= r * r
        return inside & (rho2 >= (RING_HOLE * r) ** 2) if name == "ring" else inside
    if name == "triangle":  # equilateral, vertex up; inradius r / 2
        half = r / 2
        return ((-v <= half) & (0.5 * v + np.sqrt(3) / 2 * u <= half)
                & (0.5 * v - np.sqrt(3) / 2 * u <= half))
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        arm, length = 0.3 * r, 0.95 * r
        return ((au <= arm) & (av <= length)) | ((av <= arm) & (au <= length))
    return (u / r) ** 2 + (v / (0.5 * r)) ** 2 <= 1  # ellipse


def _shaded(kind: int, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Where texture ``kind`` draws the object darker (object coordinates in pixels)."""
    name = TEXTURES[kind]
    half = period / 2
    if name == "plain":
        return np.zeros(u.shape, bool)
    if name == "stripes":
        return np.floor(u / half) % 2 == 1
    if name == "checker":
        return (np.floor(u / half) + np.floor(v / half)) % 2 == 1
    du, dv = u % period - half, v % period - half  # dots
    return du * du + dv * dv <= (0.3 * period) ** 2


def draw(f: dict[str, np.ndarray], image_size: int, pixel_noise: float, rng: np.random.Generator) -> np.ndarray:
    """Images ``float32[N, S, S, 3]`` of sampled factors ``f``."""
    s, n = image_size, len(f["shape"])
    grey = np.empty((n, s, s), np.float32)
    for kind in range(len(BACKGROUNDS)):
        idx = np.flatnonzero(f["background"] == kind)
        grey[idx] = _background(f, idx, kind, s)
    # The objects of an image share colour and texture: draw the union of their masks, and of their
    # shaded parts, once.
    inside = np.zeros((n, s, s), bool)
    shaded = np.zeros((n, s, s), bool)
    theta = np.deg2rad(f["orientation"]).astype(np.float32)
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    px = np.arange(s, dtype=np.float32) + 0.5
    for k in range(f["radii"].shape[1]):
        present = f["radii"][:, k] > 0
        for kind in range(len(SHAPES)):
            idx = np.flatnonzero(present & (f["shape"] == kind))
            if not idx.size:
                continue
            cx, cy = (f["centres"][idx, k] * s).astype(np.float32).T
            dx = px[None, None, :] - cx[:, None, None]
            dy = cy[:, None, None] - px[None, :, None]  # up is positive
            u = dx * cos[idx] + dy * sin[idx]  # [n, S, S]: pixel offsets turned by −orientation
            v = dy * cos[idx] - dx * sin[idx]
            mask = _shape(kind, u, v, (f["radii"][idx, k] * s).astype(np.float32)[:, None, None])
            inside[idx] |= mask
            for tex in range(1, len(TEXTURES)):
                sel = np.flatnonzero(f["texture"][idx] == tex)
                if sel.size:
                    shaded[idx[sel]] |= mask[sel] & _shaded(tex, u[sel], v[sel], s / 8)
    colour = hsv_to_rgb(f["hue"], f["saturation"], f["value"]).astype(np.float32)  # [N, 3]
    images = np.empty((n, s, s, 3), np.float32)
    for ch in range(3):  # channel by channel: twice as fast as broadcasting over [N, S, S, 3]
        c = colour[:, ch, None, None]
        images[..., ch] = np.where(inside, np.where(shaded, np.float32(SHADE) * c, c), grey)
    if pixel_noise:
        images += np.float32(pixel_noise) * rng.standard_normal(images.shape, dtype=np.float32)
    return np.clip(images, 0.0, 1.0, out=images)


def generate(num: int, image_size: int = 32, max_objects: int = MAX_OBJECTS, *, seed: int = 0, stream: int = 0,
             pixel_noise: float = 0.02, forced: dict[str, np.ndarray] | None = None
             ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``num`` images of stream ``stream`` (0 train, 1 test): ``(images float32[N, S, S, 3], targets
    {task: [N]}, masks {task: float32[N]} of the partially labelled tasks)``. ``forced``: class labels
    ``{task: [num]}`` to draw the images with (:func:`shot_labels`)."""
    images, tgts, masks = [], [], []
    for chunk, start in enumerate(range(0, num, CHUNK)):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, chunk)))
        stop = min(num, start + CHUNK)
        f = sample_factors(stop - start, max_objects, rng, {k: v[start:stop] for k, v in (forced or {}).items()})
        images.append(draw(f, image_size, pixel_noise, rng))
        t, m = targets(f)
        tgts.append(t)
        masks.append(m)
    return np.concatenate(images), _concat(tgts), _concat(masks)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def build(cfg) -> Dataset:
    """Config keys (``config.data``): num_train, num_test, image_size, max_objects, pixel_noise, seed,
    shots (few-shot training sets, module docstring); ``tasks`` (checked here, before anything is drawn;
    the experiment selects them)."""
    for key in ("num_train", "num_test", "image_size", "max_objects"):
        positive_int(cfg[key], key)
    require(cfg.image_size >= MIN_IMAGE_SIZE, "image_size",
            f"{cfg.image_size} is too small for factors (>= {MIN_IMAGE_SIZE})")
    require(2 <= cfg.max_objects <= MAX_OBJECTS, "max_objects",
            f"factors draws 2..{MAX_OBJECTS} objects at most (count has >= 2 classes), got {cfg.max_objects}")
    require(isinstance(cfg.seed, int) and cfg.seed >= 0, "seed", f"must be an integer >= 0, got {cfg.seed!r}")
    require(cfg.pixel_noise >= 0, "pixel_noise", f"must be >= 0, got {cfg.pixel_noise}")
    unknown = [t for t in cfg.get("tasks", ()) or () if t not in FACTORS]
    if unknown:
        raise ConfigError(f"factors has no task(s) {unknown}; it has {list(FACTORS)}", "tasks")
    shots = cfg.get("shots", 0)
    require(isinstance(shots, int) and not isinstance(shots, bool) and shots >= 0, "shots",
            f"must be an integer >= 0 (0: off), got {shots!r}")
    forced = {}
    if shots:
        names = list(cfg.get("tasks", ()) or ()) or list(FACTORS)
        forced = shot_labels(shots, names, cfg.max_objects, cfg.seed)
        require(bool(forced), "shots", f"few-shot sets need a classification task among data.tasks={names}; "
                f"factors has {[t for t in FACTORS if num_classes(t)]}")
    num_train = len(next(iter(forced.values()))) if forced else cfg.num_train
    splits = {}
    for stream, (split, num) in enumerate((("train", num_train), ("test", cfg.num_test))):
        x, y, m = generate(num, cfg.image_size, cfg.max_objects, seed=cfg.seed, stream=stream,
                           pixel_noise=float(cfg.pixel_noise), forced=forced if split == "train" else None)
        splits[split] = ArraySource(x, y, m)
    info = {"classes": CLASSES, "ranges": RANGES, "pretrain_tasks": PRETRAIN_TASKS,
            "downstream_tasks": DOWNSTREAM_TASKS, "shots": shots, "num_train": num_train}
    return Dataset("factors", tasks(cfg.max_objects), (cfg.image_size, cfg.image_size, 3), splits, info)
