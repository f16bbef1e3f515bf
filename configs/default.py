"""Default experiment: hard-parameter-sharing ViT on multi-digits (left and right digit, 10-way each).

Run (from the repository root):

    mtljax train                                  # this config; writes runs/default
    mtljax train --config=configs/default.py --config.train.steps=300 --workdir=/tmp/quick

Expected result (1,500 steps, batch 128, a 4-block width-64 ViT with 4x4 patches on 16x16 images;
about 80 s of training on a 2-core CPU), measured 2026-11-23:

    task   accuracy (multi-task)   accuracy (single-task baseline)
    left   0.7705                  0.9040
    right  0.8560                  0.8820          Δm = -8.86 %

``--config.baselines.train=True`` first trains one single-task model per task in
``<workdir>/baselines/`` and then reports Δm. The two tasks conflict (the shared model is worse than
either single-task model): a good test bed for the multi-task optimizers.
"""

from mtljax.config import base_config


def get_config(arg=None):
    del arg
    return base_config()
