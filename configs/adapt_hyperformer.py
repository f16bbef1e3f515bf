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
Learning rate 3e-4, the paper's (the per-task adapter configs use 3e-3, which makes the generated
adapters swing too far each step: see ``get_config``).

Task sampling: the paper samples tasks with temperature 10 because its tasks are separate datasets.
The factors tasks label the same images, so every batch trains all six tasks and there is nothing to
sample; for tasks from different datasets, ``config.data.name = "mixture"`` with
``config.data.sampling = "temperature"`` and ``config.data.temperature = 10`` (``mtljax.data.mixture``)
gives the paper's sampling.

``:lowres`` is that setting (:func:`low_resource`): the six downstream tasks as six single-task
datasets, ``count`` and ``background`` with 500 training images, the others with 8,000, sampled with
temperature 10; reduction factor 8 (bottleneck 8). ``:lowres_adapter`` trains per-task bottleneck
adapters of the same size on the same data, ``:lowres_probe`` only the heads (``benchmarks/hyperformer.py``
compares the three).

Result of ``:lowres`` (``benchmarks/hyperformer.py``, 2026-11-28, 2-core CPU, the 700-step backbone, 300 steps
of batch 64, 3 seeds, mean ± 95 % CI): count 0.287 ± 0.027, texture 0.315 ± 0.025, background 0.237 ±
0.018 accuracy, MSE 0.335 / 0.328 / 0.338 (orientation, pos_x, pos_y): the linear probe's level (0.291 /
0.318 / 0.263); per-task adapters of the same size reach 0.298 / 0.332 / 0.370. 237 parameters per task
(embedding and head) against the adapters' 8,941. BENCHMARKS.md, "Sharing between tasks' modules".
"""

import os

from mtljax.config import load_config
from mtljax.data.factors import DOWNSTREAM_TASKS

ARGS = ("", "lowres", "lowres_adapter", "lowres_probe")
LOW_RESOURCE = {"count": 500, "background": 500}  # training images of the two low-resource tasks
HIGH_RESOURCE = 8_000  # ... and of every other downstream task
LOWRES_REDUCTION = 8  # width 64 // 8: bottleneck 8, for HyperFormer++ and the per-task adapters alike


def low_resource(c):
    """``c`` trained on the six downstream tasks as six single-task datasets (a mixture, one factors
    component per task) of which ``count`` and ``background`` have only 500 training images, sampled
    with temperature 10 (the paper's): each batch carries every example's task, so the per-task modules
    run once per batch."""
    d = c.data
    common = dict(name="factors", image_size=d.image_size, max_objects=d.max_objects, pixel_noise=d.pixel_noise,
                  seed=d.seed, num_test=2_000, batch_size=d.batch_size, eval_batch_size=d.eval_batch_size)
    d.components = [dict(common, tasks=(t,), num_train=LOW_RESOURCE.get(t, HIGH_RESOURCE)) for t in DOWNSTREAM_TASKS]
    d.name, d.sampling, d.temperature, d.cap = "mixture", "temperature", 10.0, 0
    d.tasks = ()
    return c


def get_config(arg=None):
    arg = arg or ""
    if arg not in ARGS:
        raise ValueError(f"configs/adapt_hyperformer.py: unknown argument {arg!r}; use one of {', '.join(ARGS[1:])}")
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = f"runs/adapt_hyperformer{'_' + arg if arg else ''}"
    c.model.peft.method = "hyperformer"
    c.optim.trainable = ("hypernet", "task_embed", "^heads_")
    # the paper's 3e-4: Adam moves every generator entry by about the rate each step, and a generated weight
    # sums E' = 64 of them (ι is LayerNorm-ed), so the adapters move ~64x faster than their generator; at the
    # adapters' 3e-3 the generated adapters swing so much that not even the heads learn (measured: at chance)
    c.optim.learning_rate = 3e-4
    if arg.startswith("lowres"):
        low_resource(c)
        c.model.peft.hyper.reduction_factor = LOWRES_REDUCTION
        c.model.peft.adapter_dim = c.model.vit.width // LOWRES_REDUCTION
    if arg in ("lowres_adapter", "lowres_probe"):
        c.optim.learning_rate = 3e-3  # configs/pretrain.py:probe's, as configs/adapt_adapter.py
    if arg == "lowres_adapter":  # per-task bottleneck adapters of the same size (configs/adapt_adapter.py)
        c.model.peft.method = "adapter"
        c.optim.trainable = ("adapter", "^heads_")
    if arg == "lowres_probe":
        c.model.peft.method = ""
        c.optim.trainable = ("^heads_",)
    return c
