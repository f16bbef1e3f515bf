"""Default experiment: hard-parameter-sharing ViT on multi-digits (left and right digit, 10-way each).

Run (from the repository root):

    mtljax train                                  # this config; writes runs/default
    mtljax train --config=configs/default.py --config.train.steps=300 --workdir=/tmp/quick

Expected result (1,500 steps, batch 128, a 4-block width-64 ViT with 4x4 patches on 16x16 images;
145 s for the whole command on a quiet 2-core CPU, 7 minutes on a busy one), measured 2026-11-27: the
single-task baselines with ``mtljax train --config.baselines.train=True``, which this config ships in
``configs/baselines/default.json`` so that ``mtljax train`` prints Δm; the multi-task figures
measured again with plain ``mtljax train`` (the same digits), whose table ends with that Δm:

    task   accuracy (multi-task)   accuracy (single-task baseline)
    left   0.7955                  0.9038
    right  0.8453                  0.8770          Δm = -7.80 %

The final figures are sensitive to float-level differences: the step before the spine redesign
(commit fd90ec3), whose losses agree with today's to 6 digits at step 100, ends at 0.8073 / 0.8612 on
the same machine; the training loss sits on a plateau for the first few hundred steps and leaves it
at slightly different points. Compare methods over seeds (``mtljax compare``), not single runs.

``--config.baselines.train=True`` first trains one single-task model per task in
``<workdir>/baselines/`` and reports Δm against those (``--config.baselines.file=''``: no Δm). The
two tasks conflict (the shared model is worse than either single-task model): a good test bed for
the multi-task optimizers.
"""

import os

from mtljax.config import base_config

# the single-task figures above, so that ``mtljax train`` prints Δm (--config.baselines.train=True
# trains them anew; --config.baselines.file='' drops them)
BASELINES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "baselines", "default.json")


def get_config(arg=None):
    del arg
    c = base_config()
    c.baselines.file = BASELINES
    # keep freed host memory between steps (mtljax.parallel.host): this ViT's step buffer is above glibc's
    # 32 MiB mmap threshold, so with glibc's defaults every CPU step faulted it in again (76 s -> 53-61 s)
    c.dist.host_allocator = "retain"
    return c
