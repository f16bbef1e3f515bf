"""LoRA on the frozen pretrained factors ViT (``configs/pretrain.py``).

Run (from the repository root):

    mtljax train --config=configs/pretrain.py --workdir=runs/pretrain     # once: the backbone
    mtljax train --config=configs/adapt_lora.py --workdir=runs/adapt_lora

Per task, low-rank updates ``W + (alpha/rank)·B_t A_t`` of the query and value projections of every block
(rank 4, alpha 8; ``B_t = 0`` at the start, so the run starts at the linear probe's model).
``mtljax.models.peft.merge(params, task)`` folds one task's factors into plain kernels for serving.

The backbone is frozen (``config.optim.trainable = ("lora", "^heads_")``: no gradients, no optimizer
state); the six downstream factors of ``configs/pretrain.py`` (count, texture, background, orientation,
pos_x, pos_y) each get their own modules and linear head. Every other setting is
``configs/pretrain.py:probe``'s (the linear probe).

RESULT
"""

import os

from mtljax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = "runs/adapt_lora"
    c.model.peft.method = "lora"
    c.optim.trainable = ("lora", "^heads_")
    return c
