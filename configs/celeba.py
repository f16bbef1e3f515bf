"""CelebA: 40 binary face attributes as 40 tasks, ViT on 64×64 crops.

Needs the tfds ``celeb_a`` dataset prepared once (``tfds build celeb_a --data_dir=DIR``; it needs the
manual download described by tfds), then

    mtljax train --config=configs/celeba.py --config.data.data_dir=DIR

The argument may list attributes to keep, e.g. ``configs/celeba.py:smiling,male,young``.
"""

from mtljax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.workdir = "runs/celeba"
    c.data.name = "celeba"
    c.data.image_size = 64
    c.data.attributes = tuple(a for a in (arg or "").split(",") if a)
    c.data.batch_size = 256
    c.data.eval_batch_size = 512
    c.model.vit.variant = "Ti"
    c.model.vit.patch_size = 8
    c.optim.learning_rate = 1e-3
    c.optim.weight_decay = 0.05
    c.train.steps = 20_000
    c.train.eval_every = 2000
    c.train.checkpoint_every = 2000
    return c
