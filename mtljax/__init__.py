"""mtljax: multi-task learning at TPU scale in JAX/Flax.

The main nouns, importable from the top (loaded on first use, so ``import mtljax`` is cheap)::

    config = mtljax.base_config()                     # the default experiment, an ml_collections.ConfigDict
    summary = mtljax.train(config)                    # a whole run: what `mtljax train` does
    data = mtljax.build_dataset(config.data)          # tasks, input shape, splits
    model = mtljax.build_model(config.model, data.tasks, data.input_shape)   # a Flax module
    tx = optax.chain(mtljax.as_optax(mtljax.upgrad(), num_tasks=2), optax.adamw(1e-3))

========================  ==========================================================================
``Task``                  a task: kind, loss, metrics (``mtljax.tasks``)
``build_dataset``         datasets by name (``mtljax.data``)
``build_model``           multi-task models by name; ``ViT``, ``MultiTaskModel`` (``mtljax.models``)
``objective``             a model's training objective, the train step's hook (``mtljax.models.objective``)
``as_optax``              a multi-task method as the first transform of an optax chain
``get_method``, methods   ``upgrad``, ``pcgrad``, ``mgda``, ``nash_mtl``, ``famo``, ... (``mtljax.optim``)
``task_gradients``        lazy per-task gradients at param / gramian / rep / autogram level (``TaskGradients``)
``sam``, ``flat_sam``     SAM and task-based flat-region SAM around a multi-task transform
``multi_steps``,          gradient accumulation and finite guard for chains that start with a
``apply_if_finite``       multi-task transform
``Experiment``            everything a run builds from a config (``mtljax.trainer``)
``train``, ``evaluate``   one call from a config to a trained / evaluated run (``mtljax.commands``)
``run_merge``             ``mtljax merge``: merge task experts, evaluate, report (``mtljax.commands.merge``;
                          the pure merging functions are ``mtljax.merge``)
``base_config``,          the default config, a config file (``"configs/multitab.py:conflict"``) and
``load_config``,          the one-line config error
``ConfigError``
========================  ==========================================================================
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "base_config": "mtljax.config", "load_config": "mtljax.config", "ConfigError": "mtljax.config",
    "Task": "mtljax.tasks",
    "build_dataset": "mtljax.data", "Dataset": "mtljax.data",
    "build_model": "mtljax.models", "MultiTaskModel": "mtljax.models", "ViT": "mtljax.models",
    "objective": "mtljax.models.objective", "Objective": "mtljax.models.objective",
    "Experiment": "mtljax.trainer.experiment",
    "train": "mtljax.commands.train", "evaluate": "mtljax.commands.train",
    "run_merge": "mtljax.commands.merge",
}
_OPTIM = ("METHODS", "Method", "as_optax", "get_method", "task_gradients", "TaskGradients", "LossFunction", "sam",
          "flat_sam", "multi_steps", "apply_if_finite", "equal", "uncertainty_weighting", "dwa",
          "random_loss_weighting", "geometric_loss", "famo", "db_mtl", "smooth_tchebycheff", "gradnorm", "mgda",
          "pcgrad", "gradvac", "cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "upgrad", "dualproj", "conflict_free",
          "fairgrad", "graddrop")
_EXPORTS.update({name: "mtljax.optim" for name in _OPTIM})

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mtljax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
