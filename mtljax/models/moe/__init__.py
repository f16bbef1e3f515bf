"""Mixture-of-experts layers for the ViT and the multi-task models built on them.

=================  ================================================================================
module             what
=================  ================================================================================
``routing``        routers (tokens choose, experts choose) and the balancing losses
``dispatch``       how routed tokens reach their experts (einsum, gather, ragged) and expert parallelism
``gate``           gate logits: shared, per task, task-conditioned
``mlp``            :class:`MoeMlp`, the MoE MLP layer (V-MoE, M³ViT, Mod-Squad)
``attention``      :class:`MoeAttention`, mixture of attention heads (Mod-Squad)
``task_expert``    TaskExpert: memorial MoEs reading block outputs of the ViT (its taps)
``submodel``       per-task compact sub-models of a task-gated MoE ViT
=================  ================================================================================
"""

from mtljax.models.moe.attention import MoeAttention
from mtljax.models.moe.gate import GATES, Gate
from mtljax.models.moe.mlp import DISPATCH, ROUTERS, MoeMlp
from mtljax.models.moe.task_expert import MemorialMoE, TaskExpert

__all__ = ["DISPATCH", "GATES", "ROUTERS", "Gate", "MemorialMoE", "MoeAttention", "MoeMlp", "TaskExpert"]
