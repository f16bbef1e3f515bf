"""CIFAR100-MTL: CIFAR-100 split into 20 five-way tasks, one per superclass.

CIFAR-100 has 100 fine classes grouped into 20 superclasses ("coarse classes") of 5 fine classes
each. The multi-task version (used e.g. by Rosenbaum et al., 2018, "Routing Networks") turns each
superclass into its own task: task ``fish`` asks *which of the 5 fish* an image shows. Every image
belongs to exactly one superclass, so it is labelled for one task only: its superclass's task gets
the position (0..4) of the fine class inside the superclass and mask 1; the other 19 tasks get
target 0 and mask 0. Every batch is therefore partially labelled, and each task sees about 1/20 of
the data.

The fine class ids are tfds' ``label`` feature: the 100 fine class names in alphabetical order (the
order of the original ``fine_label_names`` file). The superclass membership below is the standard
CIFAR-100 one, written out by name; :data:`FINE_TO_COARSE` and :data:`FINE_TO_POSITION` are derived
from it (positions follow the alphabetical fine order inside each superclass). Superclass ids follow
the alphabetical superclass order, as tfds' ``coarse_label`` does.

Data is read through ``tfds.data_source('cifar100')`` (prepared once, array_record format), splits
``train`` (50,000) and ``test`` (10,000). Inputs are ``float32[32, 32, 3]`` in [0, 1]; with
``config.data.normalize`` they are standardised per channel by the CIFAR-100 training mean and std.
"""

from __future__ import annotations

import numpy as np

from mtljax.data.base import Dataset
from mtljax.data.tfds_util import open_source, read_examples
from mtljax.tasks import Task

TFDS_NAME = "cifar100"
SPLITS = ("train", "test")

# Superclass (task) name -> its 5 fine classes, in CIFAR-100's alphabetical superclass order.
SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man_made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non_insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
TASK_NAMES: tuple[str, ...] = tuple(SUPERCLASSES)
# tfds label id -> fine class name (alphabetical, as in CIFAR-100's fine_label_names).
FINE_NAMES: tuple[str, ...] = tuple(sorted(n for members in SUPERCLASSES.values() for n in members))


def _fine_tables() -> tuple[np.ndarray, np.ndarray]:
    coarse = np.full(len(FINE_NAMES), -1, np.int32)
    position = np.full(len(FINE_NAMES), -1, np.int32)
    fine_id = {name: i for i, name in enumerate(FINE_NAMES)}
    for c, members in enumerate(SUPERCLASSES.values()):
        for p, name in enumerate(sorted(members, key=fine_id.__getitem__)):
            coarse[fine_id[name]], position[fine_id[name]] = c, p
    return coarse, position


FINE_TO_COARSE, FINE_TO_POSITION = _fine_tables()

# Per-channel statistics of the CIFAR-100 training images (pixel values scaled to [0, 1]).
MEAN = np.array([0.5071, 0.4865, 0.4409], np.float32)
STD = np.array([0.2673, 0.2564, 0.2762], np.float32)


def labels_to_batch(fine: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Targets and masks of all 20 tasks for fine labels ``fine`` (shape ``(B,)``)."""
    fine = np.asarray(fine, np.int64)
    coarse, position = FINE_TO_COARSE[fine], FINE_TO_POSITION[fine]
    targets, masks = {}, {}
    for c, name in enumerate(TASK_NAMES):
        own = coarse == c
        targets[name] = np.where(own, position, 0).astype(np.int32)
        masks[name] = own.astype(np.float32)
    return targets, masks


class Cifar100MTLSource:
    """One split of CIFAR-100 as 20 superclass tasks; ``get_batch`` reads examples in one call."""

    def __init__(self, source, normalize: bool = False):
        self._source = source
        self._normalize = normalize

    def __len__(self) -> int:
        return len(self._source)

    def get_batch(self, indices: np.ndarray) -> dict:
        records = read_examples(self._source, indices)
        if records:
            images = np.stack([np.asarray(r["image"]) for r in records])
            fine = np.array([int(r["label"]) for r in records], np.int64)
        else:
            images, fine = np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0,), np.int64)
        x = images.astype(np.float32) / 255.0
        if self._normalize:
            x = (x - MEAN) / STD
        targets, masks = labels_to_batch(fine)
        return {"inputs": x, "targets": targets, "masks": masks}


def build(cfg) -> Dataset:
    """Config keys (``config.data``): data_dir (tfds data directory; empty = tfds' default),
    normalize (bool, default False)."""
    data_dir = cfg.get("data_dir", "") or None
    normalize = bool(cfg.get("normalize", False))
    splits = {
        split: Cifar100MTLSource(open_source("cifar100_mtl", TFDS_NAME, split, data_dir), normalize)
        for split in SPLITS
    }
    tasks = tuple(Task(name, "multiclass", num_classes=5) for name in TASK_NAMES)
    return Dataset("cifar100_mtl", tasks, (32, 32, 3), splits,
                   info={"fine_to_coarse": FINE_TO_COARSE, "fine_names": FINE_NAMES})
