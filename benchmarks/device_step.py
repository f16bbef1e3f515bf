"""Train-step speed and MFU on an accelerator, in one run under a fixed wall-clock budget: the GPU
check of the ViT-B step, M³ViT-B and UPGrad, prepared so that a session lent a GPU runs one command.

What it measures, in this order (the most wanted first; each case is skipped, with the reason printed,
when the budget left is under a conservative estimate of its compile + timing):

1. ``vit_bf16`` — HPS ViT-B/16 on 224x224x3 images (196 tokens), 3 linear heads (``--classes``),
   bfloat16 compute with float32 parameters, Adam, equal weighting, batch ``--batch`` (256): the step of
   ``vit_case.mtljax_contender`` (``make_train_step`` + ``jit_train_step``, state donated);
2. ``m3vit_ragged``, ``m3vit_gather`` — M³ViT-B: the same ViT-B trunk with ``configs/m3vit.py``'s MoE
   settings (8 experts, top-2, expert width ``mlp_dim / 2``, an MoE MLP in every other block, one gate
   per task, so one backbone pass per task), ``config.model.moe.dispatch`` ``ragged`` (dropless,
   ``jax.lax.ragged_dot``) and ``gather`` (capacity factor 1.25), batch ``--moe-batch`` (``--batch``);
3. ``upgrad_param``, ``upgrad_rep`` — the HPS ViT-B step with ``as_optax(upgrad(), 3)`` first in the
   chain, per-task gradients at ``level='param'`` and ``'rep'`` (as ``mtl_step.py`` builds them), batch
   ``--mtl-batch`` (128);
4. ``vit_bf16_cudnn`` — case 1 with ``config.model.vit.attention_impl='cudnn'`` (GPUs only);
5. ``vit_f32`` — case 1 in float32 (JAX's default matmul precision; recorded).

Per case: compile seconds (``.lower().compile()``), the median of timed calls after a warm-up (each
call blocks until the new state is ready), examples/s, the FLOPs XLA counts for the compiled step
(``mtljax.cost.flops_of``), the analytic model FLOPs (``vit_case.analytic_flops``: 3 x the forward
matmuls; for M³ViT the active experts of every task's pass plus the gates; for UPGrad the plain step's
FLOPs, so its MFU shows what the extra backward work costs), the achieved TFLOP/s and the MFU = model
FLOP/s / peak, against two peaks: the device's own bf16 matmul rate measured first (an
``--peak-n``³ = 8192³ ``jnp.dot`` in bfloat16 on random data, best of 3 rounds of 10 calls) and the
vendor's dense bf16 figure for ``jax.devices()[0].device_kind`` (:data:`SPEC_BF16`; none for unknown
kinds and CPUs). And XLA's buffer assignment (``memory_stats``: temp and peak bytes) per case. XLA's
count for the ``ragged`` step is several times its model FLOPs (on the CPU 2.8x at the smoke sizes,
3.5x at ViT-B width: ``ragged_dot``'s cost analysis does not count routed rows only), so compare MoE
rows by examples/s and MFU, not by XLA TFLOP/s.

Results go to ``--out`` (default ``$OUT`` when set, else ``benchmarks/results/device``):
``device_step.json`` and ``device_step.md``, rewritten after every case, so a run stopped by its
timeout still leaves what it measured. A watchdog ends the process at ``--hard-stop-s`` (default the
budget + 90 s) even inside a compile. GPU memory: ``XLA_PYTHON_CLIENT_MEM_FRACTION`` defaults to 0.90
here (preallocation kept on, JAX's default, so the BFC allocator holds one pool; every case's buffers
are released before the next).

  .venv/bin/python benchmarks/device_step.py --smoke --out /tmp/devsmoke   # tiny sizes on a CPU, < 2 min
  .venv/bin/python benchmarks/device_step.py --cases vit_bf16 --budget-s 120

On the lent H200 (the ``run`` tool, ``carry: [".whl"]``, ``timeout_s: 480``). The device image lacks
one package of this script's imports, ml-collections (pure Python; absl-py and PyYAML, its needs, are
there), so ``.whl/`` (ignored through ``.git/info/exclude``) carries its wheel, made here with
``echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps --only-binary=:all:
--python-version 3.12 --implementation cp --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0``::

  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit; set -o pipefail; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv; PYTHONUNBUFFERED=1 python3 benchmarks/device_step.py --budget-s 360 --out $OUT 2>&1 | tee $OUT/log.txt

Then record the table of ``$OUT/device_step.md`` in BENCHMARKS.md with the device named.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # the budget counts from here, imports and JAX start-up included

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Callable  # noqa: E402

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.90")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from common import environment, memory_stats  # noqa: E402
from vit_case import Case, analytic_flops, make_tasks, mtljax_contender, numpy_batch  # noqa: E402

from mtljax.cost import flops_of  # noqa: E402
from mtljax.models import build_model, moe_layers  # noqa: E402
from mtljax.models.objective import objective  # noqa: E402
from mtljax.optim import as_optax, get_method  # noqa: E402
from mtljax.optim.loss_scale import parse_loss_scale  # noqa: E402
from mtljax.parallel.mesh import make_mesh  # noqa: E402
from mtljax.parallel.rules import DEFAULT_RULES, batch_sharding  # noqa: E402
from mtljax.trainer.state import create_state  # noqa: E402
from mtljax.trainer.step import jit_train_step, make_train_step  # noqa: E402

# Dense bf16 tensor-core peaks (no sparsity), vendor datasheets; keyed by a substring of device_kind.
# First match wins, so the more specific names come first. Unknown kinds: MFU against the measured peak only.
SPEC_BF16 = (
    ("H200 NVL", 835e12),
    ("H200", 989.4e12),   # H200 SXM: same tensor cores and clocks as the H100 SXM
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989.4e12),   # 'NVIDIA H100 80GB HBM3' is the SXM part
    ("A100", 312e12),
)

# Conservative wall seconds per case (setup + compile + timing) on an H200 at the full sizes, and on a
# 2-core CPU at the --smoke sizes; scaled by the slowest measured/estimated ratio seen so far.
ESTIMATE_S = {
    "vit_bf16": (75, 12), "m3vit_ragged": (130, 25), "m3vit_gather": (130, 25), "upgrad_param": (110, 20),
    "upgrad_rep": (100, 20), "vit_bf16_cudnn": (70, 12), "vit_f32": (80, 12),
}
ORDER = tuple(ESTIMATE_S)


# ------------------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class ViTCase(Case):
    """A :class:`vit_case.Case` whose model config may pick the attention implementation."""

    attention: str | None = None

    def model_config(self, dtype: str):
        cfg = super().model_config(dtype)
        cfg.vit.attention_impl = self.attention
        return cfg


@dataclass(frozen=True)
class M3ViTCase(Case):
    """M³ViT on this case's ViT trunk: configs/m3vit.py's ``model.moe`` with ``dispatch`` set."""

    dispatch: str = "gather"

    def moe_config(self):
        from moe import model_config  # benchmarks/moe.py reads configs/m3vit.py

        m = model_config("m3vit").model.moe
        m.dispatch = self.dispatch
        return m

    def model_config(self, dtype: str):
        cfg = super().model_config(dtype)
        cfg.name = "m3vit"
        cfg.moe = self.moe_config()
        return cfg


def m3vit_flops(case: M3ViTCase, batch: int, classes: list[int]) -> float:
    """3 x forward matmul FLOPs of M³ViT: one backbone pass per task, each MoE MLP counting its top-k
    experts (the tokens routed, not the empty capacity slots) and its gate; the heads once each."""
    d, m = case.dims(), case.moe_config()
    n, w = case.tokens, d["width"]
    expert_dim = m.expert_dim or max(1, d["mlp_dim"] // m.top_k)
    trunk = analytic_flops(case, batch, []) / 3  # the dense ViT forward without heads
    per_layer = 2 * batch * n * (2 * w * m.top_k * expert_dim - 2 * w * d["mlp_dim"] + w * m.num_experts)
    per_pass = trunk + len(moe_layers(m.every, d["depth"], m.layers)) * per_layer
    return 3.0 * (len(classes) * per_pass + 2 * batch * w * sum(classes))


def method_contender(case: Case, dtype: str, batch: int, classes: list[int], method: str, level: str):
    """The compiled HPS step with ``as_optax(get_method(method), T)`` first in the chain and per-task
    gradients at ``level`` (what ``mtl_step.jax_contenders`` times, on the ViT of ``case``)."""
    tasks = make_tasks(classes)
    model = build_model(case.model_config(dtype), tasks, case.shape)
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    b_shard = batch_sharding(mesh, DEFAULT_RULES)
    x, ys = numpy_batch(case, batch, classes)
    batch_tree = jax.device_put({
        "inputs": jnp.asarray(x),
        "targets": {t.name: jnp.asarray(y) for t, y in zip(tasks, ys)},
        "masks": {t.name: jnp.ones((batch,), jnp.float32) for t in tasks},
    }, b_shard)
    tx = optax.chain(as_optax(get_method(method), len(tasks)), optax.adam(1e-3))
    scale = parse_loss_scale("auto", dtype)
    with jax.set_mesh(mesh):
        state, shardings, _ = create_state(model, tx, case.shape, 0, mesh, DEFAULT_RULES, loss_scale=scale)
        step = make_train_step(objective(model, tasks), tx, level=level, loss_scale=scale)
        t0 = time.perf_counter()
        compiled = jit_train_step(step, mesh, shardings, b_shard).lower(state, batch_tree).compile()
        compile_s = time.perf_counter() - t0
    box = {"state": state, "metrics": None}

    def run():
        box["state"], box["metrics"] = compiled(box["state"], batch_tree)
        jax.block_until_ready((box["state"], box["metrics"]))

    info = {"compile_s": compile_s, "xla_flops": flops_of(compiled), "memory": memory_stats(compiled),
            "params": sum(int(p.size) for p in jax.tree.leaves(state.params))}
    return run, info, lambda: box["metrics"] is None or bool(box["metrics"]["finite"])


def build_case(name: str, a) -> tuple[str, int, Callable, dict, Callable, float]:
    """``(label, batch, run, info, finite, model_flops)`` of case ``name``: compiled and ready to time."""
    vit, shape = a.variant, a.shape
    if name.startswith("vit_"):
        case = ViTCase(vit, shape, a.patch, attention="cudnn" if name.endswith("cudnn") else None)
        dtype = "float32" if name == "vit_f32" else "bfloat16"
        c, _, _ = mtljax_contender(case, dtype, a.batch, a.classes)
        attn = ", cudnn attention" if case.attention else ""
        return (f"HPS {case.label} {dtype}{attn}", a.batch, c.run, c.info, c.info["finite"],
                analytic_flops(case, a.batch, a.classes))
    if name.startswith("m3vit_"):
        case = M3ViTCase(vit, shape, a.patch, dispatch=name.split("_", 1)[1])
        c, _, _ = mtljax_contender(case, "bfloat16", a.moe_batch, a.classes)
        m = case.moe_config()
        label = (f"M³ViT {case.label} bfloat16, {m.num_experts} experts top-{m.top_k}, {case.dispatch}"
                 + (f" cf{m.capacity_factor:g}" if case.dispatch != "ragged" else " (dropless)"))
        return label, a.moe_batch, c.run, c.info, c.info["finite"], m3vit_flops(case, a.moe_batch, a.classes)
    if name.startswith("upgrad_"):
        case, level = Case(vit, shape, a.patch), name.split("_", 1)[1]
        run, info, finite = method_contender(case, "bfloat16", a.mtl_batch, a.classes, "upgrad", level)
        return (f"HPS {case.label} bfloat16, UPGrad level={level}", a.mtl_batch, run, info, finite,
                analytic_flops(case, a.mtl_batch, a.classes))
    raise ValueError(f"unknown case {name!r}; choose from {list(ORDER)}")


# ------------------------------------------------------------------------------------------ timing
def time_calls(run, *, warmup: int, min_calls: int, max_calls: int, max_s: float) -> tuple[float, list[float]]:
    """First call's seconds and the seconds of each timed call: ``warmup`` untimed calls, then timed ones
    until ``max_calls`` or, past ``min_calls``, ``max_s`` seconds of timing."""
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        run()
    samples, t_end = [], time.perf_counter() + max_s
    while len(samples) < max_calls and (len(samples) < min_calls or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        run()
        samples.append(time.perf_counter() - t0)
    return first, samples


def matmul_peak(n: int, calls: int = 10, rounds: int = 3) -> dict:
    """The best of ``rounds`` rounds of ``calls`` back-to-back bf16 ``n x n x n`` products (2·n³ FLOPs each)."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (n, n), jnp.bfloat16)
    b = jax.random.normal(k2, (n, n), jnp.bfloat16)
    f = jax.jit(jnp.dot)
    for _ in range(3):
        f(a, b).block_until_ready()
    per_call = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        outs = [f(a, b) for _ in range(calls)]
        jax.block_until_ready(outs)
        per_call.append((time.perf_counter() - t0) / calls)
        del outs
    best = min(per_call)
    return {"n": n, "dtype": "bfloat16", "s_per_call": per_call, "flops_per_s": 2.0 * n ** 3 / best}


def spec_peak(kind: str) -> float | None:
    if jax.default_backend() == "cpu":
        return None
    return next((v for k, v in SPEC_BF16 if k.lower() in kind.lower()), None)


# ----------------------------------------------------------------------------------------- reports
def fmt(x, spec=".3g") -> str:
    return "–" if x is None else format(x, spec)


def markdown(res: dict) -> str:
    env, peak = res["env"], res.get("peak") or {}
    spec = res.get("spec_peak_flops_per_s")
    lines = [f"# device_step: {res['device_kind']} ({env['jax_backend']}), jax {env['jax']}", "",
             f"{env['date']}; command `{res['command']}`; budget {res['budget_s']:.0f} s, "
             f"{res['elapsed_s']:.0f} s used.", "",
             f"Peak: measured bf16 {peak.get('n', '?')}³ matmul {fmt(peak.get('flops_per_s', 0) / 1e12, '.4g')} "
             f"TFLOP/s; spec dense bf16 {f'{spec / 1e12:.1f} TFLOP/s' if spec else 'none for this device'}. "
             "MFU = model FLOP/s ÷ peak (model FLOPs: 3 × forward matmuls; UPGrad rows: the plain step's).", "",
             "| case | batch | compile s | ms/step | examples/s | XLA TFLOP/step | model TFLOP/step | "
             "XLA TFLOP/s | model TFLOP/s | MFU (measured peak) | MFU (spec peak) | temp GiB | peak GiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    gib = 2.0 ** 30
    for r in res["cases"]:
        if r["status"] != "ok":
            continue
        mem = r.get("memory") or {}
        lines.append(
            f"| {r['label']} | {r['batch']} | {r['compile_s']:.1f} | {r['ms_per_step']:.2f} | "
            f"{r['examples_per_s']:,.0f} | {fmt(r['xla_flops'] / 1e12)} | {fmt(r['model_flops'] / 1e12)} | "
            f"{fmt(r['xla_tflops_per_s'])} | {fmt(r['model_tflops_per_s'])} | {fmt(r['mfu_measured'], '.1%')} | "
            f"{fmt(r['mfu_spec'], '.1%')} | {fmt(mem.get('temp_size_in_bytes', 0) / gib, '.3g')} | "
            f"{fmt(mem.get('peak_memory_in_bytes', 0) / gib, '.3g')} |")
    other = [r for r in res["cases"] if r["status"] != "ok"]
    if other:
        lines += ["", "Not measured:"]
        lines += [f"- `{r['name']}`: {r['status']} — {r['reason']}" for r in other]
    if res.get("notes"):
        lines += ["", "Notes:"] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def write(res: dict, out: str) -> None:
    res["elapsed_s"] = time.perf_counter() - T_START
    os.makedirs(out, exist_ok=True)
    for name, text in (("device_step.json", json.dumps(res, indent=1, default=str)),
                       ("device_step.md", markdown(res))):
        tmp = os.path.join(out, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out, name))


# -------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny ViT (16x16x1 p4), batch 8, 256³ matmul: every code "
                                                         "path on a CPU in under 2 minutes")
    p.add_argument("--cases", default=",".join(ORDER), help="comma-separated, run in this order")
    p.add_argument("--budget-s", type=float, default=None, help="wall seconds for the whole script (360; smoke 150)")
    p.add_argument("--hard-stop-s", type=float, default=None, help="exit here even mid-compile (budget + 90)")
    p.add_argument("--batch", type=int, default=None, help="examples per step (256; smoke 8)")
    p.add_argument("--moe-batch", type=int, default=None, help="examples per M³ViT step (--batch; a multiple of "
                                                                 "moe.group_size = 4)")
    p.add_argument("--mtl-batch", type=int, default=None, help="examples per UPGrad step (128; smoke 8)")
    p.add_argument("--classes", default="10,10,19", help="classes of each task head (3 tasks)")
    p.add_argument("--vit", default=None, help="VARIANT:HxWxC:pPATCH (B:224x224x3:p16; smoke tiny:16x16x1:p4)")
    p.add_argument("--peak-n", type=int, default=None, help="bf16 matmul size for the measured peak (8192; smoke 256)")
    p.add_argument("--max-calls", type=int, default=30, help="timed calls per case at most")
    p.add_argument("--max-time-s", type=float, default=4.0, help="seconds of timed calls per case (at least 5 calls)")
    p.add_argument("--out", default=None, help="folder for device_step.json/.md ($OUT, else benchmarks/results/device)")
    a = p.parse_args(argv)
    s = a.smoke
    a.budget_s = a.budget_s or (150.0 if s else 360.0)
    a.hard_stop_s = a.hard_stop_s or a.budget_s + 90.0
    a.batch = a.batch or (8 if s else 256)
    a.moe_batch = a.moe_batch or a.batch
    a.mtl_batch = a.mtl_batch or (8 if s else 128)
    a.classes = [int(c) for c in a.classes.split(",")]
    vit = Case.parse(a.vit or ("tiny:16x16x1:p4" if s else "B:224x224x3:p16"))
    a.variant, a.shape, a.patch = vit.variant, vit.shape, vit.patch
    a.peak_n = a.peak_n or (256 if s else 8192)
    a.out = a.out or os.environ.get("OUT") or os.path.join(REPO, "benchmarks", "results", "device")
    a.case_list = [c for c in a.cases.split(",") if c]
    bad = [c for c in a.case_list if c not in ESTIMATE_S]
    if bad:
        p.error(f"--cases: unknown {bad}; choose from {list(ORDER)}")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    dev = jax.devices()[0]
    kind, backend = dev.device_kind, jax.default_backend()
    env = {**environment(("jaxlib", "flax", "optax")), "device_kind": kind, "devices": str(jax.devices()),
           "xla_python_client_mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
           "default_matmul_precision": str(getattr(jax.config, "jax_default_matmul_precision", None))}
    spec = spec_peak(kind)
    cmd = "python benchmarks/device_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
    res = {"device_kind": kind, "env": env, "command": cmd.strip(), "budget_s": a.budget_s, "smoke": a.smoke,
           "vit": Case(a.variant, a.shape, a.patch).spec, "classes": a.classes, "spec_peak_flops_per_s": spec,
           "peak": None, "cases": [], "notes": []}
    print(f"# device_step on {kind} ({backend}), jax {jax.__version__}; budget {a.budget_s:.0f} s, "
          f"hard stop {a.hard_stop_s:.0f} s; out {a.out}", flush=True)

    def hard_stop():
        print(f"\nhard stop at {time.perf_counter() - T_START:.0f} s (--hard-stop-s {a.hard_stop_s:.0f})", flush=True)
        try:
            res["notes"].append(f"hard stop at {a.hard_stop_s:.0f} s, in case {res.get('running')!r} (not recorded)")
            write(res, a.out)
        finally:
            os._exit(124)

    watchdog = threading.Timer(max(1.0, a.hard_stop_s - (time.perf_counter() - T_START)), hard_stop)
    watchdog.daemon = True
    watchdog.start()

    t0 = time.perf_counter()
    res["peak"] = peak = matmul_peak(a.peak_n)
    measured = peak["flops_per_s"]
    print(f"peak: bf16 {a.peak_n}³ matmul {measured / 1e12:.2f} TFLOP/s (measured, {time.perf_counter() - t0:.1f} s); "
          f"spec {'%.1f TFLOP/s' % (spec / 1e12) if spec else 'none for this device'}", flush=True)
    write(res, a.out)

    ratios, scale = [], 1.0  # estimates x the slowest measured / estimated case time so far (at least 0.6)
    col = 1 if a.smoke else 0
    for name in a.case_list:
        left = a.budget_s - (time.perf_counter() - T_START)
        est = ESTIMATE_S[name][col] * scale
        row = {"name": name, "estimate_s": est}
        if name == "vit_bf16_cudnn" and backend != "gpu":
            row.update(status="skipped", reason=f"cudnn attention needs a GPU (backend {backend})")
        elif est > left:
            row.update(status="skipped", reason=f"{left:.0f} s of budget left < estimate {est:.0f} s")
        if "status" in row:
            print(f"\n== {name}: {row['status']}: {row['reason']}", flush=True)
            res["cases"].append(row)
            write(res, a.out)
            continue
        print(f"\n== {name} (estimate {est:.0f} s, {left:.0f} s left)", flush=True)
        res["running"] = name
        t_case = time.perf_counter()
        try:
            label, batch, run, info, finite, model_flops = build_case(name, a)
            setup_s = time.perf_counter() - t_case
            print(f"   {label}: compiled in {info['compile_s']:.1f} s (setup {setup_s:.1f} s), "
                  f"{info['params']:,} params", flush=True)
            first, samples = time_calls(run, warmup=1 if a.smoke else 3, min_calls=5, max_calls=a.max_calls,
                                        max_s=a.max_time_s)
            t = statistics.median(samples)
            xla, model = info["xla_flops"], model_flops
            row.update(
                status="ok", label=label, batch=batch, compile_s=info["compile_s"], setup_s=setup_s, first_call_s=first,
                params=info["params"], ms_per_step=1e3 * t, ms_min=1e3 * min(samples), ms_max=1e3 * max(samples),
                calls=len(samples), samples_ms=[1e3 * s for s in samples], examples_per_s=batch / t,
                xla_flops=xla, model_flops=model, xla_tflops_per_s=xla / t / 1e12, model_tflops_per_s=model / t / 1e12,
                mfu_measured=model / t / measured, mfu_spec=model / t / spec if spec else None,
                memory=info["memory"], finite=bool(finite()))
            print(f"   {1e3 * t:.2f} ms/step ({len(samples)} calls, {1e3 * min(samples):.2f}–{1e3 * max(samples):.2f}), "
                  f"{batch / t:,.1f} examples/s, XLA {xla / t / 1e12:.3g} TFLOP/s, model {model / t / 1e12:.3g} TFLOP/s, "
                  f"MFU {row['mfu_measured']:.1%} of measured" + (f", {row['mfu_spec']:.1%} of spec" if spec else "")
                  + ("" if row["finite"] else "; last step NOT finite"), flush=True)
        except Exception as e:  # noqa: BLE001 - an out-of-memory or unsupported case is reported, the rest runs
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            row.update(status="error", reason=f"{type(e).__name__}: {msg}")
            print(f"   error: {row['reason']}", flush=True)
        run = finite = info = None  # the case's state and executable go before the next case starts
        row["wall_s"] = time.perf_counter() - t_case
        if row["status"] == "ok":
            ratios.append(row["wall_s"] / ESTIMATE_S[name][col])
            scale = max(0.6, max(ratios))
        res["cases"].append(row)
        res["running"] = None
        gc.collect()
        jax.clear_caches()
        dev_mem = dev.memory_stats() or {}
        if dev_mem:
            row["device_bytes_in_use_after"] = dev_mem.get("bytes_in_use")
            row["device_peak_bytes_so_far"] = dev_mem.get("peak_bytes_in_use")
        write(res, a.out)

    watchdog.cancel()
    write(res, a.out)
    print("\n" + markdown(res), flush=True)
    print(f"wrote {os.path.join(a.out, 'device_step.json')} and device_step.md; {res['elapsed_s']:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
