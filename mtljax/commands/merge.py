"""``mtljax merge``: one model for all tasks from task experts fine-tuned from one pretrained run.

    mtljax merge --pretrained=runs/pretrain --experts=runs/merge/expert_shape,runs/merge/expert_count,... \\
        --method=ties --config.merge.density=0.2 --workdir=runs/merged [--multitask=runs/merge/multitask]
    mtljax eval --workdir=runs/merged                       # the merged checkpoint, as any run's
    mtljax merge --pretrained=... --experts=... --sweep --workdir=runs/merge_sweep   # every method

The merge domain is every parameter the pretrained model and the experts share (the backbone); each
task keeps its own expert's head. LoRA experts are folded into dense ``ΔW = (α/r)·A·B`` first
(:mod:`mtljax.merge.lora`). Methods (``--method``, hyperparameters in ``config.merge``):

=====================  ===========================================================  ====================
method                 what                                                          config.merge keys
=====================  ===========================================================  ====================
``weight_average``     mean of the experts                                           —
``task_arithmetic``    ``θ_0 + λ Σ τ_t``                                             scale
``ties``               trim, elect sign, disjoint mean, then ``θ_0 + λ τ``            density, scale
``dare``               drop-and-rescale each ``τ_t``, then TA or TIES                drop, dare_base, scale
``adamerging_task``    one λ per task, learned by test-entropy minimisation          init, steps,
``adamerging_layer``   one λ per task per tensor, same                               learning_rate, batch_size
``atlas``              one coefficient per task per tensor, few labelled examples    shots, steps, learning_rate
``self_positioning``   one α per task, SGD on a small balanced labelled probe set    shots, steps, scale
``logit_fusion``       per example, experts' logit shifts fused under a KL budget    —
``phatgoose``          LoRA experts, gates trained post hoc, top-k routing per token steps, top_k, batch_size
=====================  ===========================================================  ====================

``logit_fusion`` and ``phatgoose`` are inference-time methods (:mod:`mtljax.commands.merge_routing`):
the first writes no checkpoint (there are no merged weights), the second writes the routed LoRA model.
``--sweep`` runs ``phatgoose`` only when the experts are LoRA experts.

It prints a table with every task's metric for: each expert on its own task (``individual``), the
pretrained backbone with the experts' heads, the multi-task run (``--multitask``), and the merged
model; and writes to ``--workdir``: a checkpoint ``mtljax eval`` reads (``config.json`` of the merged
model: the experts' tasks, a mixture when their datasets differ), ``merge.json`` (arguments, learned
coefficients, the table). ``--sweep`` runs every method (``--method=a,b,c`` the ones named), writes
``sweep.json`` and the bar chart ``sweep.png``, and no checkpoint.

Every argument mistake is one line before anything is read or written: an unknown method, a
``config.merge`` value out of range (density outside (0, 1], drop outside [0, 1)), a run that is not a
run, an expert fine-tuned from another start, two experts of one task, a parameter tree that differs
from the pretrained one (the first differing path is named).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mtljax.config import ConfigError
from mtljax.commands.merge_runs import Run, check_experts, merged_config, read_run
from mtljax.commands.merge_table import format_rows, mean_accuracy, plot_rows
from mtljax.merge import vectors as vec
from mtljax.merge.adamerging import adamerging
from mtljax.merge.atlas import atlas
from mtljax.merge.self_positioning import self_positioning
from mtljax.merge.vectors import MergeError

STATIC = ("weight_average", "task_arithmetic", "ties", "dare")
LEARNED = ("adamerging_task", "adamerging_layer", "atlas", "self_positioning")
ROUTED = ("logit_fusion", "phatgoose")
METHODS = STATIC + LEARNED + ROUTED


def check_merge_config(m) -> None:
    """One-line errors for ``config.merge`` values the chosen methods read (before anything is loaded)."""
    def bad(key, msg):
        raise ConfigError(msg, f"merge.{key}")

    for key in ("scale", "init"):
        if not math.isfinite(float(m[key])):
            bad(key, f"must be finite, got {m[key]!r}")
    if not 0.0 < float(m.density) <= 1.0:
        bad("density", f"must be in (0, 1], got {m.density!r}")
    if not 0.0 <= float(m.drop) < 1.0:
        bad("drop", f"must be in [0, 1), got {m.drop!r}")
    if m.dare_base not in ("task_arithmetic", "ties"):
        bad("dare_base", f"must be 'task_arithmetic' or 'ties', got {m.dare_base!r}")
    for key in ("steps", "batch_size", "shots", "top_k"):
        if not isinstance(m[key], int) or m[key] < 1:
            bad(key, f"must be an integer >= 1, got {m[key]!r}")
    if not float(m.learning_rate) > 0:
        bad("learning_rate", f"must be > 0, got {m.learning_rate!r}")


def parse_methods(method: str | None, sweep: bool) -> list[str]:
    """The methods of ``--method`` (one, or several comma-separated) or of ``--sweep`` (all)."""
    if sweep:
        return list(METHODS)
    names = [m.strip() for m in (method or "").split(",") if m.strip()]
    if not names:
        raise MergeError(f"--method: give one of {', '.join(METHODS)} (or several, comma-separated, or --sweep)")
    for name in names:
        if name not in METHODS:
            import difflib

            close = difflib.get_close_matches(name, METHODS, n=1)
            raise MergeError(f"--method: unknown method {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                             + f"; choose from {', '.join(METHODS)}")
    return names


# ---- parameters --------------------------------------------------------------------------------------
def _is_head(path: str) -> bool:
    return path.split("/", 1)[0].startswith("heads_")


def _expert_params(run: Run, domain_targets: dict, what: str) -> tuple[dict, dict]:
    """``(domain, heads)`` flat dicts of an expert; LoRA factors folded into the kernels."""
    from mtljax.models.peft.lora import merge as fold_lora

    shapes = warm_start_shapes(run.state_dir)
    has_lora = any("lora_" in p for p in shapes)
    targets = {}
    for p, (shape, dtype) in shapes.items():
        if p in domain_targets and tuple(shape) == tuple(domain_targets[p].shape):
            targets[p] = domain_targets[p]
        else:
            targets[p] = jax.ShapeDtypeStruct(shape, dtype)
    from mtljax.trainer.warm_start import restore_arrays

    flat = restore_arrays(run.state_dir, targets)
    if has_lora:
        tree = fold_lora(vec.unflatten(flat), 0, float(run.config["model"]["peft"]["alpha"]))
        flat = vec.flatten(tree)
    heads = {p: v for p, v in flat.items() if _is_head(p)}
    domain = {p: v for p, v in flat.items() if not _is_head(p)}
    return domain, heads


def _check_tree(pre_domain: dict, shapes: dict, what: str) -> None:
    """The expert's parameters outside its heads and LoRA factors must be the pretrained ones' paths and
    shapes (checkpoint metadata only); names the first that differs."""
    domain = {p: v for p, v in shapes.items() if not _is_head(p) and "lora_" not in p}
    for p in sorted(set(pre_domain) | set(domain)):
        if p not in domain:
            raise MergeError(f"{what}: lacks the pretrained parameter {p!r}")
        if p not in pre_domain:
            from mtljax.models.peft import SCOPES

            if any(scope in p for scope in SCOPES):
                raise MergeError(f"{what}: has per-task modules other than LoRA ({p!r}); only fully fine-tuned "
                                 "and LoRA experts merge into one model")
            raise MergeError(f"{what}: has {p!r}, which the pretrained model lacks")
        if tuple(domain[p][0]) != tuple(pre_domain[p][0]):
            raise MergeError(f"{what}: {p!r} has shape {tuple(domain[p][0])}, the pretrained one "
                             f"{tuple(pre_domain[p][0])}")


def warm_start_shapes(state_dir: str) -> dict:
    from mtljax.trainer.warm_start import source_shapes

    try:
        return source_shapes(state_dir)
    except ConfigError as e:
        raise MergeError(e.message) from None


class Setup:
    """Everything a merge needs, loaded once: the merged model's experiment, ``θ_0``, the task vectors
    stacked ``[T, ...]``, the experts' heads, and jitted evaluation."""

    def __init__(self, config, pretrained: str, experts: list[str], multitask: str | None, log):
        from mtljax.trainer.experiment import Experiment

        self.pre = read_run(pretrained, "--pretrained")
        self.experts = [read_run(p, f"--experts[{i}]") for i, p in enumerate(experts)]
        check_experts(self.pre, self.experts)
        self.multitask = read_run(multitask, "--multitask") if multitask else None
        pre_shapes = warm_start_shapes(self.pre.state_dir)
        pre_domain = {p: v for p, v in pre_shapes.items() if not _is_head(p)}
        for i, run in enumerate(self.experts):
            _check_tree(pre_domain, warm_start_shapes(run.state_dir), f"--experts[{i}] ({run.path})")
        self.config = merged_config(self.experts, config.workdir, int(config.seed), config.mesh)
        self.exp = Experiment(self.config)
        self.tasks = [t.name for t in self.exp.tasks]
        self.classification = [t.name for t in self.exp.tasks if "accuracy" in t.directions()]
        with jax.set_mesh(self.exp.mesh):
            _, shardings = self.exp.abstract_state()
        self.param_shardings = shardings.params
        shapes = vec.flatten(self.exp.param_shapes)
        sh = vec.flatten(self.param_shardings)  # shardings are leaves
        targets = {p: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh[p]) for p, s in shapes.items()}
        self.domain_targets = {p: t for p, t in targets.items() if not _is_head(p)}
        for p, t in self.domain_targets.items():
            if p not in pre_shapes:
                raise MergeError(f"--pretrained: {self.pre.path!r} lacks {p!r}, which the experts' model has")
            if tuple(pre_shapes[p][0]) != tuple(t.shape):
                raise MergeError(f"--pretrained: {p!r} has shape {tuple(pre_shapes[p][0])}, the experts' {tuple(t.shape)}")
        from mtljax.trainer.warm_start import restore_arrays

        log(f"merging {len(self.experts)} experts ({', '.join(self.tasks)}) from {self.pre.state_dir}")
        self.theta0 = vec.unflatten(restore_arrays(self.pre.state_dir, self.domain_targets))
        finetuned, heads = [], {}
        for i, run in enumerate(self.experts):
            domain, h = _expert_params(run, self.domain_targets, f"--experts[{i}]")
            vec.check_compatible(self.theta0, vec.unflatten(domain), f"--experts[{i}] ({run.path})")
            finetuned.append(vec.unflatten(domain))
            heads.update(h)
        missing = [p for p, t in targets.items() if _is_head(p) and p not in heads]
        if missing:
            raise MergeError(f"--experts: no expert has the head {missing[0]!r}")
        self.heads = vec.unflatten({p: heads[p] for p in targets if _is_head(p)})
        self.finetuned = finetuned
        self.stacked = jax.jit(lambda *f: vec.stack(vec.task_vectors(self.theta0, f)))(*finetuned)
        with jax.set_mesh(self.exp.mesh):
            self._eval_step = self.exp.jit_eval_step(self.param_shardings)
        # which expert owns which task (index into self.experts)
        self.owner = {t: i for i, e in enumerate(self.experts) for t in e.tasks}

    def full(self, domain) -> dict:
        return {**domain, **self.heads}

    def evaluate(self, domain) -> dict:
        """Per-task test metrics of the merged backbone ``domain`` with the experts' heads."""
        return self.evaluate_params(self.full(domain))

    def evaluate_params(self, params) -> dict:
        """Per-task test metrics of a whole parameter tree of the merged model."""
        from mtljax.trainer.loop import evaluate

        with jax.set_mesh(self.exp.mesh):
            return evaluate(self.exp, self._eval_step, jax.device_put(params, self.param_shardings))

    def multitask_params(self):
        from mtljax.trainer.warm_start import restore_arrays

        run = self.multitask
        shapes = warm_start_shapes(run.state_dir)
        targets = {**self.domain_targets}
        for p, s in vec.flatten(self.exp.param_shapes).items():
            if _is_head(p):
                if p not in shapes:
                    raise MergeError(f"--multitask: {run.path!r} lacks {p!r}: it must have every expert's task")
                targets[p] = jax.ShapeDtypeStruct(s.shape, s.dtype)
        return vec.unflatten(restore_arrays(run.state_dir, targets))

    # ---- batches for the learned coefficients -----------------------------------------------------------
    def _source(self, split):
        return self.exp.dataset.splits[split]

    def unlabelled_batches(self, batch_size: int, seed: int, split: str = "test"):
        """Random batches of ``split`` (``batch_size`` per dataset); AdaMerging reads only the inputs and
        which task each example belongs to (the masks), never the labels."""
        source = self._source(split)
        rng = np.random.default_rng(seed)
        n = batch_size * max(1, len(self.exp.config.data.get("components", []) or [1]))
        while True:
            b = source.get_batch(np.sort(rng.choice(len(source), size=min(n, len(source)), replace=False)))
            yield {"inputs": b["inputs"], "masks": b["masks"], "targets": b["targets"]}

    def probe_batches(self, shots: int, seed: int):
        """A small labelled probe set from the training split, repeated as one full batch: for every
        classification task ``ceil(shots / C)`` examples of each of its ``C`` classes (class-balanced), for
        every other task ``shots`` examples labelled for it — drawn from 4,096 random training examples."""
        source = self._source("train")
        rng = np.random.default_rng(seed)
        pool = np.sort(rng.choice(len(source), size=min(len(source), 4096), replace=False))
        probe = source.get_batch(pool)
        chosen: set[int] = set()
        for task in self.exp.tasks:
            labelled = np.asarray(probe["masks"][task.name]).reshape(len(pool), -1).max(axis=1) > 0
            if task.num_classes and task.kind == "multiclass":
                labels = np.asarray(probe["targets"][task.name]).reshape(len(pool))
                per_class = -(-shots // task.num_classes)
                for c in range(task.num_classes):
                    chosen.update(pool[labelled & (labels == c)][:per_class].tolist())
            else:
                chosen.update(pool[labelled][:shots].tolist())
        b = source.get_batch(np.array(sorted(chosen)))
        while True:
            yield b

    def forward_fn(self):
        objective = self.exp.objective

        def forward(domain, batch):
            _, outputs, _ = objective.forward(self.full(domain), batch, train=False)
            return outputs, batch["masks"]

        def loss(domain, batch):
            losses, _, _ = objective.forward(self.full(domain), batch, train=False)
            return jnp.sum(losses)

        return forward, loss


# ---- the methods ---------------------------------------------------------------------------------------
def merge_with(setup: Setup, method: str, m, log) -> tuple[dict, dict]:
    """``(merged domain params, extra info)`` of one method."""
    from mtljax import merge as mg

    theta0, ft = setup.theta0, setup.finetuned
    static = {  # one compiled function each (eager dispatch compiles every small op on its own)
        "weight_average": lambda p, f: mg.weight_average(p, f),
        "task_arithmetic": lambda p, f: mg.task_arithmetic(p, f, scale=float(m.scale)),
        "ties": lambda p, f: mg.ties(p, f, density=float(m.density), scale=float(m.scale)),
        "dare": lambda p, f: mg.dare_merge(p, f, p=float(m.drop), key=jax.random.key(int(m.seed)), base=m.dare_base,
                                           scale=float(m.scale),
                                           **({"density": float(m.density)} if m.dare_base == "ties" else {})),
    }
    if method == "dare":  # eager: compiling its hundreds of independent random masks costs more than running them
        return static[method](theta0, ft), {}
    if method in static:
        return jax.jit(static[method])(theta0, ft), {}
    forward, loss = setup.forward_fn()
    every = max(1, int(m.steps) // 4)
    if method.startswith("adamerging"):
        gran = method.split("_", 1)[1]
        merged, c, losses = adamerging(theta0, setup.stacked, forward,
                                          setup.unlabelled_batches(int(m.batch_size), int(m.seed)),
                                          setup.classification, granularity=gran, init=float(m.init),
                                          steps=int(m.steps), learning_rate=float(m.learning_rate),
                                          log_every=every, log=log)
    elif method == "atlas":
        merged, c, losses = atlas(theta0, setup.stacked, loss, setup.probe_batches(int(m.shots), int(m.seed)),
                                     steps=int(m.steps), learning_rate=10 * float(m.learning_rate),
                                     log_every=every, log=log)
    else:
        merged, c, losses = self_positioning(theta0, setup.stacked, loss,
                                                setup.probe_batches(int(m.shots), int(m.seed)),
                                                init=float(m.scale), steps=int(m.steps),
                                                learning_rate=10 * float(m.learning_rate), log_every=every, log=log)
    names = [t for e in setup.experts for t in e.tasks[:1]]
    if isinstance(c, jax.Array):  # task-wise: [T]
        coeffs = np.asarray(c).round(4).tolist()
    else:  # layer-wise: {parameter path: [T]}
        coeffs = {p: np.asarray(v).round(4).tolist() for p, v in vec.flatten(c).items()}
    return merged, {"coefficients": coeffs,
                    "coefficient_tasks": names, "loss_first": losses[0], "loss_last": losses[-1]}


def _save_checkpoint(exp, params, workdir: str) -> None:
    """``params`` as step 0 of a run of ``exp.config`` in ``workdir`` (what ``mtljax eval`` reads)."""
    from mtljax.trainer.checkpoint import Checkpointer
    from mtljax.trainer.loop import STATE_FORMAT

    with jax.set_mesh(exp.mesh):
        state, shardings = exp.init_state()
        state = state.replace(params=jax.device_put(params, shardings.params))
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=1, async_save=False)
        ckpt.save(0, state, exp.train_iterator(prefetch=0), force=True)
        ckpt.wait()
        ckpt.close()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({**json.loads(exp.config.to_json_best_effort()), "state_format": STATE_FORMAT}, f, indent=1)


def run_merge(config, *, pretrained: str | None, experts: str | list[str] | None, method: str | None = None,
              multitask: str | None = None, sweep: bool = False, log: Callable[[str], None] = print) -> dict:
    """Merge, evaluate, report and write (see the module docstring); returns the report dict."""
    methods = parse_methods(method, sweep)
    sweep = sweep or len(methods) > 1  # several methods: compared, nothing saved
    check_merge_config(config.merge)
    if not pretrained:
        raise MergeError("--pretrained: give the pretrained run directory the experts started from")
    paths = [p for p in (experts.split(",") if isinstance(experts, str) else (experts or [])) if p.strip()]
    if not paths:
        raise MergeError("--experts: give the expert run directories, comma-separated")
    workdir = os.path.abspath(config.workdir)
    done = os.path.join(workdir, "checkpoints")
    if not sweep and os.path.isdir(done) and any(d.isdigit() for d in os.listdir(done)):
        raise MergeError(f"--workdir: {config.workdir!r} already holds checkpoints; merge into a new directory "
                         "(nothing was changed there)")
    setup = Setup(config, pretrained, [p.strip() for p in paths], multitask, log)
    tasks = setup.exp.tasks
    rows: dict[str, dict] = {}
    individual = {}
    for i, run in enumerate(setup.experts):
        res = setup.evaluate(setup.finetuned[i])
        individual.update({t: res[t] for t in run.tasks})
    rows["individual experts"] = individual
    rows["pretrained + heads"] = setup.evaluate(setup.theta0)
    if setup.multitask is not None:
        rows["multi-task"] = setup.evaluate_params(setup.multitask_params())
    from mtljax.commands import merge_routing

    lora = all("lora" in str(e.config["model"].get("peft", {}).get("method", "")) for e in setup.experts)
    if sweep and not lora:
        methods = [n for n in methods if n != "phatgoose"]
    info, seconds, merged, written = {}, {}, None, None
    for name in methods:
        start = time.perf_counter()
        if name == "logit_fusion":
            rows[name], info[name] = merge_routing.logit_fusion(setup, log)
        elif name == "phatgoose":
            exp, params, info[name] = merge_routing.phatgoose(setup, config.merge, log)
            from mtljax.trainer.loop import evaluate

            with jax.set_mesh(exp.mesh):
                _, shardings = exp.abstract_state()
                rows[name] = evaluate(exp, exp.jit_eval_step(shardings.params), params)
            written = (exp, params)
        else:  # timed: the merge (and its coefficient search), not the evaluation
            merged, extra = merge_with(setup, name, config.merge, log)
            merged = jax.block_until_ready(merged)
            seconds[name] = round(time.perf_counter() - start, 2)
            rows[name], info[name] = setup.evaluate(merged), extra
            written = (setup.exp, setup.full(merged))
        seconds.setdefault(name, round(time.perf_counter() - start, 2))  # routed methods: with their evaluation
        log(f"{name}: mean accuracy {mean_accuracy(tasks, rows[name]):.4f} ({seconds[name]:.1f} s)")
    table = format_rows(tasks, rows)
    log(table)
    os.makedirs(workdir, exist_ok=True)
    report = {"pretrained": setup.pre.state_dir, "experts": [e.path for e in setup.experts],
              "tasks": setup.tasks, "methods": methods, "merge": config.merge.to_dict(), "rows": rows,
              "mean_accuracy": {n: mean_accuracy(tasks, r) for n, r in rows.items()},
              "seconds": seconds, "info": info, "multitask": setup.multitask.path if setup.multitask else None}
    if sweep:
        with open(os.path.join(workdir, "sweep.json"), "w") as f:
            json.dump(report, f, indent=1)
        plot_rows(os.path.join(workdir, "sweep.png"), tasks, rows)
        log(f"wrote {os.path.join(config.workdir, 'sweep.json')} and sweep.png")
    else:
        if written is not None:
            _save_checkpoint(*written, workdir)
        with open(os.path.join(workdir, "merge.json"), "w") as f:
            json.dump(report, f, indent=1)
        log(f"wrote the merged model to {config.workdir} (evaluate it: mtljax eval --workdir={config.workdir})"
            if written is not None else f"wrote {os.path.join(config.workdir, 'merge.json')} ({methods[0]} has no "
            "merged weights to save)")
    return report


def merge_command(config, args) -> int:
    """``mtljax merge`` (``args``: the parsed flags); a merge mistake is one line and exit status 2."""
    try:
        run_merge(config, pretrained=args.pretrained, experts=args.experts, method=args.method,
                  multitask=args.multitask, sweep=args.sweep)
    except MergeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


__all__ = ["LEARNED", "METHODS", "STATIC", "check_merge_config", "format_rows", "parse_methods", "run_merge"]
