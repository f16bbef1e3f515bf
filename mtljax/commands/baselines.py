"""Single-task baselines for the multitask gain Δm.

``config.baselines.file``: a JSON ``{task: {metric: value}}`` (or a ``final_metrics.json`` of an earlier
run, or any JSON with a ``metrics`` entry of that form, e.g. ``configs/baselines/default.json``).
``config.baselines.train=True`` (which wins over the file): before the multi-task run, train
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


def from_file(config, *, log, tasks=None) -> dict | None:
    """The metrics of ``config.baselines.file`` (None without one, or, said in one line, when it lacks
    one of ``tasks``, names or :class:`~mtljax.tasks.Task` objects whose main metrics are checked too)."""
    if not config.baselines.file:
        return None
    data = load(config.baselines.file)
    missing = _missing(data, list(tasks or config.data.tasks or data))
    if missing:
        log(f"config.baselines.file={config.baselines.file!r} has no single-task baseline for {missing}: "
            "no Δm (--config.baselines.train=True trains them)")
        return None
    log(f"Δm against the single-task baselines in {config.baselines.file}")
    return data


def resolve(config, *, log, tasks=None) -> dict | None:
    """The baseline metrics ``{task: {metric: value}}``, training them first if asked to.

    ``tasks``: the run's tasks (:class:`~mtljax.tasks.Task` objects or names; default:
    ``config.data.tasks`` or all of the dataset's). ``config.baselines.train`` wins over
    ``config.baselines.file`` (a config may ship a file, e.g. ``configs/default.py``). A file that
    lacks one of the run's tasks or metrics gives no Δm, said in one line.
    """
    if not config.baselines.train:
        return from_file(config, log=log, tasks=tasks)
    tasks = [getattr(t, "name", t) for t in tasks or ()]
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


def _missing(data: dict, tasks) -> list[str]:
    """The tasks (names or Task objects, whose main metrics are checked too) ``data`` has no baseline for."""
    out = []
    for t in tasks:
        name = getattr(t, "name", t)
        if name not in data:
            out.append(name)
        elif hasattr(t, "directions"):
            out += [f"{name}/{m}" for m in t.directions() if m not in data[name]]
    return out


def _final_step(path: str):
    """The step of the parameters a ``final_metrics.json`` reports (``steps`` in files before ``step``)."""
    with open(path) as f:
        summary = json.load(f)
    return summary.get("step", summary.get("steps"))
