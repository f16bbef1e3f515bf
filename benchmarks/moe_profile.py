"""Where the MoE layer's time goes: a per-op breakdown of the compiled layer (forward + backward).

Compiles ``grad(sum(y²) + aux losses)`` of the MoE MLP (tokens choose top-2 of 8, gather dispatch, as
``benchmarks/moe.py``'s layer part) or of the equal-FLOP dense MLP, runs it under ``jax.profiler`` and
prints the XLA ops (thunks) by time summed over the CPU worker threads, each with its output shape and
the JAX operation it came from (HLO metadata), so top-k sorts, matmuls, gathers and copies can be told
apart. Times are per call; with other processes on the machine they are noisy, the shares less so.

  python benchmarks/moe_profile.py --width 64            # the tiny (scenes M3ViT) layer
  python benchmarks/moe_profile.py --width 384 --dense    # the dense MLP it is compared with
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp

SIZES = {64: dict(groups=192, tokens=64, expert_dim=64), 384: dict(groups=32, tokens=64, expert_dim=768)}


def op_origin(hlo: str, name: str) -> str:
    """Output shape and source operation(s) of HLO instruction ``name`` (a fusion: its ops' names)."""
    m = re.search(r"^\s*(?:ROOT )?%?" + re.escape(name) + r" = ([^\n]*)", hlo, re.M)
    if not m:
        return ""
    line = m.group(1)
    ops = re.findall(r'op_name="([^"]*)"', line)
    call = re.search(r"calls=%?([\w.\-]+)", line)
    if not ops and call:
        body = re.search(r"^%?" + re.escape(call.group(1)) + r" .*?\{(.*?)\n\}", hlo, re.M | re.S)
        ops = re.findall(r'op_name="([^"]*)"', body.group(1)) if body else []
    short = sorted({("bwd:" if "transpose(" in o else "") + "/".join(o.split("/")[-2:]) for o in ops})
    return f"{line.split(' ')[0][:34]:34s} {' | '.join(short)[:110]}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=64, choices=sorted(SIZES))
    p.add_argument("--dense", action="store_true", help="profile the dense MLP instead")
    p.add_argument("--capacity_factor", type=float, default=1.25)
    p.add_argument("--no_batch_priority", action="store_true")
    p.add_argument("--pack_slots", action="store_true")
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    from mtljax.models.layers import MlpBlock
    from mtljax.models.moe import MoeMlp
    from mtljax.models.plugs import Context

    sz = SIZES[args.width]
    x = jax.random.normal(jax.random.PRNGKey(0), (sz["groups"], sz["tokens"], args.width))
    layer = MlpBlock(2 * sz["expert_dim"]) if args.dense else MoeMlp(
        num_experts=8, expert_dim=sz["expert_dim"], k=2, noise_std=1.0, importance_weight=0.01, load_weight=0.01,
        dispatch="gather", capacity_factor=args.capacity_factor, batch_priority=not args.no_batch_priority,
        pack_slots=args.pack_slots)
    params = nn.unbox(layer.init({"params": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)}, x)["params"])

    def loss(p, x):
        out = layer.apply({"params": p}, x, Context(train=True), rngs={"dropout": jax.random.PRNGKey(3)})
        y, aux = out if isinstance(out, tuple) else (out, {"losses": {}})
        return jnp.sum(y ** 2) + sum(aux["losses"].values())

    compiled = jax.jit(jax.grad(loss)).lower(params, x).compile()
    hlo = compiled.as_text()
    for _ in range(3):
        jax.block_until_ready(compiled(params, x))
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d, create_perfetto_trace=True)
        for _ in range(args.calls):
            jax.block_until_ready(compiled(params, x))
        jax.profiler.stop_trace()
        trace = json.load(gzip.open(glob.glob(f"{d}/**/*perfetto_trace.json.gz", recursive=True)[0]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    per_op = collections.defaultdict(float)
    for e in events:  # XLA's CPU worker threads; loops are counted by their body ops, not as a whole
        if (e.get("ph") == "X" and "XLAEigen" in threads.get((e["pid"], e["tid"]), "")
                and not re.match(r"(ThunkExecutor|SlinkyThreadPool|while\.)", e["name"])):
            per_op[e["name"].replace("end: ", "")] += e["dur"] / 1e3 / args.calls
    total = sum(per_op.values())
    what = "dense MLP" if args.dense else f"MoE layer (capacity factor {args.capacity_factor})"
    print(f"{what}, D = {args.width}: {total:.1f} ms of op time per call (summed over worker threads)")
    for name, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{ms:8.2f} ms {100 * ms / total:5.1f}%  {name[:24]:24s} {op_origin(hlo, name)}")


if __name__ == "__main__":
    main()
