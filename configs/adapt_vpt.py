"""Visual prompt tuning on the frozen pretrained factors ViT (``configs/pretrain.py``).

Run (from the repository root):

    mtljax train --config=configs/pretrain.py --workdir=runs/pretrain     # once: the backbone
    mtljax train --config=configs/adapt_vpt.py --workdir=runs/adapt_vpt

Per task, 8 learned prompt tokens inserted before the patch tokens (shallow VPT, Jia et al., 2022);
``--config.model.peft.deep=True`` gives every block its own (deep VPT).

The backbone is frozen (``config.optim.trainable = ("prompt", "^heads_")``: no gradients, no optimizer
state); the six downstream factors of ``configs/pretrain.py`` (count, texture, background, orientation,
pos_x, pos_y) each get their own modules and linear head. Every other setting is
``configs/pretrain.py:probe``'s (the linear probe).

RESULT
"""

import os

from mtljax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = "runs/adapt_vpt"
    c.model.peft.method = "vpt"
    c.optim.trainable = ("prompt", "^heads_")
    return c
