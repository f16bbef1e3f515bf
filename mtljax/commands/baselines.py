"""Single-task baselines for the multitask gain Δm.

``config.baselines.file``: a JSON ``{task: {metric: value}}`` (or a ``final_metrics.json`` of an earlier
run, whose ``metrics`` entry is used). ``config.baselines.train=True``: before the multi-task run, train
one model per task with the *same* config restricted to that task (``config.data.tasks=[task]``) in
``<workdir>/baselines/<task>``; a baseline already finished there is reused, an interrupted one resumes.
"""

from __future__ import annotations

import json
import os

from mtljax.config import ConfigError


def load(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"config.baselines.file={path!r} cannot be read: {e}") from None
    return data.get("metrics", data)


def resolve(config, *, log, tasks=None) -> dict | None:
    """The baseline metrics ``{task: {metric: value}}``, training them first if asked to.

    ``tasks``: the run's task names (default: ``config.data.tasks`` or all of the dataset's).
    """
    if config.baselines.file:
        return load(config.baselines.file)
    if not config.baselines.train:
        return None
    from mtljax.data import build_dataset
    from mtljax.trainer.loop import fit

    names = list(tasks or config.data.tasks) or [t.name for t in build_dataset(config.data).tasks]
    if len(names) < 2:
        return None
    out = {}
    for name in names:
        sub = config.copy_and_resolve_references()
        sub.data.tasks = (name,)
        sub.baselines.train = False
        sub.optim.task_weights = {}
        sub.workdir = os.path.join(config.workdir, "baselines", name)
        final = os.path.join(sub.workdir, "final_metrics.json")
        if os.path.exists(final) and load(final) and _final_step(final) == sub.train.steps:
            log(f"baseline {name}: reusing {final}")
        else:
            log(f"baseline {name}: training a single-task model in {sub.workdir}")
            fit(sub, log=log)
        out[name] = load(final)[name]
    path = os.path.join(config.workdir, "baselines.json")
    os.makedirs(config.workdir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    return out


def _final_step(path: str):
    """The step of the parameters a ``final_metrics.json`` reports (``steps`` in files before ``step``)."""
    with open(path) as f:
        summary = json.load(f)
    return summary.get("step", summary.get("steps"))
