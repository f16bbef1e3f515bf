"""Controllable multi-task architectures (Aich, Schulter, Roy-Chowdhury, Chandraker, Suh, ICCV 2023,
"Efficient Controllable Multi-Task Architectures", arXiv 2308.11744; no public code).

One super-network (the *slim model*, ``config.model.name = 'slim'``: a slimmable shared encoder, one
slimmable decoder per task) is trained once; after deployment a user picks a compute budget and a
task preference and gets a sub-network, without retraining.

=====================  ================================================================
module                 what
=====================  ================================================================
``layers``             slimmable layers: dense, conv, norm, attention, MLP (width index)
``vit``                the slimmable ViT encoder: :class:`~mtljax.models.vit.ViT` with slim layers
``conv``               the slimmable conv-net encoder
``model``              :class:`SlimModel`: encoder, per-task decoders, configurations
``export``             build from ``config.model`` / a spec; export, save and load sub-networks
``sandwich``           training: sandwich sampling of configurations, CI-KD loss
``flops``              FLOPs per component from XLA's compiled cost analysis, composed
``search``             (budget, preference) → encoder and decoder widths
``evaluate``           metrics of every configuration, budget × preference sweep
``controllability``    rank correlation of preference and achieved performance
``hypervolume``        exact (≤ 3 tasks) and Monte-Carlo (many tasks) hypervolume
``plot``               per-task performance against budget (PNG)
=====================  ================================================================

The ``mtljax slim`` command and the ``config.model.slim`` section live in :mod:`mtljax.slim`.

What the paper fixes and what we chose. The paper's full text was not available offline while this
was written (only its abstract and summaries); the method's rules below come from those, every
detail they leave open is our choice, documented in the module that implements it:

* **Widths**: one multiplier for the encoder and one per task decoder, from trained sets (default
  0.25/0.5/0.75/1), uniform across the layers of a component (the paper may search layer-wise
  widths; our search space is ``|W_e|·|W_d|^T``). ViT: heads and MLP width slim, the residual width
  does not; conv net: every channel slims, a fixed-width neck gives a width-independent
  representation (``vit``, ``conv``). LayerNorm statistics over the active channels,
  private affine per width (``layers``).
* **Training**: sandwich rule (largest, smallest, ``num_random`` random; decoders drawn
  independently per task); the task loss averaged over configurations; CI-KD on the encoder's
  output tokens with a variance-normalised squared error and a start/ramp schedule, because plain
  MSE from step 0 collapsed a from-scratch ViT (``sandwich``).
* **Search**: preference → decoder width by ratio to the largest preference; widest encoder that
  fits; uniform step-down of the decoders when even the narrowest encoder does not (``search``).
* **Evaluation**: controllability = Spearman's ρ per task between preference and that task's
  metric over Dirichlet-sampled preferences at a budget, averaged over tasks (DYMU's definition);
  hypervolume of the chosen sub-networks' task metrics normalised by the super-network's range
  (``evaluate``, ``hypervolume``).
* **FLOPs**: measured, never counted by formula (``flops``).
"""

from mtljax.models.slim.export import (build_from_spec, build_slim, export, load_subnetwork, save_subnetwork,
                                       spec_from_config, spec_of, subnet_spec)
from mtljax.models.slim.model import BACKBONES, SlimConfig, SlimDecoder, SlimModel

__all__ = ["BACKBONES", "SlimConfig", "SlimDecoder", "SlimModel", "build_from_spec", "build_slim", "export",
           "load_subnetwork", "save_subnetwork", "spec_from_config", "spec_of", "subnet_spec"]
