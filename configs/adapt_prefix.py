"""Prefix tuning on the frozen pretrained factors ViT (``configs/pretrain.py``).

Run (from the repository root):

    mtljax train --config=configs/pretrain.py --workdir=runs/pretrain     # once: the backbone
    mtljax train --config=configs/adapt_prefix.py --workdir=runs/adapt_prefix

Per task, 8 learned key/value prefixes in every block's attention (Li & Liang, 2021; no
reparameterisation MLP).

The backbone is frozen (``config.optim.trainable = ("prefix", "^heads_")``: no gradients, no optimizer
state); the six downstream factors of ``configs/pretrain.py`` (count, texture, background, orientation,
pos_x, pos_y) each get their own modules and linear head. Every other setting is
``configs/pretrain.py:probe``'s (the linear probe).

RESULT
"""

import os

from mtljax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = "runs/adapt_prefix"
    c.model.peft.method = "prefix"
    c.optim.trainable = ("prefix", "^heads_")
    return c
