"""The training loop: an experiment in, a trained and evaluated multi-task model out.

``fit(config)`` builds the :class:`~mtljax.trainer.experiment.Experiment` (a config mistake raises a
one-line :class:`~mtljax.config.ConfigError` before anything is compiled or written), puts the state
on the mesh, resumes from the newest checkpoint in ``config.workdir`` if there is one (train state
*and* data-iterator state, so a killed run continues bit-for-bit; corrupted checkpoints are moved aside
with a warning and the previous one is used, see :mod:`mtljax.trainer.checkpoint`), trains with periodic evaluation
and checkpoints, and finishes with a per-task summary (and Δm when single-task baseline metrics are
given).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable

import jax
import numpy as np
import tqdm

from mtljax import metrics as mt
from mtljax.config import ConfigError
from mtljax.trainer.checkpoint import Checkpointer, write_json
from mtljax.trainer.experiment import Experiment
from mtljax.trainer.logging import MetricWriter
from mtljax.trainer.preemption import Notice, Preempted

# Config sections that must match when a run directory is reused (train.steps may grow).
# config.mesh and config.dist may change: a checkpoint restores onto any mesh and number of processes, and the
# math does not depend on them (MoE routing groups are counted in examples), only float summation order.
_RESUME_KEYS = ("seed", "data", "model", "optim")
# Layout of the train state in checkpoints; a run directory written with another one is refused.
STATE_FORMAT = 2


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the run stopped with its last good checkpoint."""


def fit(config, *, baselines: dict | None = None, experiment: Experiment | None = None,
        log: Callable[[str], None] = print) -> dict:
    """Train (or resume) the run described by ``config``; returns the final summary dict.

    ``baselines``: single-task metrics ``{task: {metric: value}}`` for Δm (see
    :mod:`mtljax.commands.baselines`, which the ``train`` command uses to produce them).
    ``experiment``: ``Experiment(config)`` if already built.
    """
    exp = experiment or Experiment(config)
    config = exp.config  # with tasks added to a trained run resolved ("+task"): what config.json records
    workdir = os.path.abspath(config.workdir)
    _check_workdir_config(config, workdir)
    c = config.train
    with jax.set_mesh(exp.mesh):
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=c.keep_checkpoints)
        state, shardings = exp.init_state()
        it = exp.train_iterator()
        start = None
        if ckpt.latest_step() is not None:  # the newest usable step; unusable ones are moved aside
            start, restored = ckpt.restore_newest_good(exp.abstract_state()[0], it, log)
        if start is not None:
            state = restored
            log(f"resumed from step {start} in {ckpt.directory}")
        elif exp.init_plan is not None or exp.source_plan is not None:  # from other runs' parameters (config.init)
            state = exp.warm_start(state, shardings, log)
            if exp.init_plan is not None and jax.process_index() == 0:
                with open(os.path.join(workdir, "init.json"), "w") as f:
                    json.dump(exp.init_plan.as_dict(), f, indent=1)
        start = int(start or 0)
        writer = MetricWriter(workdir)
        if start or ckpt.unusable:
            _prune_metrics(writer.path, start)
        train_step = exp.jit_train_step(shardings)
        eval_step = exp.jit_eval_step(shardings.params)
        try:
            with Notice(ckpt.manager) as notice:
                results = _run(exp, state, it, train_step, eval_step, ckpt, writer, baselines, start, log, notice)
        finally:
            ckpt.wait()
            step = ckpt.latest_step()  # the step of the evaluated parameters (always checkpointed)
            ckpt.close()
            writer.close()
    return _finish(exp, workdir, results, baselines, log, step)


def evaluate(exp: Experiment, eval_step, params, split: str = "test", max_examples: int = 0) -> dict:
    """Per-task metrics and losses of ``params`` over a whole split."""
    total = None
    for batch in exp.eval_batches(split, max_examples):
        total = mt.add_stats(total, eval_step(params, batch))
    results = mt.finalize(exp.tasks, total["stats"])
    for t in exp.tasks:
        loss = total["loss"][t.name]
        results[t.name]["loss"] = float(loss["sum"] / max(float(loss["count"]), 1.0))
    return results


def _check_workdir_config(config, workdir: str):
    """Refuse to resume a run directory written by an incompatible config (nothing is touched)."""
    path = os.path.join(workdir, "config.json")
    current = {**json.loads(config.to_json_best_effort()), "state_format": STATE_FORMAT}
    current.pop("dist", None)  # process 0's own start-up settings: not the run's, and not for eval to reuse
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if os.path.isdir(os.path.join(workdir, "checkpoints")) and saved.get("state_format") != STATE_FORMAT:
            raise ConfigError(f"config.workdir={workdir!r} holds checkpoints of an older mtljax (train-state "
                              "layout changed); use a new --config.workdir (nothing was changed there)")
        for key in _RESUME_KEYS:
            if saved.get(key) != current.get(key):
                raise ConfigError(
                    f"config.{key} differs from the run already in workdir {workdir!r}; "
                    "use a new --config.workdir (nothing was changed there)"
                )
    if jax.process_index() == 0:
        try:
            os.makedirs(workdir, exist_ok=True)
            write_json(path, current, indent=1)  # whole: the other processes read it at the same time
        except OSError as e:
            raise ConfigError(f"{config.workdir!r} cannot be written ({e.strerror or e}: {e.filename or workdir})",
                              "workdir") from None


def _summarise_train(tasks, acc):
    """Mean losses and metrics over a logging interval from accumulated step metrics."""
    out = {"loss": acc["loss"] / acc["n"], "grad_norm": acc["grad_norm"] / acc["n"]}
    out.update({k: v / acc["n"] for k, v in acc["aux"].items()})  # MoE balancing losses, dropped tokens...
    finals = mt.finalize(tasks, acc["stats"])
    for i, t in enumerate(tasks):
        out[t.name] = {"loss": acc["task_losses"][i] / acc["n"], "weight": acc["task_weights"][i] / acc["n"],
                       **finals[t.name]}
    return out


def _run(exp, state, it, train_step, eval_step, ckpt, writer, baselines, start, log, notice):
    c, tasks = exp.config.train, exp.tasks
    bar = tqdm.tqdm(total=c.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                    mininterval=0.1 if sys.stderr.isatty() else 10.0,
                    disable=not c.progress or jax.process_index() != 0)
    acc, pending, results, t0 = None, None, None, time.perf_counter()

    def check(step, metrics):
        nonlocal acc
        m = jax.device_get(metrics)
        if not bool(m["finite"]):
            bad = [t.name for t, v in zip(tasks, m["task_losses"]) if not np.isfinite(v)]
            what = f"task(s) {', '.join(bad)}" if bad else "the gradient (all task losses finite)"
            ckpt.wait()
            last = ckpt.latest_step()
            bar.close()
            raise NonFiniteLossError(
                f"non-finite loss at step {step} in {what}; run stopped, last good checkpoint: "
                f"{'step ' + str(last) if last is not None else 'none'} in {ckpt.directory}")
        stats = {k: m[k] for k in ("loss", "task_losses", "task_weights", "grad_norm", "aux")}
        stats["stats"], stats["n"] = m["stats"], 1
        acc = stats if acc is None else jax.tree.map(np.add, acc, stats)

    for step in range(start + 1, c.steps + 1):
        state, metrics = train_step(state, exp.to_global(next(it)))
        if pending is not None:
            check(*pending)
        pending = (step, metrics)
        bar.update(1)
        boundary = step % c.log_every == 0 or step % c.eval_every == 0 or step % c.checkpoint_every == 0
        if boundary or step == c.steps:
            check(*pending)
            pending = None
        if acc is not None and (step % c.log_every == 0 or step == c.steps):
            summary = _summarise_train(tasks, acc)
            summary["steps_per_s"] = acc["n"] / (time.perf_counter() - t0)
            writer.write(step, "train", summary)
            bar.set_postfix(loss=f"{summary['loss']:.4f}")
            acc, t0 = None, time.perf_counter()
        if step % c.eval_every == 0 or step == c.steps:
            results = evaluate(exp, eval_step, state.params, max_examples=c.eval_max_examples)
            record = dict(results)
            if baselines:
                record["delta_m"] = mt.delta_m(tasks, results, baselines)
            writer.write(step, "eval", record)
            if jax.process_index() == 0:
                bar.clear()
                log(f"step {step} eval: {_eval_line(tasks, results, record.get('delta_m'))}")
                bar.refresh()
            t0 = time.perf_counter()  # steps/s counts training only
        if step % c.checkpoint_every == 0 or step == c.steps:
            ckpt.save(step, state, it, force=True)
            t0 = time.perf_counter()
        if notice.reached(step):  # SIGTERM: save this step and stop (the rerun resumes from it)
            if pending is not None:
                check(*pending)
            if ckpt.latest_step() != step:
                ckpt.save(step, state, it, force=True)
            bar.close()
            raise Preempted(step, ckpt.directory)
    bar.close()
    if results is None:  # nothing left to train: evaluate the restored state
        results = evaluate(exp, eval_step, state.params, max_examples=c.eval_max_examples)
    return results


def _prune_metrics(path: str, step: int):
    """Drop records logged after ``step`` by a run that was killed, so the log has no duplicates."""
    if jax.process_index() != 0 or not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(lines)


def _eval_line(tasks, results, delta_m=None) -> str:
    """``left accuracy 0.7120, right accuracy 0.8010[, Δm -7.80 %]``: each task's main metrics."""
    parts = [f"{t.name} {m} {results[t.name][m]:.4f}" for t in tasks for m in t.directions()]
    return ", ".join(parts + ([f"Δm {delta_m:+.2f} %"] if delta_m is not None else []))


def _finish(exp, workdir, results, baselines, log, step=None):
    """Write ``final_metrics.json`` (``step``: the step of the evaluated parameters; ``steps`` the same,
    for older readers) and print the table and where the outputs are."""
    steps = exp.config.train.steps
    step = steps if step is None else int(step)
    summary = {"step": step, "steps": step, "metrics": results}
    if baselines:
        summary["baselines"] = baselines
        summary["delta_m"] = mt.delta_m(exp.tasks, results, baselines)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
            json.dump(summary, f, indent=1)
    if step > steps:
        log(f"{workdir} is already at step {step} > config.train.steps={steps}: nothing trained; "
            f"the table is of its step-{step} parameters")
    log(f"test metrics at step {step}:")
    log(mt.format_table(exp.tasks, results, baselines))
    log(f"outputs in {workdir}: checkpoints/ (newest step {step}), metrics.jsonl, tensorboard/, final_metrics.json")
    return summary


def restore_params(exp: Experiment, log: Callable[[str], None] | None = None):
    """``(step, params, param_shardings)`` of the newest usable checkpoint in ``exp.config.workdir``, on
    ``exp.mesh`` (unusable newer ones are moved aside with a warning line through ``log``, default stderr;
    see :mod:`mtljax.trainer.checkpoint`).

    Call inside ``jax.set_mesh(exp.mesh)``. Raises ConfigError when the run directory holds no usable
    checkpoint.
    """
    config = exp.config
    directory = os.path.join(os.path.abspath(config.workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise ConfigError(f"config.workdir={config.workdir!r} holds no checkpoints; train it first (mtljax train "
                          "with the same --config)")
    ckpt = Checkpointer(directory, keep=config.train.keep_checkpoints)
    step = ckpt.latest_step()
    if step is None:
        ckpt.close()
        raise ConfigError(f"config.workdir={config.workdir!r} holds no checkpoints")
    abstract, shardings = exp.abstract_state()
    kwargs = {"log": log} if log is not None else {}
    step, state = ckpt.restore_newest_good(abstract, None, then="using step {}",
                                           otherwise="no usable checkpoint left", **kwargs)
    ckpt.close()
    if step is None:
        steps = ", ".join(str(s) for s, _, _ in ckpt.unusable)
        raise ConfigError(f"config.workdir={config.workdir!r} holds no usable checkpoint (steps {steps} failed "
                          f"their checks and were moved to {ckpt.directory}_unusable)")
    return step, state.params, shardings.params


def evaluate_workdir(config, *, log: Callable[[str], None] = print, baselines: dict | None = None) -> dict:
    """Evaluate the newest checkpoint in ``config.workdir`` on the test split."""
    exp = Experiment(config)
    with jax.set_mesh(exp.mesh):
        step, params, param_shardings = restore_params(exp, log)
        results = evaluate(exp, exp.jit_eval_step(param_shardings), params)
    log(f"step {step}")
    log(mt.format_table(exp.tasks, results, baselines))
    return results
