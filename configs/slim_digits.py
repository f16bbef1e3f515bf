"""Slim model (slimmable ViT encoder + slimmable decoders, a controllable multi-task architecture) on
multi-digits.

Aich et al. (ICCV 2023): one super-network trained with sandwich sampling and CI-KD, slimmed after
training to any compute budget and task preference. Run (from the repository root):

    mtljax train --config=configs/slim_digits.py                     # writes runs/slim_digits
    mtljax slim  --config=configs/slim_digits.py --budget=60% --preference=1,0.25
    mtljax slim  --config=configs/slim_digits.py --sweep             # controllability, hypervolume, plot
    mtljax train --config=configs/slim_digits.py:conv                # slimmable conv-net encoder instead

Widths: encoder and every decoder at 0.25, 0.5, 0.75 or 1 (4 × 4² = 64 sub-networks); a training
step runs the largest, the smallest and 2 random configurations; CI-KD starts at step 300.

Expected result (1,000 steps, measured 2026-11-25 on a loaded 2-core CPU at 1.1 steps/s, one seed;
details and the no-CI-KD ablation in BENCHMARKS.md, "Controllable multi-task architectures"):

    width (all)  FLOPs % of full   left acc.  right acc.
    1            100.0             0.583      0.636
    0.75          75.8             0.562      0.586
    0.5           51.7             0.503      0.536
    0.25          27.7             0.451      0.437

    --sweep (8 budgets × 32 preferences): controllability ρ = +0.67 (Spearman; +0.84 at budgets
    ≥ 79 %), Kendall τ = +0.54, hypervolume 0.353 (per-task accuracy normalised to the table's range)
    --budget=80% --preference=0,1 → encoder 0.75 | left 0.25, right 1: 75.7 % of the FLOPs,
    left 0.539, right 0.588
"""

from mtljax.config import base_config


def get_config(arg=None):
    c = base_config()
    backbone = arg or "vit"
    c.workdir = "runs/slim_digits" + ("" if backbone == "vit" else f"_{backbone}")
    c.model.name = "slim"
    c.model.slim.backbone = backbone
    c.model.slim.decoder_hidden = 64
    c.model.slim.conv_channels = (32, 64, 64)
    c.model.slim.conv_dim = 64
    c.model.vit.depth = 2  # a training step runs 4 sub-networks: half the default ViT's depth keeps it quick
    c.model.slim.cikd_start = 300  # trained from scratch: the full network learns first (mtljax.models.slim.sandwich)
    c.model.slim.cikd_ramp = 200
    c.train.steps = 1000
    # keep the step buffer between CPU steps (mtljax.parallel.host; 200 steps 33.4-35.2 -> 28.8-30.3 s)
    c.dist.host_allocator = "retain"
    return c
