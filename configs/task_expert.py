"""TaskExpert (Ye & Xu, ICCV 2023): memorial mixture-of-experts decoding of per-task features.

Run (from the repository root):

    mtljax train --config=configs/task_expert.py --config.baselines.train=True --workdir=runs/task_expert_digits
    mtljax train --config=configs/task_expert.py:scenes --config.baselines.train=True --workdir=runs/task_expert_scenes
    mtljax routing --config=configs/task_expert.py --workdir=runs/task_expert_digits

A 4-block width-64 ViT with a memorial MoE after blocks 1 and 3: 4 bottleneck experts (width 64)
decompose the block's tokens, one softmax gate per task and token mixes them with the task's memory,
and the last memory of each task feeds its head (choices the paper leaves open are documented in
``mtljax/models/task_expert.py``).

Expected result (1,500 steps, one seed): digits left/right accuracy 0.857 / 0.879, Δm −1.8 % against
single-task ViTs (HPS: −5.5 %); scenes Δm +10.9 % (HPS: +7.8 %). Details: BENCHMARKS.md
("Multi-task MoE ViTs").
"""

from mtljax.config import base_config, use_dataset


def get_config(arg="digits"):
    c = use_dataset(base_config(), arg or "digits")
    c.model.name = "task_expert"
    c.model.task_expert.update(num_experts=4, expert_dim=64, every=2)
    c.workdir = f"runs/task_expert_{arg or 'digits'}"
    # keep the step buffer between CPU steps (mtljax.parallel.host; 200 steps 26.8-32.3 -> 23.1-23.7 s)
    c.dist.host_allocator = "retain"
    return c
