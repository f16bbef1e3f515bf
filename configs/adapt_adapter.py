"""Bottleneck adapters on the frozen pretrained factors ViT (``configs/pretrain.py``).

Run (from the repository root):

    mtljax train --config=configs/pretrain.py --workdir=runs/pretrain     # once: the backbone
    mtljax train --config=configs/adapt_adapter.py --workdir=runs/adapt_adapter

Per task, a bottleneck adapter (64 → 16 → 64, GELU, zero-initialised up-projection) after the attention
and after the MLP of every block (Houlsby et al., 2019).

The backbone is frozen (``config.optim.trainable = ("adapter", "^heads_")``: no gradients, no optimizer
state); the six downstream factors of ``configs/pretrain.py`` (count, texture, background, orientation,
pos_x, pos_y) each get their own modules and linear head. Every other setting is
``configs/pretrain.py:probe``'s (the linear probe).

RESULT
"""

import os

from mtljax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = "runs/adapt_adapter"
    c.model.peft.method = "adapter"
    c.optim.trainable = ("adapter", "^heads_")
    return c
