"""Routing insight: which experts each task uses, per MoE layer, from a run's newest checkpoint.

``mtljax routing --config=... --workdir=RUN [--outdir=DIR]`` runs the test split (up to
``--max_examples`` examples) through the trained model and, for every MoE layer (MoE MLPs, Mod-Squad's
MoE attention, TaskExpert's memorial MoE), collects the ``usage`` the layer sows:

* task-gated models (M³ViT, Mod-Squad): each task gets its own pass (``task=``), and a row of the
  heatmap is the share of that task's expert choices that went to each expert;
* a shared gate (``hps`` with ``backbone='moe_vit'``): routing does not know the task, so there is one
  row, the share of all choices;
* TaskExpert: the mean gate weight of each task on each expert and on its memory (last column).

It writes one heatmap per layer (``<outdir>/<layer>.png``, tasks × experts) and every matrix in
``<outdir>/routing.json``; ``outdir`` defaults to ``<workdir>/routing``.

Polytropon / MHR runs (``config.model.peft.method`` with ``poly``) are read from the parameters, no data:
every adapted projection's routing ``ŵ = σ(Z)`` normalised over skills
(:func:`mtljax.models.peft.routing_matrices`), a heatmap per projection (tasks × skills, averaged over
the MHR heads) and the full ``[T, heads, skills]`` matrices in ``routing.json``
(:func:`poly_routing_report`).
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mtljax.config import ConfigError
from mtljax.models.peft import methods_of, routing_matrices


def _collect(tree, path=()) -> dict:
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == "usage":
                out["/".join(path[1:] if path and path[0] == "backbone" else path)] = np.asarray(sum(v))
            else:
                out.update(_collect(v, path + (k,)))
    return out


def usage_matrices(model, params, inputs, batch_size: int = 256) -> tuple[list[str], dict[str, np.ndarray]]:
    """``(row labels, {layer: matrix [rows, experts]})`` of routing usage on ``inputs``, rows summing to 1."""
    names = [t.name for t in model.tasks]
    task_gated = bool(getattr(model, "task_passes", False))
    passes = names if task_gated else [None]
    i_of = {n: i for i, n in enumerate(names)}
    fns = {t: jax.jit(lambda p, x, t=t: model.apply({"params": p}, x, task=t, mutable=["intermediates"])[1])
           for t in passes}
    totals: dict[str, np.ndarray] = {}
    for start in range(0, len(inputs), batch_size):
        x = jnp.asarray(inputs[start:start + batch_size])
        for i, t in enumerate(passes):
            for layer, counts in _collect(fns[t](params, x)["intermediates"]).items():  # [model tasks, E]
                if task_gated:  # this pass routed task t only: its row
                    totals.setdefault(layer, np.zeros((len(names), counts.shape[-1])))[i] += counts[i_of[t]]
                else:
                    totals[layer] = totals.get(layer, 0) + counts
    per_task_output = bool(getattr(model.backbone, "per_task_output", False))
    labels = names if (task_gated or per_task_output) else ["all tasks"]
    out = {}
    for layer, m in totals.items():
        if not (task_gated or per_task_output):
            m = m.sum(0, keepdims=True)  # a shared gate does not know the task: one row
        out[layer] = m / np.maximum(m.sum(-1, keepdims=True), 1e-12)
    return labels, out


def plot_heatmap(matrix: np.ndarray, labels: list[str], title: str, path: str, memory_column: bool = False,
                 xlabel: str = "expert") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * cols, 1.0 + 0.4 * rows))
    im = ax.imshow(matrix, cmap="viridis", vmin=0, aspect="auto")
    ax.set_yticks(range(rows), labels)
    ticks = [str(e) for e in range(cols - 1)] + (["mem"] if memory_column else [str(cols - 1)])
    ax.set_xticks(range(cols), ticks)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    if rows * cols <= 160:
        for r in range(rows):
            for c in range(cols):
                ax.text(c, r, f"{matrix[r, c]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if matrix[r, c] < 0.6 * matrix.max() else "black")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def poly_routing_report(params, task_names, outdir: str, *, step: int = 0,
                        log: Callable[[str], None] = print) -> dict:
    """Polytropon / MHR routing of the parameters ``params`` (unboxed): a heatmap per adapted projection
    (``<outdir>/<layer>.png``, tasks × skills, the mean over heads) and ``<outdir>/routing.json``
    (``{"step", "rows", "layers": {layer: ŵ [T, heads, skills]}}``)."""
    matrices = routing_matrices(params)
    if not matrices:
        raise ConfigError("the parameters hold no Polytropon / MHR routing (poly_routing)", "model.peft.method")
    os.makedirs(outdir, exist_ok=True)
    labels = list(task_names)
    for layer, w in matrices.items():
        path = os.path.join(outdir, layer.replace("/", "_") + ".png")
        heads = f", mean of {w.shape[1]} heads" if w.shape[1] > 1 else ""
        plot_heatmap(w.mean(1), labels, f"{layer}\nrouting σ(Z) normalised, step {step}{heads}", path,
                     xlabel="skill")
        log(f"{layer}: {path}")
    with open(os.path.join(outdir, "routing.json"), "w") as f:
        json.dump({"step": step, "rows": labels, "layers": {k: v.tolist() for k, v in matrices.items()}}, f, indent=1)
    return {"step": step, "rows": labels, "layers": matrices}


def routing_report(config, outdir: str | None = None, *, max_examples: int = 512,
                   log: Callable[[str], None] = print) -> dict:
    """Heatmaps and ``routing.json`` of the newest checkpoint of ``config.workdir``."""
    from mtljax.models import MOE_MODELS
    from mtljax.trainer.experiment import Experiment
    from mtljax.trainer.loop import restore_params

    m = config.model
    if "peft" in m and "poly" in methods_of(m.peft.method):  # routing lies in the parameters: no data
        exp = Experiment(config)
        with jax.set_mesh(exp.mesh):
            step, params, _ = restore_params(exp)
            params = jax.device_get(params)
        return poly_routing_report(params, [t.name for t in exp.tasks], outdir or
                                   os.path.join(config.workdir, "routing"), step=step, log=log)
    if not (m.name in MOE_MODELS or m.name == "task_expert" or m.backbone == "moe_vit"):
        raise ConfigError(f"config.model.name={m.name!r} (backbone {m.backbone!r}) has no mixture-of-experts "
                          "layers to report on")
    if max_examples < 1:
        raise ConfigError(f"--max_examples must be >= 1, got {max_examples}")
    exp = Experiment(config)
    source = exp.dataset.splits["test"]
    inputs = source.get_batch(np.arange(min(len(source), max_examples)))["inputs"]
    with jax.set_mesh(exp.mesh):
        step, params, _ = restore_params(exp)
        params = jax.device_get(params)
    labels, matrices = usage_matrices(exp.model, params, inputs)
    outdir = outdir or os.path.join(config.workdir, "routing")
    os.makedirs(outdir, exist_ok=True)
    memory = m.name == "task_expert"
    for layer, matrix in matrices.items():
        path = os.path.join(outdir, layer.replace("/", "_") + ".png")
        plot_heatmap(matrix, labels, f"{m.name} {layer}: expert usage per task (step {step})", path, memory)
        log(f"{layer}: {path}")
    with open(os.path.join(outdir, "routing.json"), "w") as f:
        json.dump({"step": step, "rows": labels, "layers": {k: v.tolist() for k, v in matrices.items()}}, f, indent=1)
    return {"step": step, "rows": labels, "layers": matrices}


def routing_command(config, args) -> int:
    """``mtljax routing`` (``args``: the parsed flags)."""
    routing_report(config, args.outdir, max_examples=args.max_examples)
    return 0
