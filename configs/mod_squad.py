"""Mod-Squad (Chen et al., CVPR 2023): MoE attention and MoE MLPs with per-task gates and an MI loss.

Run (from the repository root):

    mtljax train --config=configs/mod_squad.py --config.baselines.train=True --workdir=runs/mod_squad_digits
    mtljax train --config=configs/mod_squad.py:scenes --config.baselines.train=True --workdir=runs/mod_squad_scenes
    mtljax routing --config=configs/mod_squad.py --workdir=runs/mod_squad_digits

Paper settings scaled to a CPU: every block of a 4-block width-64 ViT has MoE attention (8 query/output
experts of head width 32, top-4 = the number of heads, one shared key/value head) and an MoE MLP
(8 experts, top-2, expert width 64); per-task gates, zero-initialised, no noise; the mutual-information
loss between tasks and experts with weight 0.005 and no other balancing loss. Mod-Squad's MoE is
dropless: ``dispatch='ragged'`` reproduces that; the default gather dispatch with capacity factor 2
over groups of 4 images drops about 1 % and shards experts over ``config.mesh.shape.expert``. Per-task compact
sub-models: ``mtljax.models.moe.submodel``.

Expected result (1,500 steps, one seed):
digits left/right accuracy 0.923 / 0.928, Δm +4.7 % against single-task ViTs (HPS: −5.5 %);
scenes Δm +9.1 % (HPS: +7.8 %); with ``mi_weight=0.05`` digits Δm falls to −23.8 %. Details:
BENCHMARKS.md ("Multi-task MoE ViTs").
"""

from mtljax.config import base_config, use_dataset


def get_config(arg="digits"):
    c = use_dataset(base_config(), arg or "digits")
    c.model.name = "mod_squad"
    c.model.moe.update(num_experts=8, top_k=2, every=1, gate="task", gate_zero_init=True, noise_std=0.0,
                       capacity_factor=2.0, group_size=4, importance_weight=0.0, load_weight=0.0, mi_weight=0.005,
                       attn_experts=8, attn_top_k=4, attn_head_dim=32, attn_every=1)
    c.workdir = f"runs/mod_squad_{arg or 'digits'}"
    # keep the step buffer between CPU steps (mtljax.parallel.host; 200 steps 47.4-50.3 -> 34.9-38.5 s)
    c.dist.host_allocator = "retain"
    return c
