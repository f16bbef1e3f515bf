"""The runs ``mtljax merge`` reads: the pretrained run, the task experts fine-tuned from it, an optional
multi-task run; and the config of the merged model they imply.

Checks, all before any parameter is read or anything compiled (one line each, naming the argument):

* every run is a directory with ``config.json`` and a checkpoint;
* every expert was fine-tuned from the ``--pretrained`` run: its ``init.json`` (written by ``mtljax
  train`` when it starts from ``config.init.checkpoint``) names the pretrained run's newest checkpoint.
  An expert started from another run, or from another step of it, or not warm-started at all, is
  refused: its task vector ``θ_t − θ_0`` would be meaningless;
* no task is claimed by two experts;
* the experts' models are the same (``config.model``, LoRA settings aside).

The merged model's config: the first expert's, with the union of the experts' tasks; when the experts
read different datasets (factors and multi-digits), the data becomes a mixture of them
(:mod:`mtljax.data.mixture`), one component per distinct dataset with its experts' tasks. LoRA
experts are merged as dense ``ΔW`` (folded into the kernels), so the merged model has no LoRA modules.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os

import ml_collections as mlc

from mtljax.commands.saved_config import update_config
from mtljax.config import base_config
from mtljax.data.registry import default_task_names
from mtljax.merge.vectors import MergeError


@dataclasses.dataclass(frozen=True)
class Run:
    path: str  # as given
    config: dict  # its config.json (without state_format)
    state_dir: str  # <run>/checkpoints/<step>/state of its newest checkpoint
    step: int
    tasks: tuple[str, ...]
    init_state_dir: str = ""  # the checkpoint it was warm-started from ('' if none)


def read_run(path: str, what: str) -> Run:
    """The run in directory ``path``; ``what`` names the argument in errors (``--experts[2]``)."""
    root = os.path.abspath(path)
    if not os.path.isdir(root):
        raise MergeError(f"{what}: {path!r} is not a directory")
    cfg_path = os.path.join(root, "config.json")
    if not os.path.isfile(cfg_path):
        raise MergeError(f"{what}: {path!r} has no config.json (not an mtljax run directory)")
    with open(cfg_path) as f:
        config = json.load(f)
    config.pop("state_format", None)
    directory = os.path.join(root, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
    steps = [s for s in steps if os.path.isdir(os.path.join(directory, str(s), "state"))]
    if not steps:
        raise MergeError(f"{what}: {path!r} holds no checkpoint (expected {path}/checkpoints/<step>/state)")
    data = config.get("data", {})
    tasks = tuple(data.get("tasks") or default_task_names(data) or ())
    init_dir = ""
    init_json = os.path.join(root, "init.json")
    if os.path.isfile(init_json):
        with open(init_json) as f:
            init_dir = json.load(f).get("state_dir", "")
    return Run(path, config, os.path.join(directory, str(steps[-1]), "state"), steps[-1], tasks, init_dir)


def check_experts(pretrained: Run, experts: list[Run]) -> None:
    """Refuse experts not fine-tuned from ``pretrained``'s newest checkpoint, or claiming one task twice."""
    if not experts:
        raise MergeError("--experts: no expert runs given")
    owner: dict[str, str] = {}
    want = os.path.realpath(pretrained.state_dir)
    for i, e in enumerate(experts):
        if not e.init_state_dir:
            raise MergeError(f"--experts[{i}]: {e.path!r} was not fine-tuned from a pretrained run (no init.json; "
                             "train it with --config.init.checkpoint=<pretrained run>)")
        if os.path.realpath(e.init_state_dir) != want:
            raise MergeError(f"--experts[{i}]: {e.path!r} was fine-tuned from {e.init_state_dir}, not from "
                             f"--pretrained's {pretrained.state_dir}; task vectors need one common start")
        if not e.tasks:
            raise MergeError(f"--experts[{i}]: {e.path!r}: cannot tell its tasks (config.json data.tasks)")
        for t in e.tasks:
            if t in owner:
                raise MergeError(f"--experts[{i}]: task {t!r} is already the task of {owner[t]!r}; one expert per task")
            owner[t] = e.path


def _without(d: dict, *keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def _first_difference(a, b, prefix: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{prefix}.{k}")
            if d:
                return d
        return None
    return None if a == b else prefix


def merged_config(experts: list[Run], workdir: str, seed: int, mesh=None) -> mlc.ConfigDict:
    """The config of one model with all the experts' tasks (see the module docstring)."""
    first = experts[0].config

    def model_of(run):  # its config.model over today's defaults (keys added since it was written)
        node = base_config().model
        update_config(node, run.config["model"])
        node.peft = base_config().model.peft  # LoRA experts arrive folded into dense kernels: no peft
        return json.loads(node.to_json_best_effort())

    model = model_of(experts[0])
    for i, e in enumerate(experts[1:], 1):
        other = model_of(e)
        diff = _first_difference(model, other, "config.model")
        if diff:
            raise MergeError(f"--experts[{i}]: {e.path!r} has another model than {experts[0].path!r} ({diff} differs)")
    groups: list[tuple[dict, list[str]]] = []
    for e in experts:
        data = _without(e.config["data"], "tasks")
        for d, tasks in groups:
            if _without(d, "batch_size", "eval_batch_size", "prefetch") == _without(
                    data, "batch_size", "eval_batch_size", "prefetch"):
                tasks.extend(e.tasks)
                break
        else:
            groups.append((data, list(e.tasks)))
    if len(groups) == 1:
        data = {**groups[0][0], "tasks": tuple(groups[0][1])}
    else:
        data = copy.deepcopy(_without(first["data"], "tasks"))
        data.update(name="mixture", tasks=(), components=[{**d, "tasks": tuple(t)} for d, t in groups])
    c = base_config()
    update_config(c, {k: v for k, v in first.items() if k in ("train", "optim")})
    update_config(c, {"model": model, "data": data})
    c.workdir = workdir
    c.seed = seed
    c.init.checkpoint = ""
    c.optim.trainable = ()
    c.optim.frozen_tasks = ()
    if mesh is not None:
        c.mesh = mesh
    return c


__all__ = ["Run", "check_experts", "merged_config", "read_run"]
