"""Inference throughput and FLOPs of slim-model sub-networks relative to the full network.

    python benchmarks/slim.py                                   # configs/slim_digits.py's ViT model
    python benchmarks/slim.py --config=configs/slim_digits.py:conv --batch=256
    python benchmarks/slim.py --config=configs/slim_cifar100.py --batch=128 --json=/tmp/slim.json

For each configuration (every uniform width, plus mixed ones: wide encoder with narrow decoders and
the reverse, and the search's choice for 50 % of the FLOPs under a one-hot preference), in one run:

* FLOPs per example of the whole sub-network compiled at that configuration (XLA cost analysis),
  and the composed number the search uses (per-component table, :mod:`mtljax.models.slim.flops`);
* parameters of the exported standalone sub-network;
* inference throughput (examples/s: the best of ``--repeats`` timings of ``--iters`` jitted forward
  passes of the exported sub-network on a fixed batch, after a warm-up; the rounds interleave the
  configurations so that background load hits all of them alike), relative to the full network;
* the same forward through the *masked* training path at that configuration (every channel computed,
  inactive ones zeroed): what sub-networks would cost without slicing.

Weights are random (throughput and FLOPs do not depend on them); the dataset only gives the input
shape and tasks. Timings are wall-clock on whatever JAX runs on (CPU here): compare ratios within a run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time

import jax
import jax.numpy as jnp
import numpy as np


def _load_config(spec: str):
    path, _, arg = spec.partition(":")
    s = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(s)
    s.loader.exec_module(module)
    return module.get_config(arg or None)


def _time(fn, args, iters: int) -> float:
    jax.block_until_ready(fn(*args))  # one untimed call: this function's buffers and threads are warm
    t0 = time.perf_counter()
    for _ in range(iters):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / iters


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/slim_digits.py")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)

    from mtljax.data import build_dataset
    from mtljax.models import build_model
    from mtljax.models.slim import SlimConfig, export
    from mtljax.models.slim.flops import flops_table, model_flops
    from mtljax.models.slim.search import search

    config = _load_config(args.config)
    try:
        dataset = build_dataset(config.data)
        tasks, shape = dataset.tasks, dataset.input_shape
    except (FileNotFoundError, ValueError):  # tfds data not prepared: the shapes are all we need
        from mtljax.data.cifar100_mtl import TASK_NAMES
        from mtljax.tasks import Task

        tasks, shape = tuple(Task(n, "multiclass", num_classes=5) for n in TASK_NAMES), (32, 32, 3)
    model = build_model(config.model, tasks, shape)
    names = [t.name for t in tasks]
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: __import__("flax.linen", fromlist=["unbox"]).unbox(
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape))))["params"])
    params = jax.device_put(jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32), shapes))
    x = jnp.asarray(rng.standard_normal((args.batch, *shape)).astype(np.float32))
    table = flops_table(model, shape)

    configs = [(f"uniform {w:g}", SlimConfig.make(w, {n: w for n in names})) for w in reversed(model.encoder_widths)
               if w in model.decoder_widths]
    lo_e, lo_d = model.encoder_widths[0], model.decoder_widths[0]
    configs += [(f"encoder 1, decoders {lo_d:g}", SlimConfig.make(1.0, {n: lo_d for n in names})),
                (f"encoder {lo_e:g}, decoders 1", SlimConfig.make(lo_e, {n: 1.0 for n in names}))]
    pref = np.eye(len(names))[0]
    chosen, _ = search(table, 0.5 * table.full, pref)
    configs.append((f"search: 50% FLOPs, only {names[0]}", chosen))

    masked_fn = jax.jit(lambda p, x, e, d: model.apply({"params": p}, x, e, d, masked=True,
                                                       method=model.forward_config)[0])
    runs = []  # (label, cfg, sliced call, masked call, exported params)
    for label, cfg in configs:
        small, small_params, _ = export(model, params, cfg, shape)
        small_params = jax.device_put(small_params)
        fwd = jax.jit(lambda p, x, small=small: small.apply({"params": p}, x)[0])
        e, d = model.indices(cfg)
        e, d = jnp.int32(e), jnp.asarray(d, jnp.int32)
        jax.block_until_ready((fwd(small_params, x), masked_fn(params, x, e, d)))  # compile + warm up
        runs.append((label, cfg, lambda f=fwd, p=small_params: f(p, x), lambda e=e, d=d: masked_fn(params, x, e, d),
                     small_params))
    best = {label: [float("inf"), float("inf")] for label, *_ in runs}
    for _ in range(args.repeats):  # interleaved rounds: background load hits every configuration alike
        for label, _, sliced, masked, _ in runs:
            for j, fn in enumerate((sliced, masked)):
                best[label][j] = min(best[label][j], _time(fn, (), args.iters))
    rows, full = [], None
    for label, cfg, _, _, small_params in runs:
        seconds, masked_s = best[label]
        row = dict(config=label, widths=cfg.to_dict(), flops_whole=model_flops(model, shape, cfg),
                   flops_composed=table.total(cfg), params=int(sum(np.size(a) for a in jax.tree.leaves(small_params))),
                   examples_per_s=args.batch / seconds, masked_examples_per_s=args.batch / masked_s)
        full = full or row
        row["flops_rel"] = row["flops_whole"] / full["flops_whole"]
        row["speed_rel"] = row["examples_per_s"] / full["examples_per_s"]
        row["masked_speed_rel"] = row["masked_examples_per_s"] / full["examples_per_s"]
        rows.append(row)

    print(f"{args.config}: batch {args.batch}, {jax.devices()[0].platform} ({jax.device_count()} device(s)), "
          f"jax {jax.__version__}")
    print("| configuration | FLOPs/example | FLOPs rel. | params | examples/s (sliced) | speed rel. | "
          "masked speed rel. |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['config']} | {r['flops_whole']:.3g} | {r['flops_rel']:.3f} | {r['params']:,} | "
              f"{r['examples_per_s']:,.0f} | {r['speed_rel']:.2f} | {r['masked_speed_rel']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "batch": args.batch, "platform": jax.devices()[0].platform,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
