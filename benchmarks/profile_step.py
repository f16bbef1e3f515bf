"""Where a compiled train step's time goes: a per-op breakdown from the JAX profiler, grouped.

The step is mtljax's real one (``make_train_step`` + ``jit_train_step`` on a 1-device mesh, or data
parallel over ``--cpu-devices`` CPU devices; state donated, as the trainer runs it) for one of two
models:

* ``vit``: the HPS ViT of ``benchmarks/train_step.py`` (``--case VARIANT:HxWxC:pPATCH``, batch 64,
  3 classification tasks, equal weighting, Adam), ``--dtype float32|bfloat16``;
* ``mtl``: the shared MLP of ``benchmarks/mtl_step.py`` (3 x 512, batch 256, ``--tasks`` tasks) with
  a multi-task method (``--method upgrad --level param`` by default), i.e. a Gramian method's step.

After ``--warmup`` calls, ``--steps`` calls run under ``jax.profiler.trace``. XLA's CPU runtime records
one trace event per executed HLO op (a thunk: a fusion, a dot, a copy, ...) with its name; nested
events (a conditional's branch ops inside the conditional) are counted once, as self time. Each op is
looked up in the compiled module's HLO text (``compiled.as_text()``) for its opcode, the ops fused into
it and its ``op_name`` metadata (the JAX name stack: Flax module path, ``jvp``/``transpose``, and the
step's named scopes ``optimizer``, ``mtl_method``, ``finite_guard``) and put in one group:

* **copies and transposes**: ``copy``/``transpose`` ops and fusions of data movement only;
* **matmuls**: dots and convolutions (and fusions containing one) outside attention's softmax core;
* **attention**: the ops of ``dot_product_attention`` (its ``q·kᵀ`` and ``p·v`` dots, softmax) — the
  q/k/v/out projections are dense layers and count as matmuls;
* **normalisation and elementwise**: the model's other ops (LayerNorm, GELU, residuals, loss);
* **multi-task method**: the method's own ops (Gramian, weights, solver; scope ``mtl_method``) that are
  not the model's backward;
* **optimizer**: the optax chain after the method (Adam's moments, the parameter update);
* **collectives**: all-reduces and the like between devices (``--cpu-devices``);
* **guard and other**: the finite guard, the step counter, RNG, metrics, control flow.

Times are per step, two ways: the summed self time of a group's ops (``thread ms``: ops on XLA's two
threads can overlap, and each is charged its whole duration, so groups can sum to more than the wall
time; an op slowed by a neighbour looks slower than it is) with its share of the total op time, and
the wall time attributed to it (``wall ms``: every instant during which ops run is split equally among
the ops running then, one per thread, so the groups sum to the time during which some op was running).
The rest of the profiled wall time has no op event open on any thread: XLA's dispatch between thunks,
and Eigen's dots, whose thunk events close before their work on the pool threads does (on ViT-Ti at 16
tokens, 29–32 ms of a 250–259-ms step; its Eigen dots carry 7.3 GFLOP, ~48 ms of work, under 13.8 ms of
events; see BENCHMARKS.md). So a group's wall time can undercount its Eigen dots.
The wall time of an unprofiled step (median of ``--steps`` calls) is printed too. The ``--top`` ops are
listed with their group and name stack.

  python benchmarks/profile_step.py vit --case Ti:16x16x1:p4          # ViT-Ti, 16 tokens
  python benchmarks/profile_step.py vit --case S:32x32x3:p4 --steps 3  # ViT-S, 64 tokens
  python benchmarks/profile_step.py mtl --method upgrad --level param --tasks 10
  python benchmarks/profile_step.py vit --cpu-devices 2               # data parallel over 2 CPU devices (vit)
  python benchmarks/profile_step.py vit --case Ti:32x32x3:p4 --steps 3 --peer   # and PyTorch's step, side by side
  python benchmarks/profile_step.py mtl --method equal --tasks 3 --steps 20 --peer  # and torch's plain step

``--peer`` (needs ``.venv-bench``'s torch) also profiles the peer's step with ``torch.profiler``
(torch's default threads): for ``vit`` the PyTorch eager step of ``benchmarks/torch_vit_step.py`` on
the same case and batch (random parameters: the arithmetic is the same as mtljax's, as
``train_step.py`` checks; ``--dtype bfloat16``: under ``torch.autocast``); for ``mtl`` the step of
``benchmarks/torchjd_step.py`` that ``mtl_step.py`` compares with — the plain ``sum(losses).backward()``
for ``--method equal``, TorchJD's UPGrad for ``--method upgrad`` (``mtl_backward`` + ``jac_to_grad`` at
level ``param``, its autogram engine at the other levels). It puts the peer's ops' self times in the
same groups: ``mm``/``addmm``/``bmm`` →
matmuls; the fused ``scaled_dot_product_*`` kernels → attention; ``copy_``/``cat``/``clone``/
``contiguous`` → copies; everything run inside ``Optimizer.step`` → optimizer; ``zero_grad`` and the
autograd engine's own bookkeeping → other; the rest of the ``aten`` ops → normalisation and
elementwise. A torch op's self time is wall time (its OpenMP threads work inside it), so it compares
like with like with mtljax's ``wall ms`` column (overlapping XLA ops split their common time).

``--json FILE`` writes the groups and the top ops.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # vit_case, mtl_step
from common import add_host_allocator_flag, apply_host_allocator  # noqa: E402

GROUPS = ("matmuls", "attention", "normalisation and elementwise", "copies and transposes",
          "multi-task method", "optimizer", "collectives", "guard and other")
_COLLECTIVES = {"all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all",
                "all-reduce-start", "all-reduce-done", "all-gather-start", "all-gather-done"}
_MOVE_OPS = {"copy", "transpose", "bitcast", "reshape", "broadcast", "slice", "concatenate", "pad",
             "dynamic-slice", "dynamic-update-slice", "parameter", "constant", "tuple", "get-tuple-element",
             "reverse", "iota", "convert", "bitcast-convert"}
_DOT_OPS = {"dot", "convolution", "ragged-dot"}
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*.*?\s([a-z][a-z\-]*)\(")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_OPNAME = re.compile(r'op_name="([^"]*)"')
_PROJECTION = re.compile(r"/attn/(query|key|value|out|qkv)/")
_COMP = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")


def parse_hlo(text: str) -> dict:
    """``{instruction: {"opcode", "op_name", "ops" (opcodes inside a fusion, or itself)}}``."""
    comps: dict[str, list[str]] = {}
    instrs: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        m = _COMP.match(line)
        if m and "=" not in line.split("{")[0]:
            current = m.group(1)
            comps[current] = []
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name, opcode = m.group(1), m.group(2)
        calls = _CALLS.search(line)
        op_name = _OPNAME.search(line)
        instrs[name] = {"opcode": opcode, "calls": calls.group(1) if calls else None,
                        "op_name": op_name.group(1) if op_name else ""}
        if current is not None:
            comps[current].append(opcode)
    for info in instrs.values():
        inner = comps.get(info["calls"]) if info["opcode"] == "fusion" and info["calls"] else None
        info["ops"] = set(inner) if inner else {info["opcode"]}
    return instrs


def classify(info: dict | None) -> str:
    if info is None:
        return "guard and other"
    ops, path = info["ops"], info["op_name"]
    if ops & _COLLECTIVES:
        return "collectives"
    in_model = "MultiTaskModel" in path or "/backbone/" in path or "/heads_" in path
    if ops <= _MOVE_OPS and ops & {"copy", "transpose", "dynamic-update-slice", "concatenate", "pad", "reverse"}:
        return "copies and transposes"
    if "dot_product_attention" in path or ("/attn/" in path and not _PROJECTION.search(path)):
        return "attention"  # the softmax core; the q/k/v/out projections are dense layers (matmuls)
    if ops & _DOT_OPS:
        return "matmuls" if in_model or "mtl_method" not in path else "multi-task method"
    if "finite_guard" in path:
        return "guard and other"
    if "mtl_method" in path and not in_model:
        return "multi-task method"
    if "optimizer" in path and not in_model:
        return "optimizer"
    if in_model or "loss" in path:
        return "normalisation and elementwise"
    if ops <= _MOVE_OPS:
        return "copies and transposes"
    return "guard and other"


def self_times(events: list[dict]) -> dict[str, float]:
    """Summed self time (µs) per HLO op name: a parent's time excludes its children on the same thread."""
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[e["tid"]].append(e)
    out: dict[str, float] = collections.Counter()
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[list] = []  # [end, name, duration, children's time]

        def close(entry):
            out[entry[1]] += entry[2] - entry[3]

        for e in evs:
            while stack and e["ts"] >= stack[-1][0] - 1e-3:
                close(stack.pop())
            if stack:
                stack[-1][3] += e["dur"]
            stack.append([e["ts"] + e["dur"], e["args"]["hlo_op"], e["dur"], 0.0])
        while stack:
            close(stack.pop())
    return out


def trace_events(logdir: str, module_prefix: str) -> list[dict]:
    files = glob.glob(os.path.join(logdir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not files:
        raise RuntimeError(f"no perfetto trace written under {logdir}")
    data = json.load(gzip.open(files[0]))
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})
            and str(e["args"].get("hlo_module", "")).startswith(module_prefix)]


def unprofiled_walls(run, steps: int, warmup: int) -> list[float]:
    """Seconds of each of ``steps`` calls of ``run`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    walls = []
    for _ in range(steps):
        t0 = time.perf_counter()
        run()
        walls.append(time.perf_counter() - t0)
    return walls


def wall_times(events: list[dict]) -> dict[str, float]:
    """Wall time (µs) attributed to each HLO op name: every instant covered by ops is split equally among
    the ops running at that instant, one per thread (its innermost op). Unlike :func:`self_times`, ops
    that run side by side on XLA's threads are not each charged the whole overlap: the attributed times
    sum to the time during which some op was running (at most the wall time)."""
    points = []  # (time, 0 = end / 1 = start, thread, serial, name)
    for i, e in enumerate(events):
        points.append((e["ts"], 1, e["tid"], i, e["args"]["hlo_op"]))
        points.append((e["ts"] + e["dur"], 0, e["tid"], i, e["args"]["hlo_op"]))
    points.sort(key=lambda p: (p[0], p[1], -events[p[3]]["dur"] if p[1] else events[p[3]]["dur"]))
    stacks: dict = collections.defaultdict(list)  # thread -> [(serial, name)], innermost last
    out: dict[str, float] = collections.Counter()
    last = None
    for t, kind, tid, serial, name in points:
        if last is not None and t > last:
            owners = [st[-1][1] for st in stacks.values() if st]
            for owner in owners:
                out[owner] += (t - last) / len(owners)
        last = t
        if kind:
            stacks[tid].append((serial, name))
        else:  # events nest on a thread; a rounding-level mismatch still removes the right entry
            st = stacks[tid]
            for j in range(len(st) - 1, -1, -1):
                if st[j][0] == serial:
                    del st[j]
                    break
    return out


def group_shares(groups: dict, total: float) -> dict:
    return {g: {"ms": groups.get(g, 0.0), "share": groups.get(g, 0.0) / total if total else 0.0} for g in GROUPS}


def breakdown(compiled, run, *, steps: int, warmup: int, top: int) -> dict:
    import jax

    hlo = parse_hlo(compiled.as_text())
    walls = unprofiled_walls(run, steps, warmup)
    logdir = tempfile.mkdtemp(prefix="mtljax-profile-")
    try:
        jax.profiler.start_trace(logdir, create_perfetto_trace=True)
        t0 = time.perf_counter()
        for _ in range(steps):
            run()
        profiled_s = (time.perf_counter() - t0) / steps
        jax.profiler.stop_trace()
        events = trace_events(logdir, "jit_train_step")
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    times, walls_of = self_times(events), wall_times(events)
    groups, wall_groups = collections.Counter(), collections.Counter()
    ops = []
    for name, us in times.items():
        info = hlo.get(name)
        g = classify(info)
        ms, wall_ms = us / 1e3 / steps, walls_of.get(name, 0.0) / 1e3 / steps
        groups[g] += ms
        wall_groups[g] += wall_ms
        ops.append({"op": name, "group": g, "ms": ms, "wall_ms": wall_ms, "opcode": info["opcode"] if info else "?",
                    "fused": sorted(info["ops"])[:8] if info else [], "op_name": info["op_name"] if info else ""})
    total = sum(groups.values())
    ops.sort(key=lambda o: -o["ms"])
    shares = group_shares(groups, total)
    for g in shares:
        shares[g]["wall_ms"] = wall_groups.get(g, 0.0)
    return {"wall_ms": 1e3 * statistics.median(walls), "profiled_wall_ms": 1e3 * profiled_s, "op_ms": total,
            "busy_ms": sum(wall_groups.values()), "groups": shares, "num_ops": len(times), "top": ops[:top]}


def report(title: str, res: dict) -> str:
    lines = [f"### {title}", "",
             (f"step wall time {res['wall_ms']:.1f} ms (unprofiled median), {res['profiled_wall_ms']:.1f} ms "
              f"profiled; op time {res['op_ms']:.1f} thread-ms over {res['num_ops']} ops; some op event open for "
              f"{res['busy_ms']:.1f} ms, none for {res['profiled_wall_ms'] - res['busy_ms']:.1f} ms"), "",
             "| group | thread ms / step | share of op time | wall ms / step (overlaps split) |", "|---|---:|---:|---:|"]
    for g, v in res["groups"].items():
        lines.append(f"| {g} | {v['ms']:.1f} | {100 * v['share']:.1f} % | {v['wall_ms']:.1f} |")
    lines += ["", "| op | group | thread ms / step | wall ms / step | fused ops | name stack |",
              "|---|---|---:|---:|---|---|"]
    for o in res["top"]:
        stack = o["op_name"].replace("jit(train_step)/", "")
        stack = stack if len(stack) < 90 else "…" + stack[-89:]
        lines.append(f"| {o['op']} | {o['group']} | {o['ms']:.2f} | {o['wall_ms']:.2f} | {','.join(o['fused'])} "
                     f"| {stack} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- steps
def vit_step(args):
    """The step of ``benchmarks/train_step.py`` (``vit_case.mtljax_contender``): 3 tasks, batch 64."""
    from vit_case import Case, mtljax_contender

    case = Case.parse(args.case)
    c, _, _ = mtljax_contender(case, args.dtype, args.batch or 64, [10, 10, 19], devices=args.cpu_devices)
    title = f"{case.label}, batch {args.batch or 64}, {args.dtype}, {args.cpu_devices} device(s)"
    return title, (c.compiled, c.run)


_TORCH_MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"}
_TORCH_COPY = {"aten::copy_", "aten::cat", "aten::clone", "aten::contiguous", "aten::_to_copy", "aten::stack"}


def torch_group(name: str, ancestors: list[str]) -> str:
    """The group of one torch profiler op, by its name and the names of the ops it runs inside."""
    if any(a.startswith("Optimizer.step") for a in ancestors) or name.startswith("Optimizer.step"):
        return "optimizer"
    if name.startswith("Optimizer.zero_grad") or any(a.startswith("Optimizer.zero_grad") for a in ancestors):
        return "guard and other"
    if "scaled_dot_product" in name or "flash_attention" in name or any(
            "scaled_dot_product" in a or "flash_attention" in a for a in ancestors):
        return "attention"
    if name in _TORCH_MATMUL:
        return "matmuls"
    if name in _TORCH_COPY:
        return "copies and transposes"
    if name.startswith("aten::"):
        return "normalisation and elementwise"
    return "guard and other"


def torch_vit_peer(case_spec: str, batch: int, *, bf16: bool):
    """PyTorch's eager step of the vit case (``benchmarks/torch_vit_step.py``); ``bf16``: under
    ``torch.autocast('cpu', bfloat16)``, the counterpart of ``--dtype bfloat16``."""
    import torch

    import torch_vit_step as torch_vit
    from vit_case import Case, numpy_batch

    case = Case.parse(case_spec)
    classes = [10, 10, 19]
    torch.manual_seed(0)
    model = torch_vit.build(case.dims(), case.shape, case.patch, classes)
    x, ys = numpy_batch(case, batch, classes)
    return "PyTorch eager", torch_vit.make_step(model, x, ys, bf16=bf16)


def torch_mtl_peer(method: str, level: str, tasks: int, batch: int):
    """The PyTorch / TorchJD step of ``benchmarks/mtl_step.py`` that the mtl step is compared with:
    the plain ``sum(losses).backward()`` for equal weighting, TorchJD's UPGrad (``mtl_backward`` +
    ``jac_to_grad``) at level ``param``, its autogram engine at levels ``autogram`` and ``rep``."""
    import torchjd_step

    if method == "equal":
        name = "torch_sum"
    elif method == "upgrad":
        name = "torchjd_upgrad" if level == "param" else "torchjd_autogram_upgrad"
    else:
        raise SystemExit(f"--peer: mtl has a peer for --method equal or upgrad (TorchJD), not {method!r}")
    (step,) = torchjd_step.make_steps(tasks, batch=batch, in_dim=64, hidden=(512, 512, 512), names=(name,)).values()
    return name, step


def torch_breakdown(step, *, steps: int, warmup: int, top: int) -> dict:
    """Self time per group of a PyTorch eager step (``torch.profiler``, torch's default threads)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    walls = unprofiled_walls(step, steps, warmup)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        profiled_s = (time.perf_counter() - t0) / steps
    groups, by_op = collections.Counter(), collections.Counter()
    for ev in prof.events():
        ancestors, parent = [], ev.cpu_parent
        while parent is not None:
            ancestors.append(parent.name)
            parent = parent.cpu_parent
        g = torch_group(ev.name, ancestors)
        ms = ev.self_cpu_time_total / 1e3 / steps
        groups[g] += ms
        by_op[(ev.name, g)] += ms
    total = sum(groups.values())
    ops = [{"op": n, "group": g, "ms": ms, "opcode": "", "fused": [], "op_name": ""}
           for (n, g), ms in by_op.most_common(top)]
    return {"wall_ms": 1e3 * statistics.median(walls), "profiled_wall_ms": 1e3 * profiled_s, "op_ms": total,
            "groups": group_shares(groups, total), "num_ops": len(by_op), "top": ops,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def side_by_side(res: dict, peer: dict) -> str:
    lines = [f"### mtljax (XLA) and PyTorch eager ({peer['name']}), same case, by group", "",
             (f"step wall time: mtljax {res['wall_ms']:.1f} ms, torch {peer['wall_ms']:.1f} ms "
              f"({peer['threads']} threads, torch {peer['torch']}); mtljax ÷ torch speed "
              f"{peer['wall_ms'] / res['wall_ms']:.2f}"), "",
             "| group | mtljax thread ms / step | mtljax wall ms / step | torch ms / step | mtljax wall − torch |",
             "|---|---:|---:|---:|---:|"]
    for g in GROUPS:
        a, w, b = res["groups"][g]["ms"], res["groups"][g]["wall_ms"], peer["groups"][g]["ms"]
        if a or b:
            lines.append(f"| {g} | {a:.1f} | {w:.1f} | {b:.1f} | {w - b:+.1f} |")
    lines.append(f"| all ops | {res['op_ms']:.1f} | {res['busy_ms']:.1f} | {peer['op_ms']:.1f} | "
                 f"{res['busy_ms'] - peer['op_ms']:+.1f} |")
    lines += ["", "| torch op | group | ms / step |", "|---|---|---:|"]
    lines += [f"| {o['op']} | {o['group']} | {o['ms']:.2f} |" for o in peer["top"]]
    return "\n".join(lines)


def mtl_step(args):
    """The step of ``benchmarks/mtl_step.py`` (its MLP 3 x 512, batch 256) with one method at one level."""
    from mtl_step import jax_contenders
    from mtljax.optim import get_method

    if args.cpu_devices != 1:
        raise SystemExit("--cpu-devices: the mtl step runs on one device (as benchmarks/mtl_step.py does)")
    notes: list[str] = []
    batch = args.batch or 256
    (c,) = jax_contenders(args.tasks, [(args.method, args.level, get_method(args.method))], batch=batch, in_dim=64,
                          hidden=(512, 512, 512), chunk_size=None, notes=notes) or [None]
    if c is None:
        raise SystemExit("; ".join(notes))
    title = f"MLP 3x512, batch {batch}, T = {args.tasks}, {args.method} at level {args.level}"
    return title, (c.compiled, c.run)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=("vit", "mtl"))
    ap.add_argument("--case", default="Ti:16x16x1:p4", help="vit: VARIANT:HxWxC:pPATCH (VARIANT Ti|S|B|tiny)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                    help="vit: config.model.dtype (float16 with dynamic loss scaling)")
    ap.add_argument("--method", default="upgrad", help="mtl: a method of mtljax.optim.METHODS")
    ap.add_argument("--level", default="param", help="mtl: where per-task gradients are taken")
    ap.add_argument("--tasks", type=int, default=3, help="mtl: number of tasks")
    ap.add_argument("--batch", type=int, default=0, help="batch size (default 64 vit, 256 mtl)")
    ap.add_argument("--cpu-devices", type=int, default=1, help="data parallel over this many CPU devices")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--json", default="")
    add_host_allocator_flag(ap, default=None)  # vit: retain, mtl: system (as their configs run)
    ap.add_argument("--peer", action="store_true",
                    help="also profile the PyTorch eager step (vit) or the PyTorch/TorchJD step (mtl) of the same case")
    args = ap.parse_args(argv)
    if args.cpu_devices < 1:
        ap.error("--cpu-devices must be >= 1")
    if args.peer and args.model == "mtl" and args.method not in ("equal", "upgrad"):
        ap.error(f"--peer: the mtl step has a PyTorch/TorchJD peer for --method equal or upgrad, not {args.method!r}")
    if args.peer and args.dtype == "float16":
        ap.error("--peer: the PyTorch peer runs float32 or bfloat16 (autocast), not float16")
    if args.peer:
        try:
            import torch  # noqa: F401
        except ImportError:
            ap.error("--peer needs torch: run with .venv-bench/bin/python (benchmarks/requirements.txt)")
    apply_host_allocator(args.host_allocator or ("retain" if args.model == "vit" else "system"))
    if args.cpu_devices > 1:  # before JAX initialises its backend
        import jax
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    title, (compiled, run) = (vit_step if args.model == "vit" else mtl_step)(args)
    res = breakdown(compiled, run, steps=args.steps, warmup=args.warmup, top=args.top)
    print(f"command: python benchmarks/profile_step.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(report(title, res))
    peer = None
    if args.peer:
        if args.model == "vit":
            name, step = torch_vit_peer(args.case, args.batch or 64, bf16=args.dtype == "bfloat16")
        else:
            name, step = torch_mtl_peer(args.method, args.level, args.tasks, args.batch or 256)
        peer = {"name": name, **torch_breakdown(step, steps=args.steps, warmup=args.warmup, top=args.top)}
        print()
        print(side_by_side(res, peer))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"title": title, "args": vars(args), **res, "peer": peer}, f, indent=1)


if __name__ == "__main__":
    main()
