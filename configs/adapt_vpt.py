"""Visual prompt tuning on the frozen pretrained factors ViT (``configs/pretrain.py``).

Run (from the repository root; what every adaptation config shares: ``configs/pretrain.py``):

    mtljax train --config=configs/pretrain.py --workdir=runs/pretrain     # once: the backbone
    mtljax train --config=configs/adapt_vpt.py --workdir=runs/adapt_vpt

Per task, 8 learned prompt tokens inserted before the patch tokens (shallow VPT, Jia et al., 2022);
``--config.model.peft.deep=True`` gives every block its own (deep VPT).

Result (``benchmarks/adapt.py``, measured as ``configs/pretrain.py`` says: H100, 3 seeds, mean ± 95 %
CI): count accuracy 0.435 ± 0.114; texture accuracy 0.363 ± 0.011; background accuracy 0.867 ± 0.092;
orientation MSE 0.330 ± 0.007; pos_x MSE 0.212 ± 0.089; pos_y MSE 0.233 ± 0.187; 685 trained parameters
per task with its head (0.49 % of the ViT).
"""

import os

from mtljax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = "runs/adapt_vpt"
    c.model.peft.method = "vpt"
    c.optim.trainable = ("prompt", "^heads_")
    return c
