"""The training loop: config in, trained and evaluated multi-task model out.

``train(config)`` validates the config (one-line :class:`~mtljax.config.ConfigError` before anything is
compiled), builds data, model and optimizer, puts the state on a mesh from ``config.mesh``, resumes from
the newest checkpoint in ``config.workdir`` if there is one (train state *and* data-iterator state, so a
killed run continues bit-for-bit), trains with periodic evaluation and checkpoints, and finishes with a
per-task summary (and Δm against single-task baselines when ``config.baselines`` provides them).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from mtljax import metrics as mt
from mtljax.config import ConfigError, validate
from mtljax.data import base as data_base
from mtljax.data import build_dataset
from mtljax.models import build_model
from mtljax.models.hps import split_params
from mtljax.optim import get_method
from mtljax.optim.jacobian import sharded_gramian
from mtljax.parallel import distributed
from mtljax.parallel.mesh import make_mesh
from mtljax.parallel.rules import batch_sharding, rules_from_config
from mtljax.train import baselines as bl
from mtljax.train import step as st
from mtljax.train.checkpoint import Checkpointer
from mtljax.train.logging import MetricWriter
from mtljax.train.optimizer import build_optimizer
from mtljax.train.state import create_state

# Config sections that must match when a run directory is reused (train.steps may grow).
_RESUME_KEYS = ("seed", "data", "model", "optim", "mesh")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the run stopped with its last good checkpoint."""


class Experiment:
    """Everything ``train`` builds from a config before touching the devices."""

    def __init__(self, config):
        distributed.maybe_initialize()
        validate(config)
        self.config = config
        try:
            dataset = build_dataset(config.data)
            if config.data.tasks:
                dataset = dataset.select_tasks(list(config.data.tasks))
        except (ValueError, FileNotFoundError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(msg if "config." in msg else f"config.data: {msg}") from None
        self.dataset, self.tasks = dataset, dataset.tasks
        _check_model_fits(config, dataset)
        for name in config.optim.task_weights:
            if name not in {t.name for t in self.tasks}:
                raise ConfigError(f"config.optim.task_weights.{name}: no such task; tasks are {[t.name for t in self.tasks]}")
        try:
            self.model = build_model(config.model, self.tasks, dataset.input_shape)
        except ValueError as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(msg if "config." in msg else f"config.model: {msg}") from None
        self.tx = build_optimizer(config.optim, config.train.steps)
        try:
            self.method = get_method(config.optim.method, **dict(config.optim.method_kwargs))
        except ValueError as e:
            raise ConfigError(str(e).splitlines()[0]) from None
        if self.method.needs == "jacobian" and config.optim.level != "param":
            raise ConfigError(f"config.optim.level={config.optim.level!r}: method {self.method.name!r} needs "
                              "the per-task gradients themselves; use level 'param'")
        if config.optim.rep_mtl and config.optim.level == "rep" and self.method.needs != "losses":
            raise ConfigError("config.optim.rep_mtl cannot be combined with config.optim.level='rep'; "
                              "use 'param' or 'gramian'")
        self.mtl_init = lambda: self.method.init(len(self.tasks))
        self.mesh = make_mesh(dict(config.mesh.shape))
        self.rules = rules_from_config(config.mesh.rules)
        self.batch_sharding = batch_sharding(self.mesh, self.rules)


def _make_step(exp: Experiment, state_shardings):
    """The train step for ``config.optim`` (method, level, chunking) on this experiment's mesh."""
    o = exp.config.optim
    _, aux = jax.eval_shape(lambda x: exp.model.init_with_output(jax.random.PRNGKey(0), x)[0],
                            jnp.zeros((1, *exp.dataset.input_shape)))
    gramian_fn = None
    if exp.mesh.size > 1:
        shared, _ = split_params(state_shardings.params)
        specs = jax.tree.map(lambda s: s.spec, shared)
        gramian_fn = lambda js: sharded_gramian(js, exp.mesh, specs)  # noqa: E731
    return st.make_train_step(
        exp.model, exp.tasks, exp.tx, dict(o.task_weights), method=exp.method, level=o.level,
        chunk_size=o.chunk_size or None, head_grads=o.head_grads, has_aux_losses=bool(aux["losses"]),
        gramian_fn=gramian_fn, sam=o.sam, sam_rho=o.sam_rho, sam_adaptive=o.sam_adaptive,
        rep_mtl=dict(o.rep_mtl_kwargs) if o.rep_mtl else None)


def _check_model_fits(config, dataset):
    m = config.model
    if m.backbone in ("vit", "moe_vit"):
        if len(dataset.input_shape) != 3:
            raise ConfigError(f"config.model.backbone='vit' needs image inputs, dataset {dataset.name!r} gives shape {dataset.input_shape}")
        h, w, _ = dataset.input_shape
        if h % m.vit.patch_size or w % m.vit.patch_size:
            raise ConfigError(f"config.model.vit.patch_size={m.vit.patch_size} does not divide the {h}x{w} images")
    elif any(t.is_dense for t in dataset.tasks):
        raise ConfigError("config.model.backbone='mlp' cannot serve dense (per-pixel) tasks; use 'vit'")


def _check_workdir_config(config, workdir: str):
    """Refuse to resume a run directory written by an incompatible config (nothing is touched)."""
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        for key in _RESUME_KEYS:
            if saved.get(key) != current.get(key):
                raise ConfigError(
                    f"config.{key} differs from the run already in workdir {workdir!r}; "
                    "use a new --config.workdir (nothing was changed there)"
                )
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(current, f, indent=1)


def _to_global(local_batch, sharding):
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def evaluate(exp: Experiment, eval_step, params, split: str = "test", max_examples: int = 0):
    """Per-task metrics and losses of ``params`` over a whole split."""
    source = exp.dataset.splits[split]
    total = None
    for batch in data_base.eval_batches(
        source, exp.tasks, exp.config.data.eval_batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        max_examples=max_examples or None,
    ):
        total = mt.add_stats(total, eval_step(params, _to_global(batch, exp.batch_sharding)))
    results = mt.finalize(exp.tasks, total["stats"])
    for t in exp.tasks:
        loss = total["loss"][t.name]
        results[t.name]["loss"] = float(loss["sum"] / max(float(loss["count"]), 1.0))
    return results


def _summarise_train(tasks, acc):
    """Mean losses and metrics over a logging interval from accumulated step metrics."""
    out = {"loss": acc["loss"] / acc["n"], "grad_norm": acc["grad_norm"] / acc["n"]}
    out.update({k: v / acc["n"] for k, v in acc["aux"].items()})  # MoE balancing losses, dropped tokens...
    finals = mt.finalize(tasks, acc["stats"])
    for i, t in enumerate(tasks):
        out[t.name] = {"loss": acc["task_losses"][i] / acc["n"], "weight": acc["task_weights"][i] / acc["n"],
                       **finals[t.name]}
    return out


def train(config, *, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) the run described by ``config``; returns the final summary dict."""
    exp = Experiment(config)
    workdir = os.path.abspath(config.workdir)
    baselines = bl.resolve(config, log=log, train_fn=train)
    _check_workdir_config(config, workdir)
    c = config.train
    with jax.set_mesh(exp.mesh):
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=c.keep_checkpoints)
        state, state_shardings, abstract = create_state(
            exp.model, exp.tx, exp.dataset.input_shape, config.seed, exp.mesh, exp.rules, exp.mtl_init)
        train_ds = data_base.train_dataset(
            exp.dataset.splits["train"], exp.tasks, config.data.batch_size, config.seed,
            indices=exp.dataset.info.get("train_indices"),
            process_index=jax.process_index(), process_count=jax.process_count())
        it = data_base.train_iterator(train_ds, prefetch=config.data.prefetch)
        start = ckpt.latest_step()
        if start is not None:
            state = ckpt.restore(start, abstract, it)
            log(f"resumed from step {start} in {ckpt.directory}")
        start = int(start or 0)
        writer = MetricWriter(workdir)
        if start:
            _prune_metrics(writer.path, start)
        train_step = st.jit_train_step(_make_step(exp, state_shardings), exp.mesh, state_shardings,
                                       exp.batch_sharding)
        eval_step = st.jit_eval_step(st.make_eval_step(exp.model, exp.tasks), exp.mesh,
                                     state_shardings.params, exp.batch_sharding)
        results = _run(exp, state, it, train_step, eval_step, ckpt, writer, baselines, start, log)
        ckpt.wait()
        ckpt.close()
        writer.close()
    return _finish(exp, workdir, results, baselines, log)


def _run(exp, state, it, train_step, eval_step, ckpt, writer, baselines, start, log):
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
        state, metrics = train_step(state, _to_global(next(it), exp.batch_sharding))
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
            t0 = time.perf_counter()  # steps/s counts training only
        if step % c.checkpoint_every == 0 or step == c.steps:
            ckpt.save(step, state, it, force=True)
            t0 = time.perf_counter()
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


def _finish(exp, workdir, results, baselines, log):
    summary = {"steps": exp.config.train.steps, "metrics": results}
    if baselines:
        summary["baselines"] = baselines
        summary["delta_m"] = mt.delta_m(exp.tasks, results, baselines)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
            json.dump(summary, f, indent=1)
    log(mt.format_table(exp.tasks, results, baselines))
    return summary


def restore_params(exp: Experiment):
    """``(step, params)`` of the newest checkpoint in ``exp.config.workdir``, placed on ``exp.mesh``.

    Call inside ``jax.set_mesh(exp.mesh)``. Raises ConfigError when the run directory holds no checkpoint.
    """
    config = exp.config
    directory = os.path.join(os.path.abspath(config.workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise ConfigError(f"config.workdir={config.workdir!r} holds no checkpoints")
    ckpt = Checkpointer(directory, keep=config.train.keep_checkpoints)
    step = ckpt.latest_step()
    if step is None:
        ckpt.close()
        raise ConfigError(f"config.workdir={config.workdir!r} holds no checkpoints")
    from mtljax.train.state import abstract_state

    abstract, shardings = abstract_state(exp.model, exp.tx, exp.dataset.input_shape, exp.mesh, exp.rules,
                                         exp.mtl_init)
    state = ckpt.restore(step, abstract)
    ckpt.close()
    return step, state.params, shardings.params


def evaluate_workdir(config, *, log: Callable[[str], None] = print) -> dict:
    """Evaluate the newest checkpoint in ``config.workdir`` on the test split."""
    exp = Experiment(config)
    with jax.set_mesh(exp.mesh):
        step, params, param_shardings = restore_params(exp)
        eval_step = st.jit_eval_step(st.make_eval_step(exp.model, exp.tasks), exp.mesh,
                                     param_shardings, exp.batch_sharding)
        results = evaluate(exp, eval_step, params)
    baselines = bl._load(config.baselines.file) if config.baselines.file else None
    log(f"step {step}")
    log(mt.format_table(exp.tasks, results, baselines))
    return results
