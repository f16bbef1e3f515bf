"""TPO-style task tokens on the frozen pretrained factors ViT (``configs/pretrain.py``).

Run (from the repository root):

    mtljax train --config=configs/pretrain.py --workdir=runs/pretrain     # once: the backbone
    mtljax train --config=configs/task_tokens.py --workdir=runs/task_tokens

One learned token per task inside the sequence; all tasks' tokens run in one pass, and each task's head
reads its own token's final state (TPO's task tokens).

The backbone is frozen (``config.optim.trainable = ("task_token", "^heads_")``: no gradients, no
optimizer state); the six downstream factors of ``configs/pretrain.py`` (count, texture, background,
orientation, pos_x, pos_y) each get their own modules and linear head. Every other setting is
``configs/pretrain.py:probe``'s (the linear probe).

RESULT
"""

import os

from mtljax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = "runs/task_tokens"
    c.model.peft.method = "task_tokens"
    c.optim.trainable = ("task_token", "^heads_")
    return c
