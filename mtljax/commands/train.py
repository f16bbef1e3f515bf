"""The ``train`` and ``eval`` commands, also the one-call Python entry points ``mtljax.train(config)``
and ``mtljax.evaluate(config)``."""

from __future__ import annotations

from typing import Callable

from mtljax.commands import baselines as bl
from mtljax.trainer.experiment import Experiment
from mtljax.trainer.loop import evaluate_workdir, fit


def train(config, *, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) the run of ``config`` in ``config.workdir``; returns the final summary
    ``{"step", "steps", "metrics": {task: {metric: value}}[, "baselines", "delta_m"]}`` (``step``: the
    step of the evaluated parameters; ``steps`` the same).

    With ``config.baselines.train`` it first trains one single-task model per task (reused when
    already finished) and reports Δm; else ``config.baselines.file`` gives their metrics.
    A config mistake raises :class:`~mtljax.config.ConfigError` before anything is trained or written.
    """
    exp = Experiment(config)  # checks the whole config first (and resolves "+task" in config.data.tasks)
    baselines = bl.resolve(exp.config, log=log, tasks=exp.tasks)
    return fit(exp.config, baselines=baselines, experiment=exp, log=log)


def evaluate(config, *, log: Callable[[str], None] = print) -> dict:
    """Per-task test metrics of the newest checkpoint in ``config.workdir``."""
    baselines = bl.from_file(config, log=log)
    return evaluate_workdir(config, log=log, baselines=baselines)


def train_command(config, args) -> int:
    """``mtljax train`` (``args``: the parsed flags)."""
    train(config)
    return 0


def eval_command(config, args) -> int:
    """``mtljax eval``."""
    evaluate(config)
    return 0
