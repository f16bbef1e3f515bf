"""Polytropon / MHR on the frozen pretrained factors ViT (``configs/pretrain.py``): per-task LoRA mixed from a
shared inventory of LoRA skills by learned routing (``mtljax.models.peft.poly``), and the few-shot
transfer of the skills to new tasks (MHR-z, MHR-μ).

Run (from the repository root):

    mtljax train --config=configs/pretrain.py --workdir=runs/pretrain                 # once: the backbone
    mtljax train --config=configs/adapt_poly.py:poly --workdir=runs/adapt_poly        # Polytropon, six tasks
    mtljax train --config=configs/adapt_poly.py:mhr --workdir=runs/adapt_mhr          # MHR (4 heads), six tasks
    mtljax routing --config=configs/adapt_poly.py:mhr --workdir=runs/adapt_mhr        # routing heatmaps
    mtljax train --config=configs/adapt_poly.py:source --workdir=runs/adapt_mhr_source     # MHR, 4 source tasks
    mtljax train --config=configs/adapt_poly.py:mhr_z --workdir=runs/adapt_mhr_z           # new tasks: routing
    mtljax train --config=configs/adapt_poly.py:mhr_mu --workdir=runs/adapt_mhr_mu         # new tasks: uniform

``poly`` / ``mhr``: K = 8 LoRA skills (rank 4, alpha 8) on the query and value projections of every
block, routing logits per task and projection (``poly_routing [T, h, K]``, h = 1 for Polytropon, 4 for
MHR), Gumbel-sigmoid routing in training (temperature 1), σ(Z) at evaluation; the skills, routing and
heads train (``config.optim.trainable = ("poly_", "^heads_")``), the backbone is frozen. Every other
setting is ``configs/pretrain.py:probe``'s (six downstream tasks, 700 steps).

Few-shot transfer: ``source`` trains MHR on count, texture, orientation and pos_x; the targets
background and pos_y then start from it (``config.init.checkpoint = "runs/adapt_mhr_source"``: the
backbone and the skills load by path; the new tasks' routing rows stay fresh — zero logits, i.e.
uniform routing ŵ = 1/K, the average of the skills) on ``data.num_train = 128`` support images
(the benchmark also runs 32), batch 32, 300 steps:

* ``mhr_z``: MHR-z, only the new tasks' routing rows and heads train
  (``trainable = ("poly_routing", "^heads_")``; the skill inventory is frozen);
* ``mhr_mu``: MHR-μ, the routing stays uniform (the averaged skills) and only the heads train;
  ``--config.optim.trainable='("poly_", "^heads_")'`` also fine-tunes the skills (the averaged adapter).

``config.init.task_init = "mean"`` would instead start a new row at the mean of the source tasks' logits:
a learned mixture, not the average of the skills (``mtljax.models.peft.routing_uniform`` sets rows of
trained parameters back to uniform). A run that keeps old tasks beside the new ones freezes them with ``config.optim.frozen_tasks`` (their
routing rows and heads; the skills are frozen by ``trainable`` already). ``benchmarks/poly.py`` runs
all of this against per-task LoRA of the same rank (``configs/adapt_lora.py``).
"""

import os

from mtljax.config import load_config

SOURCE_TASKS = ("count", "texture", "orientation", "pos_x")
TARGET_TASKS = ("background", "pos_y")
ARGS = ("poly", "mhr", "source", "mhr_z", "mhr_mu")


def get_config(arg=None):
    arg = arg or "poly"
    if arg not in ARGS:
        raise ValueError(f"configs/adapt_poly.py: unknown argument {arg!r}; use one of {', '.join(ARGS)}")
    c = load_config(os.path.join(os.path.dirname(__file__), "pretrain.py:probe"))
    c.workdir = f"runs/adapt_{arg}"
    c.model.peft.method = "poly"
    c.model.peft.poly.update(dict(skills=8, heads=1 if arg == "poly" else 4, rank=4, alpha=8.0,
                                  targets=("query", "value"), temperature=1.0))
    c.optim.trainable = ("poly_", "^heads_")
    if arg == "source":
        c.workdir = "runs/adapt_mhr_source"
        c.data.tasks = SOURCE_TASKS
    if arg in ("mhr_z", "mhr_mu"):
        c.data.tasks = TARGET_TASKS
        c.data.num_train = 128
        c.data.batch_size = 32
        c.init.checkpoint = "runs/adapt_mhr_source"
        c.init.task_init = "fresh"  # zero logits: uniform routing over the skills (MHR-μ's start)
        c.optim.trainable = ("poly_routing", "^heads_") if arg == "mhr_z" else ("^heads_",)
        c.train.steps = 300
        c.train.eval_every = c.train.checkpoint_every = 150
        c.optim.warmup_steps = 30
    return c
