"""mtljax: multi-task learning at TPU scale in JAX/Flax.

Import what you need without the trainer: ``mtljax.tasks.Task``, ``mtljax.models.build_model`` (or the
modules themselves), ``mtljax.data.build_dataset``, ``mtljax.train.step.make_train_step``, and the
``mtljax`` command for config-driven runs.
"""

__version__ = "0.1.0"
