"""Controllable multi-task architectures (Aich et al., ICCV 2023): training objective (sandwich +
CI-KD), FLOPs from compiled cost analysis, the (budget, preference) → widths search, evaluation
(per-configuration metrics, controllability, hypervolume, trade-off plot) and the ``mtljax slim``
command. The model itself is :mod:`mtljax.models.controllable`."""
