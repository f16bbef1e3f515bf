"""Pretraining: a small hard-parameter-sharing ViT on the factors dataset's pretraining factors.

Run (from the repository root):

    mtljax train --config=configs/pretrain.py --workdir=runs/pretrain             # shape, colour, size
    mtljax train --config=configs/pretrain.py:downstream --workdir=runs/downstream  # the other six, from scratch
    mtljax train --config=configs/pretrain.py:probe                                # adapt: linear probe

The project ships no weights and reaches no network, so it makes its own pretrained model:
``factors`` (``mtljax.data.factors``) draws 32×32 RGB images of nine independent factors; this config
trains on ``PRETRAIN_TASKS`` (shape 6-way, colour 8-way, size regression) and leaves
``DOWNSTREAM_TASKS`` (count, texture, background, orientation, pos_x, pos_y) and multi-digits for
adaptation, prompts, hypernetworks and merging. ``:downstream`` trains the same model from scratch on
the downstream factors: the reference an adapted model should beat for the same budget.

Model: a 4-block width-64 ViT (4 heads, MLP 128), 4×4 patches (64 tokens), mean pooling, a linear
head per task; 50,000 training images (drawn in about 8 s), batch 128, 700 steps, AdamW 3e-3 with a
cosine schedule. Chance: accuracy 1/6 (shape), 1/8 (colour), 1/4 (count, texture), 1/5
(background); MSE 1/3 for regression targets in [−1, 1] (predicting 0).

Expected result (one seed, measured 2026-11-27 on a 2-core CPU shared with other jobs; 2.4 steps/s,
5 min 4 s wall for the first command, 5 min 9 s for the second), test split of 5,000 images:

    pretrain     shape accuracy 0.355 (0.316 at step 350)   colour accuracy 1.000
                 size MSE 0.155 (0.294 at step 350)
    downstream   count accuracy 0.402   texture accuracy 0.489   background accuracy 1.000
                 orientation MSE 0.332 (not learned yet)   pos_x MSE 0.234   pos_y MSE 0.167

Shape and size are still improving at the end; ``--config.train.steps=3000`` pretrains longer: shape
0.541, colour 1.000, size MSE 0.069 (an H100 run of ``benchmarks/adapt.py``). The checkpoint lands in
``runs/pretrain/checkpoints``.

``:probe`` (the linear probe: only new heads train) and ``:finetune`` (full fine-tuning) adapt the
pretrained model to the six downstream factors from ``runs/pretrain`` (``config.init.checkpoint``).
``:probe`` is the base of every adaptation config (``configs/adapt_*.py``, ``multi_lane.py``,
``task_tokens.py``, ``soft_injection.py``, ``mvlpt.py``): each adds its per-task modules (one set and
one linear head per task) and trains only them, the backbone frozen (``config.optim.trainable =
("<the modules' scope>", "^heads_")``: no gradients, no optimizer state); every other setting is
``:probe``'s. Their recorded results were measured with ``benchmarks/adapt.py`` (BENCHMARKS.md,
"Adapting a pretrained ViT") on an NVIDIA H100, 2026-11-27: 3 seeds, mean ± 95 % CI, the test split of
5,000 images, from a backbone pretrained for 3,000 steps (``--config.train.steps=3000`` in the first
command; the 700-step default gives a weaker one, shape accuracy 0.355 against 0.541).

    mtljax train --config=configs/pretrain.py:probe        # -> runs/probe
    mtljax train --config=configs/pretrain.py:finetune     # -> runs/finetune

Measured that way:

    probe      count 0.369 ± 0.006   texture 0.343 ± 0.009   background 0.454 ± 0.007
               orientation MSE 0.330 ± 0.001   pos_x MSE 0.328 ± 0.000   pos_y MSE 0.336 ± 0.000
    finetune   count 0.696 ± 0.088   texture 0.324 ± 0.009   background 0.994 ± 0.004
               orientation MSE 0.333 ± 0.001   pos_x MSE 0.082 ± 0.078   pos_y MSE 0.111 ± 0.156

From the 700-step backbone (one seed, this 2-core CPU): probe 0.322 / 0.327 / 0.447, MSE 0.332 / 0.327 /
0.337; finetune 0.533 / 0.350 / 0.999, MSE 0.333 / 0.328 / 0.233.
"""

from mtljax.config import base_config
from mtljax.data.factors import DOWNSTREAM_TASKS, PRETRAIN_TASKS


ARGS = ("pretrain", "downstream", "probe", "finetune")


def get_config(arg=None):
    arg = arg or "pretrain"
    if arg not in ARGS:
        raise ValueError(f"configs/pretrain.py: unknown argument {arg!r}; use one of {', '.join(ARGS)}")
    c = base_config()
    c.workdir = f"runs/{arg}"
    c.data.name = "factors"
    c.data.image_size = 32
    c.data.num_train, c.data.num_test = 50_000, 5_000
    c.data.tasks = PRETRAIN_TASKS if arg == "pretrain" else DOWNSTREAM_TASKS
    c.data.batch_size = 128
    c.model.vit.update(patch_size=4, width=64, depth=4, num_heads=4, mlp_dim=128, pool="gap")
    c.train.steps = 700
    c.train.eval_every = 350
    c.train.checkpoint_every = 350
    if arg in ("probe", "finetune"):  # adaptation: the base of configs/adapt_*.py and the prompt-pathway configs
        c.init.checkpoint = "runs/pretrain"
        c.optim.trainable = ("^heads_",) if arg == "probe" else ()
    # keep the step buffer between CPU steps (mtljax.parallel.host; 200 steps 56.9-62.4 -> 43.4-44.1 s);
    # the configs built on this one (adapt_*, mvlpt, multi_lane, ...) inherit it
    c.dist.host_allocator = "retain"
    return c
