"""Adding tasks to a trained run: ``config.data.tasks = ("+new_task",)`` (continual multi-task learning).

A run started from another run (``config.init.checkpoint = RUN``) may name its tasks relative to that
run's: every entry of ``config.data.tasks`` that starts with ``+`` is a task to *add*, and an entry may
hold several, comma-separated, so a command line can type them::

    mtljax train --config=configs/adapt_lora.py --config.init.checkpoint=runs/stage1 \\
        --config.data.tasks=+texture --workdir=runs/stage2
    mtljax train ... --config.data.tasks=+texture,+background      # two at once ("+texture,background" too)

The run's tasks become the source run's tasks (``RUN/config.json``, in their order) followed by the
added ones, and the source's tasks join ``config.optim.frozen_tasks`` (their heads and their rows of
every per-task module stay unchanged; :func:`mtljax.optim.trainable.freeze_tasks`). Parameters load
as :mod:`mtljax.trainer.warm_start` says: heads by name, per-task slots ``[T, ...]`` by task name, the
added tasks' slots as ``config.init.task_init`` says (a new expert: fresh by default). What else trains
is the config's choice (``config.optim.trainable``: the adaptation configs freeze the backbone). The
run's own ``config.json`` records the resolved list, so the next stage names this run and adds one more
(``+a`` then ``+b`` then ...).

What the earlier tasks keep:

* per-task modules selected by task id (``config.model.peft.routing=''`` or ``'gate'``: LoRA,
  adapters, prefixes, prompts; MULTI-LANE lanes) on a frozen backbone: an earlier task's computation
  reads only the backbone, its own slot and its head, all unchanged — its outputs are **bit-identical**
  (checked in ``tests/trainer/test_continual.py`` and by ``benchmarks/continual.py`` on the logits);
* LoRA experts routed by PHATGOOSE (``routing='phatgoose'``, no task ids at inference): adding a task
  adds its expert and its gate to every projection's router, so every token of every task may be routed
  differently — earlier tasks' predictions **may change** (forgetting, measured by
  ``benchmarks/continual.py``). The experts and gates are one slot per task here too
  (:func:`task_slots`): the earlier ones are frozen and loaded by task name, the new one is added. This
  is the expert life cycle of continual mixtures of LoRA experts (a dedicated expert per new task,
  trained on that task alone, earlier experts frozen; the router grows by one expert), with PHATGOOSE's
  router (Muqeeth et al., 2024): the router has no parameters of its own beyond the experts' gates, so
  "updating the router" is adding the new gate. The brief named "Dynamic Routing Between Experts"; no
  note on it was available, so this follows PHATGOOSE's recipe: train the new expert and its gate with
  task ids (``routing='gate'``), route with ``routing='phatgoose'`` at inference. Training a stage with
  ``routing='phatgoose'`` itself also works: the new expert and gate then learn through the router (the
  new gate starts at zero, i.e. a score of 0 against the others).
* full fine-tuning (nothing frozen but the earlier heads): the shared backbone moves, the earlier
  tasks forget. The earlier tasks' losses still count toward the shared parameters unless their
  ``config.optim.task_weights`` are 0 (with labels for every task in every example, as in ``factors``,
  weight 0 is what a stage that sees only the new task's data means).

Errors name ``config.data.tasks``, before anything is compiled or written: ``+`` without
``config.init.checkpoint``, a source run without ``config.json``, an added task the source already has
(or added twice), plain names mixed with ``+`` names; an unknown task is the dataset's own error.
"""

from __future__ import annotations

import json

import jax

from mtljax.config import ConfigError, require
from mtljax.data.registry import default_task_names
from mtljax.models.peft import lora_routing
from mtljax.models.peft.phatgoose import expert_mask
from mtljax.trainer.warm_start import checkpoint_dir, run_config_path

ADD = "+"


def added_tasks(tasks) -> tuple[str, ...] | None:
    """The task names ``tasks`` (``config.data.tasks``) adds, or ``None`` when it adds none (a plain
    list). Entries are split at commas; every name must then start with ``+``, except that names after
    a ``+name`` in the same entry inherit it (``"+a,b"`` adds ``a`` and ``b``)."""
    entries = [tasks] if isinstance(tasks, str) else list(tasks or ())
    if not any(p.strip().startswith(ADD) for e in entries for p in str(e).split(",")):
        return None
    names = []
    for entry in entries:
        parts = [p.strip() for p in str(entry).split(",")]
        require(parts[0].startswith(ADD), "data.tasks",
                f"{tuple(entries)} mixes plain task names with added ones ('+name'); to add tasks to the run of "
                "config.init.checkpoint give only '+name' entries")
        for p in parts:
            name = p.removeprefix(ADD).strip()
            require(bool(name) and not name.startswith(ADD), "data.tasks", f"{entry!r}: an empty task name")
            names.append(name)
    require(len(set(names)) == len(names), "data.tasks", f"adds a task twice: {names}")
    return tuple(names)


def source_tasks(init_config) -> tuple[str, ...]:
    """The tasks, in order, of the run ``config.init.checkpoint`` names (from its ``config.json``)."""
    require(bool(init_config is not None and init_config.checkpoint), "data.tasks",
            "'+name' adds tasks to the run of config.init.checkpoint, which is empty")
    try:
        state_dir, _ = checkpoint_dir(init_config.checkpoint, int(init_config.get("step", 0)))
    except ConfigError as e:
        raise e.within("init") from None
    path = run_config_path(state_dir)
    require(path is not None, "data.tasks", f"'+name' needs the source run's tasks, but {init_config.checkpoint!r} "
            "has no config.json")
    try:
        with open(path) as f:
            data = json.load(f).get("data", {})
        names = tuple(str(n) for n in (data.get("tasks") or default_task_names(data) or ()))
    except (OSError, ValueError, AttributeError) as e:
        raise ConfigError(f"cannot read the source run's tasks from {path} ({e})", "data.tasks") from None
    require(bool(names), "data.tasks", f"cannot name the source run's tasks ({path} has no data.tasks)")
    return names


def resolve(config):
    """``config`` itself when ``config.data.tasks`` adds no task; else a copy whose ``data.tasks`` is the
    source run's tasks followed by the added ones and whose ``optim.frozen_tasks`` holds the source's
    tasks too (see the module docstring)."""
    new = added_tasks(config.data.tasks)
    if new is None:
        return config
    old = source_tasks(config.get("init"))
    again = [n for n in new if n in old]
    require(not again, "data.tasks", f"adds {again}, which the source run {config.init.checkpoint!r} already has "
            f"(its tasks: {list(old)})")
    out = config.copy_and_resolve_references()
    out.data.tasks = old + new
    frozen = tuple(out.optim.get("frozen_tasks", ()) or ())
    out.optim.frozen_tasks = old + tuple(n for n in frozen if n not in old)
    return out


def task_slots(model_config, specific):
    """The function marking the parameters that hold one slot per task (a boolean pytree like its
    argument): ``specific`` (the objective's task-specific parameters) and, with LoRA routed by
    PHATGOOSE, the experts and gates (``lora_*``: shared by every token, yet expert ``t`` is task
    ``t``'s). Warm starts map these slots by task name and ``frozen_tasks`` freezes them."""
    peft = model_config.get("peft") if model_config.get("name") == "hps" else None
    if peft is None or lora_routing(peft)[0] != "phatgoose":
        return specific
    return lambda tree: jax.tree.map(lambda s, e: bool(s) or bool(e), specific(tree), expert_mask(tree))


__all__ = ["ADD", "added_tasks", "resolve", "source_tasks", "task_slots"]
