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

Measured with ``benchmarks/adapt.py accuracy`` (BENCHMARKS.md, "Adapting a pretrained ViT") on an NVIDIA
H100, 2026-11-27: 3 seeds, mean ± 95 % CI, test split of 5,000 images, from a backbone pretrained for
3,000 steps (``--config.train.steps=3000`` in the first command; the 700-step default gives a weaker one,
shape accuracy 0.355 against 0.541).

    count accuracy 0.435 ± 0.114,
    texture accuracy 0.363 ± 0.011,
    background accuracy 0.867 ± 0.092,
    orientation MSE 0.330 ± 0.007,
    pos_x MSE 0.212 ± 0.089,
    pos_y MSE 0.233 ± 0.187

Trained: 685 parameters per task with its head (0.49 % of the 141,248-parameter ViT). The linear probe
and full fine-tuning, for comparison: ``configs/pretrain.py``.
"""

import os

from mtljax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = "runs/adapt_vpt"
    c.model.peft.method = "vpt"
    c.optim.trainable = ("prompt", "^heads_")
    return c
