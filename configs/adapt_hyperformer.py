"""HyperFormer++ on the frozen pretrained factors ViT (``configs/pretrain.py``): one shared hypernetwork
generates every block's adapters from task, layer and position embeddings (Karimi Mahabadi et al., 2021;
``mtljax.models.peft.hyper``).

Run (from the repository root; what every adaptation config shares: ``configs/pretrain.py``):

    mtljax train --config=configs/pretrain.py --workdir=runs/pretrain     # once: the backbone
    mtljax train --config=configs/adapt_hyperformer.py --workdir=runs/adapt_hyperformer

The paper's ``hyperformer++.json`` settings: task embeddings of 64, a 128-wide task projector to
ι ∈ R^64 with LayerNorm, adapters after the attention and the MLP of every block with reduction factor
32 (the ViT's width 64 gives a bottleneck of 2; ``--config.model.peft.hyper.reduction_factor=4`` gives
``configs/adapt_adapter.py``'s 16), a conditional LayerNorm on each adapter's output. Trained: the
hypernetwork (shared by all tasks), the six task embeddings and the heads; the ViT stays frozen and
the run starts exactly at the linear probe's model (the LayerNorm's γ, β generators start at zero).

Task sampling: the paper samples tasks with temperature 10 because its tasks are separate datasets.
The factors tasks label the same images, so every batch trains all six tasks and there is nothing to
sample; for tasks from different datasets, ``config.data.name = "mixture"`` with
``config.data.sampling = "temperature"`` and ``config.data.temperature = 10`` (``mtljax.data.mixture``)
gives the paper's sampling.
"""

import os

from mtljax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = "runs/adapt_hyperformer"
    c.model.peft.method = "hyperformer"
    c.optim.trainable = ("hypernet", "task_embed", "^heads_")
    return c
