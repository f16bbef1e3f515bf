"""Bottleneck adapters on the frozen pretrained factors ViT (``configs/pretrain.py``).

Run (from the repository root; what every adaptation config shares: ``configs/pretrain.py``):

    mtljax train --config=configs/pretrain.py --workdir=runs/pretrain     # once: the backbone
    mtljax train --config=configs/adapt_adapter.py --workdir=runs/adapt_adapter

Per task, a bottleneck adapter (64 → 16 → 64, GELU, zero-initialised up-projection) after the attention
and after the MLP of every block (Houlsby et al., 2019).

Result (``benchmarks/adapt.py``, measured as ``configs/pretrain.py`` says: H100, 3 seeds, mean ± 95 %
CI): count accuracy 0.519 ± 0.022; texture accuracy 0.397 ± 0.015; background accuracy 0.758 ± 0.006;
orientation MSE 0.323 ± 0.004; pos_x MSE 0.192 ± 0.020; pos_y MSE 0.258 ± 0.018; 17,197 trained
parameters per task with its head (12.18 % of the ViT).
"""

import os

from mtljax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = "runs/adapt_adapter"
    c.model.peft.method = "adapter"
    c.optim.trainable = ("adapter", "^heads_")
    return c
