"""Prefix tuning on the frozen pretrained factors ViT (``configs/pretrain.py``).

Run (from the repository root; what every adaptation config shares: ``configs/pretrain.py``):

    mtljax train --config=configs/pretrain.py --workdir=runs/pretrain     # once: the backbone
    mtljax train --config=configs/adapt_prefix.py --workdir=runs/adapt_prefix

Per task, 8 learned key/value prefixes in every block's attention (Li & Liang, 2021; no
reparameterisation MLP).

Prefix tuning stays at the linear probe's level here: the prefixes start at ``N(0, 0.02²)`` while the
tokens' own keys and values are of order 1, and AdamW at ``3e-3`` for 700 steps moves them too little
(a tenfold learning rate helps background only, BENCHMARKS.md; the paper's reparameterisation MLP and
prefixes initialised from real tokens' keys and values are untried here).

Result (``benchmarks/adapt.py``, measured as ``configs/pretrain.py`` says: H100, 3 seeds, mean ± 95 %
CI): count accuracy 0.370 ± 0.007; texture accuracy 0.351 ± 0.005; background accuracy 0.494 ± 0.008;
orientation MSE 0.331 ± 0.001; pos_x MSE 0.325 ± 0.000; pos_y MSE 0.335 ± 0.001; 4,269 trained parameters
per task with its head (3.02 % of the ViT).
"""

import os

from mtljax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = "runs/adapt_prefix"
    c.model.peft.method = "prefix"
    c.optim.trainable = ("prefix", "^heads_")
    return c
