"""ScaLearn: a target task learns to scale the frozen adapters of source tasks (Frohmann et al., 2024;
``mtljax.models.peft.scalearn``) on the frozen pretrained factors ViT (``configs/pretrain.py``).

Run (from the repository root):

    mtljax train --config=configs/pretrain.py --workdir=runs/pretrain                # once: the backbone
    mtljax train --config=configs/scalearn.py:source --workdir=runs/scalearn_source  # source adapters (the default)
    mtljax train --config=configs/scalearn.py:scalearn --workdir=runs/scalearn        # or :uniform,
                                                                                      # :scalearn++, :uniform++, :fusion

``:source`` is ``configs/adapt_adapter.py`` restricted to the source tasks ``SOURCE_TASKS`` (count,
texture, orientation, pos_x: one bottleneck adapter per task after the attention and the MLP of every
block, 64 → 16 → 64). The variants train the target task ``background`` (``TARGET_TASKS``; several
targets train at once, each its own scales) on the frozen backbone with the source run's frozen
adapters: only the scales ω and the target's head train (``config.optim.trainable``).
``config.model.peft.scalearn.source_tasks`` picks some of the source run's tasks (empty: all of them;
e.g. ``--config.model.peft.scalearn.source_tasks='("count", "texture")'`` for two sources).

Trained parameters per target task, S = 4 sources, width D = 64, 4 blocks × 2 positions, plus the head:
ScaLearn S·D·8 = 2,048; Uniform S·8 = 32; ScaLearn++ S·D·2 = 512; Uniform++ S·2 = 8; ``:fusion``
(AdapterFusion, Pfeiffer et al., 2021, for comparison) 3·D²·8 = 98,304.

Result (``benchmarks/scalearn.py``, 2026-11-28, 2-core CPU, the 700-step backbone; sources 400 steps of
batch 128, targets 200 steps of batch 32 on 8,000 images; 3 seeds, mean ± 95 % CI): background accuracy
ScaLearn 0.313 ± 0.016, Uniform 0.299 ± 0.021, ScaLearn++ 0.310 ± 0.020, Uniform++ 0.301 ± 0.017 — a
little above the linear probe (0.281 ± 0.034), far below the target's own adapter (0.593 ± 0.087): the
factors are independent, so the source adapters hold little the target needs. BENCHMARKS.md, "Sharing
between tasks' modules".
"""

import os

from mtljax.config import load_config

SOURCE_TASKS = ("count", "texture", "orientation", "pos_x")
TARGET_TASKS = ("background",)
VARIANTS = ("scalearn", "uniform", "scalearn++", "uniform++", "fusion")  # fusion: AdapterFusion, for comparison
ARGS = ("source",) + VARIANTS


def get_config(arg=None):
    arg = arg or "source"  # the first step (the variants need its run)
    if arg not in ARGS:
        raise ValueError(f"configs/scalearn.py: unknown argument {arg!r}; use one of {', '.join(ARGS)}")
    here = os.path.dirname(__file__)
    if arg == "source":
        c = load_config(os.path.join(here, "adapt_adapter.py"))
        c.workdir = "runs/scalearn_source"
        c.data.tasks = SOURCE_TASKS
        return c
    c = load_config(os.path.join(here, "pretrain.py:probe"))
    c.workdir = f"runs/{arg}"
    c.data.tasks = TARGET_TASKS
    c.model.peft.method = "scalearn"
    c.model.peft.scalearn.update(source="runs/scalearn_source", source_tasks=(), variant=arg)
    c.optim.trainable = ("scalearn_", "^heads_")  # ω (or AdapterFusion's weights); never the sources
    return c
