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

Measured with ``benchmarks/adapt.py accuracy`` (BENCHMARKS.md, "Adapting a pretrained ViT") on an NVIDIA
H100, 2026-11-27: 3 seeds, mean ± 95 % CI, test split of 5,000 images, from a backbone pretrained for
3,000 steps (``--config.train.steps=3000`` in the first command; the 700-step default gives a weaker one,
shape accuracy 0.355 against 0.541).

    count accuracy 0.437 ± 0.034,
    texture accuracy 0.326 ± 0.005,
    background accuracy 0.748 ± 0.023,
    orientation MSE 0.333 ± 0.001,
    pos_x MSE 0.328 ± 0.010,
    pos_y MSE 0.337 ± 0.004

Trained: 237 parameters per task with its head (0.17 % of the 141,248-parameter ViT). The linear probe
and full fine-tuning, for comparison: ``configs/pretrain.py``.
"""

import os

from mtljax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = "runs/task_tokens"
    c.model.peft.method = "task_tokens"
    c.optim.trainable = ("task_token", "^heads_")
    return c
