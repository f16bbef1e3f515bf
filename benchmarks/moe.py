"""MoE benchmarks: the MoE layer against a dense MLP, the dispatch paths, MoE ViT train steps, and the
FLOPs a single-task pathway saves.

1. **Layer** (training: forward + backward of ``sum(y²)``): a dense MLP of hidden width ``k·H`` against
   MoE MLPs with ``E`` experts of width ``H`` and top-``k`` routing — the same *active* FLOPs per token
   (at capacity factor 1; experts choose at capacity factor ``k`` and Soft MoE with ``k·S/E`` slots per
   expert process the same number of token rows) — through every dispatch path (``gather``, ``einsum``,
   ``ragged``) and router (tokens choose, experts choose, soft). Reported: ms per call, tokens/s, and throughput relative to
   the dense MLP (median over rounds of the per-round ratio).
2. **Train step** of each multi-task model at the multi-digits size (mtljax's real jitted step, one
   device): HPS ViT, HPS over a V-MoE trunk, M³ViT, Mod-Squad, TaskExpert; examples/s relative to HPS.
   M³ViT and Mod-Squad run the backbone once per task, so their examples/s include that factor.
3. **Single-task pathway** (compiled cost analysis, forward FLOPs per example): the multi-task
   forward (every task's pass), one task's pass, and that task's extracted sub-models, pruned at each
   ``--thresholds`` value (keep the experts whose share of the task's choices on 2,048 *training*
   images is above it), each with its parameter count and its accuracy on the test images next to the
   full model's. With ``--m3vit_run``/``--mod_squad_run`` the trained checkpoints of those runs are used
   (routing specialises with training); otherwise freshly initialised models.

Timing with ``benchmarks/common.py`` (as the other benchmarks): every function compiled first, then
``--rounds`` interleaved rounds of ``--per-round`` timed calls; medians; ratios are per-round medians'
ratios, so drifting load from other processes cancels out.

  python benchmarks/moe.py --quick                         # tiny sizes, about a minute
  python benchmarks/moe.py --json benchmarks/results/moe.json \\
      --m3vit_run=runs/dm/m3vit_digits --mod_squad_run=runs/dm/mod_squad_digits
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_host_allocator_flag, apply_host_allocator, environment, measure  # noqa: E402


def timed_rounds(fns: dict, rounds: int, per_round: int) -> dict:
    """``{name: [round medians in s]}``, timed by :func:`common.measure` (interleaved rounds)."""
    cs = [SimpleNamespace(name=k, run=f) for k, f in fns.items()]
    measure(cs, rounds=rounds, per_round=per_round, log=lambda *a, **k: None)
    return {c.name: [statistics.median(ts) for ts in c.samples] for c in cs}


def ratio(samples: dict, name: str, ref: str) -> float:
    """Throughput of ``name`` relative to ``ref``: median over rounds of ``t_ref / t_name``."""
    return statistics.median(r / n for r, n in zip(samples[ref], samples[name]))


# ------------------------------------------------------------------------------------------- layer
def layer_functions(groups: int, tokens: int, width: int, experts: int, k: int, expert_dim: int,
                    only: str = "") -> dict:
    from mtljax.cost import flops_of
    from mtljax.models.layers import MlpBlock
    from mtljax.models.moe import MoeMlp
    from mtljax.models.plugs import Context

    x = jax.random.normal(jax.random.PRNGKey(0), (groups, tokens, width))
    layers = {"dense MLP": MlpBlock(k * expert_dim)}
    base = dict(num_experts=experts, expert_dim=expert_dim, k=k, noise_std=1.0, importance_weight=0.01,
                load_weight=0.01)
    variants = {
        "tokens-choose gather cf1.0": dict(dispatch="gather", capacity_factor=1.0),
        "tokens-choose gather cf1.25": dict(dispatch="gather", capacity_factor=1.25),
        "tokens-choose gather cf1.25 no-BPR": dict(dispatch="gather", capacity_factor=1.25, batch_priority=False),
        "tokens-choose gather cf1.0 packed": dict(dispatch="gather", capacity_factor=1.0, pack_slots=True),
        "tokens-choose gather cf1.25 packed": dict(dispatch="gather", capacity_factor=1.25, pack_slots=True),
        "tokens-choose einsum cf1.25": dict(dispatch="einsum", capacity_factor=1.25),
        "tokens-choose ragged (dropless)": dict(dispatch="ragged"),
        # experts-choose: capacity = S·cf/E per expert, so cf = k gives every token k experts on average
        f"experts-choose gather cf{k:.1f}": dict(router="experts_choose", dispatch="gather", capacity_factor=float(k)),
        f"experts-choose einsum cf{k:.1f}": dict(router="experts_choose", dispatch="einsum", capacity_factor=float(k)),
        # soft: E·slots = k·S slot rows through the experts, the active FLOPs of top-k
        f"soft ({k * tokens // experts} slots/expert)": dict(router="soft", slots_per_expert=max(1, k * tokens // experts)),
    }
    for name, kw in variants.items():
        if not only or any(o.strip() == name for o in only.split(";")):
            layers[name] = MoeMlp(**{**base, **kw})
    fns, flops = {}, {}
    for name, layer in layers.items():
        params = nn.unbox(layer.init({"params": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)}, x)["params"])

        def loss(p, x, layer=layer):
            out = layer.apply({"params": p}, x, Context(train=True), rngs={"dropout": jax.random.PRNGKey(3)})
            y, aux = out if isinstance(out, tuple) else (out, {"losses": {}})
            return jnp.sum(y.astype(jnp.float32) ** 2) + sum(aux["losses"].values())

        compiled = jax.jit(jax.grad(loss)).lower(params, x).compile()
        flops[name] = flops_of(compiled)
        fns[name] = (lambda c=compiled, p=params: jax.block_until_ready(c(p, x)))
    return fns, flops


def bench_layer(args) -> dict:
    sizes = [("tiny (scenes M3ViT layer)", dict(groups=192, tokens=64, width=64, experts=8, k=2, expert_dim=64)),
             ("ViT-S width", dict(groups=32, tokens=64, width=384, experts=8, k=2, expert_dim=768))]
    if args.quick:
        sizes = [("quick", dict(groups=16, tokens=16, width=32, experts=4, k=2, expert_dim=32))]
    if args.widths:
        sizes = [(label, size) for label, size in sizes if str(size["width"]) in args.widths.split(",")]
    out = {}
    for label, size in sizes:
        fns, flops = layer_functions(**size, only=args.variants)
        samples = timed_rounds(fns, args.rounds, args.per_round)
        n_tok = size["groups"] * size["tokens"]
        rows = []
        for name in fns:
            t = statistics.median(samples[name])
            rows.append({"name": name, "ms": 1e3 * t, "tokens_per_s": n_tok / t, "vs_dense": ratio(samples, name, "dense MLP"),
                         "gflop": flops[name] / 1e9})
        out[label] = {"size": size, "rows": rows}
        print(f"\n## layer, {label}: {size}")
        print("| layer | ms (fwd+bwd) | tokens/s | throughput vs dense | compiled GFLOP |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(f"| {r['name']} | {r['ms']:.1f} | {r['tokens_per_s']:,.0f} | {r['vs_dense']:.2f}x | {r['gflop']:.3f} |")
    return out


# -------------------------------------------------------------------------------------- train step
def model_config(name: str):
    import importlib.util

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = {"hps": "default", "hps_moe": "default", "m3vit": "m3vit", "mod_squad": "mod_squad",
             "task_expert": "task_expert"}
    spec = importlib.util.spec_from_file_location("c", os.path.join(here, "configs", files[name] + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(None)
    if name == "hps_moe":
        c.model.backbone = "moe_vit"
        c.model.moe.update(num_experts=8, top_k=2, every=2)
    return c


def bench_train_steps(args) -> dict:
    from mtljax.cost import flops_of
    from mtljax.data import build_dataset, train_dataset, train_iterator
    from mtljax.models import build_model
    from mtljax.parallel.mesh import make_mesh
    from mtljax.parallel.rules import DEFAULT_RULES, batch_sharding
    from mtljax.models.objective import objective
    from mtljax.optim import equal
    from mtljax.trainer.optimizer import build_optimizer
    from mtljax.trainer.state import create_state
    from mtljax.trainer.step import jit_train_step, make_train_step

    names = ["hps", "hps_moe", "m3vit", "mod_squad", "task_expert"]
    fns, info = {}, {}
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    for name in names:
        c = model_config(name)
        c.data.num_train, c.data.num_test = 1024, 64
        if args.quick:
            c.model.vit.update(width=32, depth=2, mlp_dim=64)
            c.data.batch_size = 32
        data = build_dataset(c.data)
        model = build_model(c.model, data.tasks, data.input_shape)
        tx = build_optimizer(c.optim, equal(), len(data.tasks), 1000)
        with jax.set_mesh(mesh):
            state, shardings, _ = create_state(model, tx, data.input_shape, 0, mesh, DEFAULT_RULES)
            step = jit_train_step(make_train_step(objective(model, data.tasks), tx), mesh, shardings,
                                  batch_sharding(mesh))
            batch = next(train_iterator(train_dataset(data.splits["train"], data.tasks, c.data.batch_size, 0), 0))
            batch = jax.device_put(batch, batch_sharding(mesh))
            compiled = step.lower(state, batch).compile()
        holder = {"state": state}

        def run(compiled=compiled, holder=holder, batch=batch):
            holder["state"], m = compiled(holder["state"], batch)
            jax.block_until_ready(m["loss"])

        fns[name] = run
        info[name] = {"batch": c.data.batch_size, "params": sum(int(np.prod(v.shape)) for v in jax.tree.leaves(state.params)),
                      "gflop_per_step": flops_of(compiled) / 1e9}
    samples = timed_rounds(fns, args.rounds, args.per_round)
    rows = []
    print(f"\n## train step (multi-digits: 16x16 images, 4x4 patches, batch {info['hps']['batch']}; one device)")
    print("| model | params | ms/step | examples/s | vs HPS | compiled GFLOP/step |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        t = statistics.median(samples[name])
        r = {"name": name, "ms": 1e3 * t, "examples_per_s": info[name]["batch"] / t, "vs_hps": ratio(samples, name, "hps"),
             **info[name]}
        rows.append(r)
        print(f"| {name} | {r['params']:,} | {r['ms']:.1f} | {r['examples_per_s']:,.0f} | {r['vs_hps']:.2f}x | "
              f"{r['gflop_per_step']:.2f} |")
    return {"rows": rows}


# ------------------------------------------------------------------------------ single-task pathway
def bench_pathway(args) -> dict:
    from mtljax.cost import compiled_flops
    from mtljax.models.moe.submodel import expert_usage, extract_task_model
    from mtljax.trainer.experiment import Experiment
    from mtljax.trainer.loop import restore_params

    thresholds = [float(t) for t in args.thresholds.split(",")]
    n_usage, n_test = (256, 256) if args.quick else (2048, 4000)
    out = {}
    print("\n## single-task pathway: forward GFLOP per example (compiled cost analysis), test accuracy")
    print("| model | task | pass | experts kept per MoE layer | params | GFLOP/example (vs all tasks) | test accuracy |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: |")
    for name, run_dir in (("m3vit", args.m3vit_run), ("mod_squad", args.mod_squad_run)):
        c = model_config(name)
        c.data.num_test = n_test  # num_train as trained: the split (and test images) depend on it
        if args.quick:
            c.data.num_train = n_usage
        if run_dir:
            c.workdir = run_dir
            with open(os.path.join(run_dir, "config.json")) as f:  # the run's MoE settings (e.g. an MI-weight ablation)
                saved = json.load(f)["model"]["moe"]
            c.model.moe.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
        exp = Experiment(c)
        model = exp.model
        train_x = exp.dataset.splits["train"].get_batch(np.arange(n_usage))["inputs"]
        test = exp.dataset.splits["test"].get_batch(np.arange(n_test))
        if run_dir:
            with jax.set_mesh(exp.mesh):
                step, params, _ = restore_params(exp)
                params = jax.device_get(params)
            weights = f"trained ({os.path.basename(run_dir.rstrip('/'))}, step {step})"
        else:
            params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), train_x[:1])["params"])
            weights = "initialised"
        one = train_x[:1]
        n_params = lambda p: sum(int(np.prod(v.shape)) for v in jax.tree.leaves(p))  # noqa: E731

        def accuracy(m, p, task):
            apply = jax.jit(lambda p, x: m.apply({"params": p}, x, task=task)[0][task])
            logits = np.concatenate([np.asarray(apply(p, jnp.asarray(test["inputs"][i:i + 500])))
                                     for i in range(0, n_test, 500)])
            mask = np.asarray(test["masks"][task]).astype(bool)
            return float(np.mean(logits.argmax(-1)[mask] == np.asarray(test["targets"][task])[mask]))

        all_f = compiled_flops(lambda p, x: model.apply({"params": p}, x)[0], params, one)
        rows = []
        print(f"| {name} | all | every task's pass | all | {n_params(params):,} | {all_f / 1e9:.4f} (1.00x) | |")
        for task in [t.name for t in exp.tasks]:
            task_f = compiled_flops(lambda p, x, t=task: model.apply({"params": p}, x, task=t)[0], params, one)
            full_acc = accuracy(model, params, task)
            rows.append({"task": task, "threshold": None, "gflop": task_f / 1e9, "vs_all": task_f / all_f,
                         "params": n_params(params), "accuracy": full_acc})
            print(f"| {name} | {task} | full model, this task's pass | all | {n_params(params):,} | "
                  f"{task_f / 1e9:.4f} ({task_f / all_f:.2f}x) | {full_acc:.4f} |")
            usage = expert_usage(model, params, train_x, task)
            for th in thresholds:
                sub, sub_params, kept = extract_task_model(model, params, task, usage, threshold=th)
                sub_f = compiled_flops(lambda p, x, s=sub: s.apply({"params": p}, x)[0], sub_params, one)
                acc = accuracy(sub, sub_params, task)
                kept_n = {"/".join(k[1:]): len(v) for k, v in kept.items()}
                rows.append({"task": task, "threshold": th, "gflop": sub_f / 1e9, "vs_all": sub_f / all_f,
                             "params": n_params(sub_params), "accuracy": acc, "kept": kept_n})
                print(f"| {name} | {task} | sub-model, share > {th:g} | {' '.join(str(v) for v in kept_n.values())} | "
                      f"{n_params(sub_params):,} | {sub_f / 1e9:.4f} ({sub_f / all_f:.2f}x) | {acc:.4f} |")
        out[name] = {"weights": weights, "all_tasks_gflop": all_f / 1e9, "rows": rows,
                     "layers": ["/".join(k[1:]) for k in kept]}
        print(f"({name}: {weights}; kept counts in layer order {out[name]['layers']})")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=3)
    p.add_argument("--parts", default="layer,train,pathway")
    p.add_argument("--variants", default="",
                   help="layer part: only these MoE rows (names as printed, ';'-separated; the dense MLP always runs)")
    p.add_argument("--widths", default="", help="layer part: only these widths D (comma-separated, e.g. 64,384)")
    p.add_argument("--m3vit_run", default="")
    p.add_argument("--mod_squad_run", default="")
    p.add_argument("--thresholds", default="0,0.05,0.1",
                   help="sub-models: keep the experts whose share of the task's choices is above each value")
    p.add_argument("--json", default=None)
    add_host_allocator_flag(p)
    args = p.parse_args()
    apply_host_allocator(args.host_allocator)
    if args.quick:
        args.rounds, args.per_round = 2, 1
    env = {**environment(), "devices": str(jax.devices()), "command": " ".join(sys.argv)}
    print(json.dumps(env))
    results = {"env": env}
    parts = args.parts.split(",")
    if "layer" in parts:
        results["layer"] = bench_layer(args)
    if "train" in parts:
        results["train"] = bench_train_steps(args)
    if "pathway" in parts:
        results["pathway"] = bench_pathway(args)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
