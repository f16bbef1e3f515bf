"""MULTI-LANE on the frozen pretrained factors ViT (``configs/pretrain.py``).

Run (from the repository root; what every adaptation config shares: ``configs/pretrain.py``):

    mtljax train --config=configs/pretrain.py --workdir=runs/pretrain     # once: the backbone
    mtljax train --config=configs/multi_lane.py --workdir=runs/multi_lane

One lane per downstream task (``mtljax.models.lanes``): in every block, 4 learned selectors summarise the
frozen stream's 64 patch tokens into 4 tokens, and the lane's class token attends to them (with 8
key/value prefixes in the first 2 blocks); each task's head reads its lane. Lanes share nothing trainable
(``config.optim.trainable = ("lane", "^heads_")``), so a lane added later leaves the others' outputs
bit-identical.

Result (``benchmarks/adapt.py``, measured as ``configs/pretrain.py`` says: H100, 3 seeds, mean ± 95 %
CI): count accuracy 0.471 ± 0.037; texture accuracy 0.319 ± 0.021; background accuracy 0.771 ± 0.046;
orientation MSE 0.333 ± 0.002; pos_x MSE 0.332 ± 0.005; pos_y MSE 0.340 ± 0.001; 3,309 trained parameters
per task with its head (2.34 % of the ViT).
"""

import os

from mtljax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = "runs/multi_lane"
    c.model.name = "multi_lane"
    c.optim.trainable = ("lane", "^heads_")
    return c
