"""Checks of the ``config.model.moe`` section (keys relative to it; :func:`mtljax.config.section`
prefixes ``model.moe``)."""

from __future__ import annotations

from mtljax.config import ConfigError, positive_int, require
from mtljax.models.moe.gate import GATES
from mtljax.models.moe.mlp import DISPATCH, ROUTERS


def check_moe(e, model_name: str, depth: int | None, num_heads: int | None) -> None:
    """``e`` is ``config.model.moe``; ``depth``/``num_heads`` of the ViT when known (custom variants)."""
    for key in ("num_experts", "top_k", "group_size", "slots_per_expert"):
        positive_int(e[key], key)
    require(e.router in ROUTERS, "router", f"unknown router {e.router!r}; choose from {list(ROUTERS)}")
    require(e.dispatch in DISPATCH, "dispatch", f"unknown {e.dispatch!r}; choose from {list(DISPATCH)}")
    require(e.gate in GATES, "gate", f"unknown gate {e.gate!r}; choose from {list(GATES)}")
    require(not (model_name == "m3vit" and e.gate == "shared"), "gate",
            "'shared' is not M³ViT; use 'task' or 'task_conditioned' (or config.model.name='hps' with "
            "config.model.backbone='moe_vit')")
    require(e.top_k <= e.num_experts, "top_k", f"{e.top_k} is larger than num_experts={e.num_experts}")
    require(e.capacity_factor > 0, "capacity_factor", f"must be > 0, got {e.capacity_factor}")
    require(e.dispatch != "ragged" or e.router == "tokens_choose", "dispatch",
            f"'ragged' (dropless) needs router 'tokens_choose', got {e.router!r}")
    pack = e.get("pack_slots", False)
    require(isinstance(pack, bool), "pack_slots", f"must be True or False, got {pack!r}")
    require(not pack or (e.dispatch == "gather" and e.router == "tokens_choose"), "pack_slots",
            f"needs dispatch 'gather' and router 'tokens_choose', got {e.dispatch!r} / {e.router!r}")
    require(isinstance(e.expert_dim, int) and e.expert_dim >= 0, "expert_dim",
            f"must be an integer >= 0, got {e.expert_dim!r}")
    for key in ("importance_weight", "load_weight", "z_loss_weight", "mi_weight", "noise_std"):
        require(e[key] >= 0, key, f"must be >= 0, got {e[key]}")
    if depth is not None:
        require(all(isinstance(i, int) and 0 <= i < depth for i in e.layers), "layers",
                f"{tuple(e.layers)} must index blocks 0..{depth - 1}")
    if model_name == "mod_squad":
        require(e.attn_experts >= 0 and e.attn_top_k >= 0, "attn_experts", "attn_experts and attn_top_k must be >= 0")
        k = e.attn_top_k or num_heads
        if e.attn_experts and k is not None:
            require(k <= e.attn_experts, "attn_top_k", f"{k} is larger than attn_experts={e.attn_experts}")


def check_moe_mesh(e, sizes: dict, per_device: dict) -> None:
    """Expert parallelism and routing groups on the mesh ``sizes``; ``per_device``: batch key -> examples
    per device of ``config.data.<key>``."""
    n_exp = sizes.get("expert", 1)
    require(e.num_experts % n_exp == 0, "num_experts",
            f"{e.num_experts} is not divisible by config.mesh.shape.expert={n_exp}")
    require(e.dispatch != "ragged" or (n_exp == 1 and sizes.get("model", 1) == 1), "dispatch",
            "'ragged' keeps experts whole on every device; use 'einsum' with config.mesh.shape.expert or .model > 1")
    for key, n in per_device.items():
        if n % e.group_size:
            raise ConfigError(f"{e.group_size} does not divide the per-device batch of {n} examples "
                              f"(config.data.{key})", "group_size")
