"""Few-shot adaptation of the pretrained factors ViT: FM3-style hypernetwork adaptation (0 and k steps)
against a per-task LoRA trained from scratch on the support set.

Protocol (fixed): the backbone pretrained by ``configs/pretrain.py`` (its run directory,
``--pretrain-dir``), frozen. Source tasks ``count``, ``texture``, ``orientation``, ``pos_x`` of the
factors dataset meta-train the HyperFormer++ hypernetwork and the support-set encoder
(:mod:`mtljax.models.peft.fewshot`: episodes of ``--meta-support`` support + the rest of a batch of
``--meta-batch`` as query, closed-form heads). Few-shot target tasks, never seen in meta-training:
``background`` (5-way classification) and ``pos_y`` (regression), with support sets of ``K = 32`` and
``K = 128`` training images (drawn per seed), tested on ``--num-test`` images of the test split.

Methods (``METHODS``):

* ``fm3_0``: adapters generated from the support set and a closed-form head (prototypes / ridge): no
  gradient step;
* ``fm3_k``: then ``--steps`` Adam steps (lr 1e-2) of the task embedding and the head on the support set;
* ``lora``: ``configs/adapt_lora.py``'s per-task LoRA (rank 4, alpha 8, query and value) and a new linear
  head, trained from scratch on the support set for ``--steps`` AdamW steps (``:probe``'s learning rate
  3e-3 and weight decay), full batch.

A seed changes the support sets, the meta-training's initialisation and order, and LoRA's initialisation.

    python benchmarks/fewshot.py run --pretrain-dir runs/pretrain --out DIR [--seeds 3] [--steps 100]
    python benchmarks/fewshot.py report DIR

Results are appended to ``DIR/results.jsonl`` (one line per method, task, K and seed: accuracy or MSE
on the test split, wall time); ``report`` prints a markdown table, mean ± 95 % CI over seeds (Student t).

Wall time (2-core CPU shared with other jobs, load ≈ 6, 2026-11-28): a meta-training step (batch 128,
4 source tasks: 512 adapted ViT passes) takes 3–4 s, so the default 1,000 steps take ≈ 1 h per seed;
each (method, task, K) cell then takes 20–45 s at ``--steps 20`` (compilation included), ≈ 1–2 min at
100. The full default run (3 seeds) is ≈ 4 h there; a GPU runs it in minutes.

Quick check only (NOT a result: 1 seed, 101 meta-steps, ``--steps 20``, a 700-step backbone whose mean-
pooled features carry little background / vertical-position information: prototypes on the *base*
features reach 0.21 accuracy and ridge 0.34 MSE even with K = 1,000): fm3_0 background 0.213 / 0.245
(K = 32 / 128), pos_y MSE 0.344 / 0.337; fm3_k 0.212 / 0.205, 0.355 / 0.344; lora 0.248 / 0.281, 0.560 /
0.428. Chance: 0.200 accuracy, MSE 0.333.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtljax.config import base_config  # noqa: E402
from mtljax.data import factors  # noqa: E402
from mtljax.models import build_model  # noqa: E402
from mtljax.models.peft import adapter_width  # noqa: E402
from mtljax.models.peft import fewshot as fs  # noqa: E402
from mtljax.models.vit import ViT  # noqa: E402
from mtljax.optim.trainable import path_string  # noqa: E402
from mtljax.stats import mean_ci  # noqa: E402
from mtljax.tasks import Task  # noqa: E402
from mtljax.trainer.warm_start import checkpoint_dir, restore_arrays  # noqa: E402

SOURCE = ("count", "texture", "orientation", "pos_x")
TARGET = ("background", "pos_y")
SHOTS = (32, 128)
VIT = dict(patch_size=4, width=64, depth=4, num_heads=4, mlp_dim=128, pool="gap")  # configs/pretrain.py
IMAGE = 32


def spec(name: str) -> fs.TaskSpec:
    c = factors.num_classes(name)
    return fs.TaskSpec(name, "classification" if c else "regression", c)


def metric(task: fs.TaskSpec, outputs: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> tuple[str, float]:
    if task.kind == "classification":
        return "accuracy", float(np.sum((outputs.argmax(-1) == labels) * mask) / mask.sum())
    return "mse", float(np.sum((outputs[:, 0] - labels) ** 2 * mask) / mask.sum())


# --------------------------------------------------------------------------------------------- set-up
class Setup:
    """The pretrained ViT's parameters and the data, shared by every method and seed."""

    def __init__(self, args):
        self.args = args
        self.vit = ViT(**VIT)
        shapes = jax.eval_shape(lambda: self.vit.init(jax.random.PRNGKey(0), jnp.zeros((1, IMAGE, IMAGE, 3))))
        flat = {"backbone/" + path_string(p): x for p, x in jax.tree_util.tree_flatten_with_path(
            jax.tree.map(lambda b: getattr(b, "value", b), shapes["params"],
                         is_leaf=lambda b: hasattr(b, "value")))[0]}
        state_dir, _ = checkpoint_dir(args.pretrain_dir, 0)
        arrays = restore_arrays(state_dir, flat)
        tree = {}
        for path, value in arrays.items():
            node = tree
            *parents, leaf = path.split("/")[1:]
            for k in parents:
                node = node.setdefault(k, {})
            node[leaf] = jnp.asarray(value)
        self.vit_params = tree
        t0 = time.time()
        self.train = factors.generate(args.num_train, IMAGE, seed=0, stream=0)
        self.test = factors.generate(args.num_test, IMAGE, seed=0, stream=1)
        print(f"data: {args.num_train} train, {args.num_test} test images in {time.time() - t0:.1f} s", flush=True)

    def labels(self, split, name):
        images, targets, masks = split
        return targets[name], masks.get(name, np.ones(len(images), np.float32))


def _batched(fn, images, size=500):
    return np.concatenate([np.asarray(fn(images[i:i + size])) for i in range(0, len(images), size)])


# ---------------------------------------------------------------------------------------------- FM3
@functools.lru_cache(maxsize=None)
def _fm3(reduction: int) -> fs.FM3:
    return fs.FM3(ViT(**VIT), adapter_dim=adapter_width(VIT["width"], reduction))


def meta_trained(setup: Setup, seed: int) -> dict:
    """The hypernetwork and encoder meta-trained on the source tasks (cached per seed in the run)."""
    cache = setup.__dict__.setdefault("_meta", {})
    if seed in cache:
        return cache[seed]
    a, fm3 = setup.args, _fm3(setup.args.reduction)
    images, targets, masks = setup.train
    params = fm3.init(jax.random.PRNGKey(seed), jnp.asarray(images[:1]), setup.vit_params)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))

    def batches():
        while True:
            idx = rng.choice(len(images), a.meta_batch, replace=False)
            yield (jnp.asarray(images[idx]), {t: jnp.asarray(targets[t][idx]) for t in SOURCE},
                   {t: jnp.asarray(masks.get(t, np.ones(len(images), np.float32))[idx]) for t in SOURCE})

    t0 = time.time()
    params = fs.meta_train(fm3, params, batches(), [spec(t) for t in SOURCE], a.meta_support, a.meta_steps,
                           learning_rate=a.meta_lr,
                           log=lambda s: print(f"  seed {seed} {s} ({time.time() - t0:.1f} s)", flush=True))
    print(f"  meta-training: {a.meta_steps} steps in {time.time() - t0:.1f} s", flush=True)
    cache[seed] = params
    return params


@functools.lru_cache(maxsize=None)
def _adapt_fn(fm3, task, steps):
    return jax.jit(lambda p, x, y: fs.adapt(fm3, p, x, y, task, steps=steps))


@functools.lru_cache(maxsize=None)
def _predict_fn(fm3):
    return jax.jit(lambda p, ad, x: fs.predict(fm3, p, ad, x))


def run_fm3(setup: Setup, task: fs.TaskSpec, support: np.ndarray, seed: int, steps: int) -> np.ndarray:
    fm3 = _fm3(setup.args.reduction)
    params = meta_trained(setup, seed)
    images = setup.train[0]
    y, _ = setup.labels(setup.train, task.name)
    adapted = _adapt_fn(fm3, task, steps)(params, jnp.asarray(images[support]), jnp.asarray(y[support]))
    return _batched(lambda x: _predict_fn(fm3)(params, adapted, x), setup.test[0])


def fm3_0(setup, task, support, seed):
    return run_fm3(setup, task, support, seed, 0)


def fm3_k(setup, task, support, seed):
    return run_fm3(setup, task, support, seed, setup.args.steps)


# --------------------------------------------------------------------------------------------- LoRA
def _deep_merge(into: dict, values: dict) -> dict:
    """``into`` with every leaf of ``values`` put at its path (nested dicts merged, not replaced)."""
    out = dict(into)
    for k, v in values.items():
        out[k] = _deep_merge(into.get(k, {}), v) if isinstance(v, dict) else v
    return out


def lora(setup: Setup, task: fs.TaskSpec, support: np.ndarray, seed: int) -> np.ndarray:
    """``configs/adapt_lora.py``'s LoRA and a new head for this one task, trained on the support set."""
    cfg = base_config().model
    cfg.vit.update(**VIT)
    cfg.peft.method = "lora"  # rank 4, alpha 8, query + value: the defaults adapt_lora.py keeps
    kind = "multiclass" if task.kind == "classification" else "regression"
    model = build_model(cfg, (Task(task.name, kind, num_classes=task.num_classes or None),), (IMAGE, IMAGE, 3))
    images = setup.train[0]
    y, m = setup.labels(setup.train, task.name)
    x, y, m = jnp.asarray(images[support]), jnp.asarray(y[support]), jnp.asarray(m[support])
    params = jax.tree.map(lambda b: getattr(b, "value", b), model.init(jax.random.PRNGKey(seed), x[:1])["params"],
                          is_leaf=lambda b: hasattr(b, "value"))
    params["backbone"] = _deep_merge(params["backbone"], setup.vit_params)  # the pretrained ViT; LoRA's paths are new
    trainable = jax.tree_util.tree_map_with_path(
        lambda p, _: "lora" in path_string(p) or path_string(p).startswith("heads_"), params)
    tx = optax.multi_transform({True: optax.adamw(3e-3, weight_decay=1e-4), False: optax.set_to_zero()},
                               trainable)

    def loss(p):
        return fs.task_loss(model.apply({"params": p}, x)[0][task.name], y, task, m)

    @jax.jit
    def train(p):
        def step(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None
        return jax.lax.scan(step, (p, tx.init(p)), None, length=setup.args.steps)[0][0]

    params = train(params)
    predict = jax.jit(lambda p, x: model.apply({"params": p}, x)[0][task.name])
    return _batched(lambda x: predict(params, x), setup.test[0])


# name -> function(setup, task, support indices, seed) -> test outputs [N_test, O]
METHODS = {
    "fm3_0": fm3_0,
    "fm3_k": fm3_k,
    "lora": lora,
    # HOOK (MHR-z): Polytropon / MHR with only the routing z trained on the support set, from the
    # multi-task skill inventory of another branch — add here as "mhr_z": mhr_z (same signature).
}


# ---------------------------------------------------------------------------------------------- main
def run(args):
    os.makedirs(args.out, exist_ok=True)
    setup = Setup(args)
    path = os.path.join(args.out, "results.jsonl")
    methods = args.methods.split(",") if args.methods else list(METHODS)
    for seed in range(args.seeds):
        for name in TARGET:
            task = spec(name)
            for k in args.shots:
                rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(11, TARGET.index(name), k)))
                support = rng.choice(args.num_train, k, replace=False)
                labels, mask = setup.labels(setup.test, name)
                for method in methods:
                    t0 = time.time()
                    outputs = METHODS[method](setup, task, support, seed)
                    which, value = metric(task, outputs, labels, mask)
                    rec = dict(method=method, task=name, shots=k, seed=seed, metric=which, value=value,
                               steps=0 if method == "fm3_0" else args.steps, meta_steps=args.meta_steps,
                               wall_s=round(time.time() - t0, 2), backend=jax.default_backend())
                    with open(path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    print(json.dumps(rec), flush=True)


def report(directory: str) -> str:
    recs = [json.loads(line) for line in open(os.path.join(directory, "results.jsonl")) if line.strip()]
    cols = sorted({(r["task"], r["shots"], r["metric"]) for r in recs}, key=lambda c: (TARGET.index(c[0]), c[1]))
    methods = [m for m in METHODS if any(r["method"] == m for r in recs)]
    lines = ["| method | " + " | ".join(f"{t} K={k} {'acc ↑' if m == 'accuracy' else 'MSE ↓'}" for t, k, m in cols)
             + " |", "|---" * (len(cols) + 1) + "|"]
    for method in methods:
        cells = []
        for t, k, _ in cols:
            vals = [r["value"] for r in recs if r["method"] == method and r["task"] == t and r["shots"] == k]
            if not vals:
                cells.append("–")
                continue
            s = mean_ci(vals)
            cells.append(f"{s.mean:.3f}" + (f" ± {s.mean - s.ci_low:.3f}" if s.ci_low is not None else "") + f" (n={s.n})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--pretrain-dir", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--seeds", type=int, default=3)
    r.add_argument("--steps", type=int, default=100, help="fm3_k and lora: gradient steps on the support set")
    r.add_argument("--meta-steps", type=int, default=1000)
    r.add_argument("--meta-batch", type=int, default=128)
    r.add_argument("--meta-support", type=int, default=32)
    r.add_argument("--meta-lr", type=float, default=1e-3)
    r.add_argument("--reduction", type=int, default=32, help="adapter reduction factor (HyperFormer++: 32)")
    r.add_argument("--shots", type=lambda s: tuple(int(x) for x in s.split(",")), default=SHOTS)
    r.add_argument("--num-train", type=int, default=10_000)
    r.add_argument("--num-test", type=int, default=2_000)
    r.add_argument("--methods", default="", help="comma-separated subset of " + ",".join(METHODS))
    rep = sub.add_parser("report")
    rep.add_argument("out")
    args = p.parse_args(argv)
    if args.cmd == "report":
        print(report(args.out))
    else:
        run(args)


if __name__ == "__main__":
    main()
