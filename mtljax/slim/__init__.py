"""The ``mtljax slim`` command (:mod:`.command`) and the ``config.model.slim`` section (:mod:`.config`).

The slim model itself (controllable multi-task architectures, Aich et al., ICCV 2023) and its
post-training tools (FLOPs, search, evaluation, controllability, hypervolume, plots) live in
:mod:`mtljax.models.slim`.
"""
