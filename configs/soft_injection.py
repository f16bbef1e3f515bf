"""Soft injection of task embeddings (SITE) on the frozen pretrained factors ViT (``configs/pretrain.py``).

Run (from the repository root):

    mtljax train --config=configs/pretrain.py --workdir=runs/pretrain     # once: the backbone
    mtljax train --config=configs/soft_injection.py --workdir=runs/soft_injection

Per task, block and attention head, an embedding ``e`` mixed into the head's activation, ``a' = (1 -
alpha) a + alpha e`` with ``alpha = sigmoid(theta)`` learned per head (SITE). The gates start at ``theta
= -3`` (the default ``-20`` starts exactly at the base model but opens too slowly for a short run); ``e``
starts at 0 and is trained with the gates (see ``mtljax.models.peft.inject``).

The backbone is frozen (``config.optim.trainable = ("inject", "^heads_")``: no gradients, no optimizer
state); the six downstream factors of ``configs/pretrain.py`` (count, texture, background, orientation,
pos_x, pos_y) each get their own modules and linear head. Every other setting is
``configs/pretrain.py:probe``'s (the linear probe).

RESULT
"""

import os

from mtljax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = "runs/soft_injection"
    c.model.peft.method = "inject"
    c.model.peft.inject_logit_init = -3.0  # alpha = sigmoid(-3) = 0.047: the gates can open within the run
    c.optim.trainable = ("inject", "^heads_")
    return c
