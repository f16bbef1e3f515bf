"""MULTI-LANE on the frozen pretrained factors ViT (``configs/pretrain.py``).

Run (from the repository root):

    mtljax train --config=configs/pretrain.py --workdir=runs/pretrain     # once: the backbone
    mtljax train --config=configs/multi_lane.py --workdir=runs/multi_lane

One lane per downstream task (``mtljax.models.lanes``): in every block, 4 learned selectors summarise the
frozen stream's 64 patch tokens into 4 tokens, and the lane's class token attends to them (with 8
key/value prefixes in the first 2 blocks); each task's head reads its lane. Lanes share nothing trainable
(``config.optim.trainable = ("lane", "^heads_")``), so a lane added later leaves the others' outputs bit-
identical.

RESULT
"""

import os

from mtljax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = "runs/multi_lane"
    c.model.name = "multi_lane"
    c.optim.trainable = ("lane", "^heads_")
    return c
