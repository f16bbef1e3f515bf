"""CIFAR100-MTL: 20 tasks (one per CIFAR-100 superclass, each 5-way over its fine classes), ViT.

Needs the tfds ``cifar100`` dataset prepared once (with network and TensorFlow, elsewhere):
``tfds build cifar100 --data_dir=DIR`` then

    mtljax train --config=configs/cifar100_mtl.py --config.data.data_dir=DIR
    mtljax train --config=configs/cifar100_mtl.py:S --config.data.data_dir=DIR   # ViT-S/4

Every image is labelled for exactly one task (its superclass), so each task's loss and accuracy use
only that task's images (per-task masks). The argument picks the ViT size (``Ti`` default, ``S``, ``B``).
"""

from mtljax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.workdir = f"runs/cifar100_mtl_{arg or 'Ti'}"
    c.data.name = "cifar100_mtl"
    c.data.normalize = True
    c.data.batch_size = 256
    c.data.eval_batch_size = 512
    c.model.vit.variant = arg or "Ti"
    c.model.vit.patch_size = 4
    c.model.dropout = 0.1
    c.optim.learning_rate = 1e-3
    c.optim.weight_decay = 0.05
    c.optim.warmup_steps = 1000
    c.train.steps = 30_000
    c.train.eval_every = 2000
    c.train.checkpoint_every = 2000
    return c
