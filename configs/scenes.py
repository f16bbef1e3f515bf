"""Hard parameter sharing ViT on scenes (dense: segmentation, depth, edges on generated 32x32 images).

Run (from the repository root):

    mtljax train --config=configs/scenes.py --config.baselines.train=True --workdir=runs/scenes_hps

The reference point for the MoE models (configs/m3vit.py, mod_squad.py, task_expert.py with ``:scenes``):
a 4-block width-64 ViT, 4x4 patches (64 tokens), a linear per-pixel head per task, batch 32, 1,500 steps.
Expected result (one seed): segment mIoU 0.945, depth absolute error 0.071, edges mIoU 0.851;
Δm +7.8 % against the single-task ViTs. Details: BENCHMARKS.md ("Multi-task MoE ViTs").
"""

from mtljax.config import base_config, use_dataset


def get_config(arg=None):
    del arg
    c = use_dataset(base_config(), "scenes")
    c.workdir = "runs/scenes_hps"
    # keep the step buffer between CPU steps (mtljax.parallel.host; 200 steps 26.9-27.2 -> 21.3-22.1 s)
    c.dist.host_allocator = "retain"
    return c
