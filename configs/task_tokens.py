"""TPO-style task tokens on the frozen pretrained factors ViT (``configs/pretrain.py``).

Run (from the repository root; what every adaptation config shares: ``configs/pretrain.py``):

    mtljax train --config=configs/pretrain.py --workdir=runs/pretrain     # once: the backbone
    mtljax train --config=configs/task_tokens.py --workdir=runs/task_tokens

One learned token per task inside the sequence; all tasks' tokens run in one pass, and each task's head
reads its own token's final state (TPO's task tokens).

Result (``benchmarks/adapt.py``, measured as ``configs/pretrain.py`` says: H100, 3 seeds, mean ± 95 %
CI): count accuracy 0.437 ± 0.034; texture accuracy 0.326 ± 0.005; background accuracy 0.748 ± 0.023;
orientation MSE 0.333 ± 0.001; pos_x MSE 0.328 ± 0.010; pos_y MSE 0.337 ± 0.004; 237 trained parameters
per task with its head (0.17 % of the ViT).
"""

import os

from mtljax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = "runs/task_tokens"
    c.model.peft.method = "task_tokens"
    c.optim.trainable = ("task_token", "^heads_")
    return c
