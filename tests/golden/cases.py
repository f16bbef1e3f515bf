"""Golden cases of the train step: configs (as data) whose parameters after 5 steps were recorded with
the step *before* the spine redesign (commit fd90ec3), by ``record.py`` in this folder (its docstring
says how), once per kind of CPU: ``steps5.npz`` (AMD, AVX2) and ``steps5_avx512.npz`` (AMD, AVX-512).

Every case is ``(config file or None, config arg, overrides)`` applied on top of ``COMMON``; both the
recorder (old code) and ``tests/train/test_golden.py`` (new code) build their configs from this table,
so the two runs see the same config, data order and initialisation. Runs use 8 simulated CPU devices
(the test set-up) with a data-parallel mesh.
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

ROOT = pathlib.Path(__file__).parents[2]
STEPS = 5

# small data, batch 32, constant learning rate with no warmup (so 5 steps move every parameter)
COMMON = {
    "data.num_train": 256, "data.num_test": 64, "data.batch_size": 32, "data.eval_batch_size": 32,
    "optim.warmup_steps": 0, "train.progress": False,
}
TINY_VIT = {"model.vit.width": 16, "model.vit.depth": 1, "model.vit.num_heads": 2, "model.vit.mlp_dim": 32}
# plain SGD without clipping: the update is the multi-task gradient itself (Adam would hide its scale)
SGD = {"optim.name": "sgd", "optim.learning_rate": 0.1, "optim.b1": 0.0, "optim.schedule": "constant",
       "optim.grad_clip": 0.0}

CASES: dict[str, tuple[str | None, str | None, dict]] = {
    # the default config as it is (HPS ViT width 64 x 4 blocks, AdamW, clipping, cosine schedule)
    "default": (None, None, {}),
    # M3ViT: per-task gates, MoE MLP in block 1; importance loss off (its definition changes: issue 10)
    "m3vit": ("configs/m3vit.py", "digits", {**TINY_VIT, "model.vit.depth": 2, "model.moe.importance_weight": 0.0}),
    # controllable model: sandwich of 4 configurations + CI-KD from step 0
    "controllable": ("configs/slim_digits.py", None, {**TINY_VIT, "model.vit.num_heads": 4,
                                                      "model.slim.decoder_hidden": 16, "model.slim.cikd_start": 0,
                                                      "model.slim.cikd_ramp": 0}),
    # loss weighting with state, MLP backbone, 7 regression tasks
    "famo_multitab": ("configs/multitab.py", "conflict", {**SGD, "model.mlp.hidden": (32, 32),
                                                          "optim.method": "famo"}),
    # Gramian methods at every level (and static task weights)
    "upgrad_param": (None, None, {**TINY_VIT, **SGD, "optim.method": "upgrad", "optim.task_weights": {"left": 2.0}}),
    "cagrad_gramian": (None, None, {**TINY_VIT, **SGD, "optim.method": "cagrad", "optim.level": "gramian",
                                    "optim.chunk_size": 1}),
    "mgda_rep_scenes": (None, None, {**TINY_VIT, **SGD, "data.name": "scenes", "data.image_size": 16,
                                     "data.num_train": 64, "optim.method": "mgda", "optim.level": "rep"}),
    # Jacobian method
    "graddrop": (None, None, {**TINY_VIT, **SGD, "optim.method": "graddrop"}),
    # plain SAM around PCGrad; task-based flat-region SAM around PCGrad
    "sam_pcgrad": (None, None, {**TINY_VIT, **SGD, "optim.method": "pcgrad", "optim.sam": "sam"}),
    "flat_pcgrad": (None, None, {**TINY_VIT, **SGD, "optim.method": "pcgrad", "optim.sam": "flat"}),
    # Rep-MTL regulariser with equal weighting (double backprop through the heads); AdamW with clipping:
    # with zero-initialised heads the saliency is 0 at step 0 and the regulariser's gradient norm ~3e6,
    # which plain SGD does not survive
    "rep_mtl": (None, None, {**TINY_VIT, "optim.rep_mtl": True}),
    # Nash-MTL at parameter level
    "nash_mtl": (None, None, {**TINY_VIT, **SGD, "optim.method": "nash_mtl"}),
}


def _set(config, key: str, value):
    *path, last = key.split(".")
    node = config
    for part in path:
        node = node[part]
    node[last] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value


def build_config(name: str):
    """The config of golden case ``name`` (any mtljax version whose configs take these keys)."""
    path, arg, overrides = CASES[name]
    if path is None:
        from mtljax.config import base_config  # the pre-redesign location; the new one re-exports it

        config = base_config()
    else:
        spec = importlib.util.spec_from_file_location("golden_config", ROOT / path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(arg)
    for key, value in {**COMMON, **overrides}.items():
        _set(config, key, value)
    return config
