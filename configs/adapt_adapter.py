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

Measured with ``benchmarks/adapt.py accuracy`` (BENCHMARKS.md, "Adapting a pretrained ViT") on an NVIDIA
H100, 2026-11-27: 3 seeds, mean ± 95 % CI, test split of 5,000 images, from a backbone pretrained for
3,000 steps (``--config.train.steps=3000`` in the first command; the 700-step default gives a weaker one,
shape accuracy 0.355 against 0.541).

    count accuracy 0.519 ± 0.022,
    texture accuracy 0.397 ± 0.015,
    background accuracy 0.758 ± 0.006,
    orientation MSE 0.323 ± 0.004,
    pos_x MSE 0.192 ± 0.020,
    pos_y MSE 0.258 ± 0.018

Trained: 17,197 parameters per task with its head (12.18 % of the 141,248-parameter ViT). The linear
probe and full fine-tuning, for comparison: ``configs/pretrain.py``.
"""

import os

from mtljax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = "runs/adapt_adapter"
    c.model.peft.method = "adapter"
    c.optim.trainable = ("adapter", "^heads_")
    return c
