"""Default experiment: hard-parameter-sharing ViT on multi-digits (left and right digit, 10-way each).

Run (from the repository root):

    mtljax train                                  # this config; writes runs/default
    mtljax train --config=configs/default.py --config.train.steps=300 --workdir=/tmp/quick

Expected result (1,500 steps, batch 128, a 4-block width-64 ViT with 4x4 patches on 16x16 images,
2-core CPU, about two minutes): see the README's quickstart table, test accuracy about 0.8 on both
tasks. ``--config.baselines.train=True`` first trains one single-task model per task in
``<workdir>/baselines/`` and then reports the multitask gain Δm.
"""

from mtljax.config import base_config


def get_config(arg=None):
    del arg
    return base_config()
