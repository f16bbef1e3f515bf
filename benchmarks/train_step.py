"""Train-step throughput of mtljax's HPS ViT against the same model as a PyTorch eager train step,
with achieved FLOP/s as a fraction of this machine's measured matmul peak, mixed precision, and XLA
CPU options.

What runs (everything in one process and interleaved, except the flag sweep):

* **mtljax**: the real train step — ``build_model`` (HPS, ``backbone='vit'``, ``pool='gap'``, linear
  heads), ``make_train_step`` (the chain ``as_optax(equal(), T)``, Adam 1e-3) + ``jit_train_step`` on a 1-device mesh,
  compiled once with ``.lower(...).compile()`` and called with the state donated, as the trainer does;
  ``config.model.dtype`` ``float32`` and ``bfloat16`` (parameters and Adam state float32 in both).
* **PyTorch**: ``benchmarks/torch_vit_step.py`` — the same network written in eager PyTorch (fused
  qkv, ``scaled_dot_product_attention``, tanh-GELU like Flax's ``nn.gelu`` default, LayerNorm eps 1e-6)
  with summed cross-entropy losses and ``torch.optim.Adam`` (the LibMTL shape), f32 and
  ``torch.autocast('cpu', bfloat16)``. Before timing, the benchmark asserts that both models have the
  same number of parameters, copies mtljax's parameters into the torch model and checks that the
  per-task logits agree (heads set to random values for the check, since mtljax initialises them at
  zero); both steps then start from identical parameters.
* **matmul peak**: square ``n × n`` matmuls (default n = 2048) in XLA and in torch, f32 and bf16,
  timed in the same rounds as the steps (a rate is from the best round median). The machine's f32
  peak, for each case, is the fastest f32 rate measured in its rounds (XLA, torch on all cores, torch
  on one thread); a matmul whose first call takes longer than ``--peak-max-s`` is measured at n/2
  (then n/4 ...) and the size used is reported (torch's bf16 matmul on a CPU without AVX-512-BF16 is
  that slow).
* **FLOPs** per step: XLA's ``compiled.cost_analysis()['flops']`` of mtljax's f32 step, checked
  against an analytic count (3 × forward matmul FLOPs: ``2·B·N·(matmul params)`` plus attention's
  ``4·B·N²·D`` per layer); achieved FLOP/s = those FLOPs / step time, for both frameworks (they do the
  same arithmetic).

Timing (as in ``mtl_step.py``): per case, all contenders run once (compile, allocation); then
``--rounds`` rounds, in rotating and alternating order, in each of which every contender runs one
untimed call (only if its first call took < 1 s) and ``--per-round`` timed calls. A time is the
median of all timed calls; a ratio is the median over rounds of the ratio of round medians. A step
whose first call takes longer than ``--max-step-s`` is not put in the rounds; its first-call time is
reported as such (marked ``*``). A torch step whose time, predicted from the GFLOP/s it reached on an
earlier case, exceeds ``--max-step-s`` is skipped with a note (torch bf16 on AVX2-only CPUs).

**XLA flag sweep** (``--flags``; ``--sweep-only`` runs it alone): XLA reads ``XLA_FLAGS`` once, when
JAX initialises, so each setting runs in its own subprocess (``--serve``) that compiles the steps of one
case (``--flag-case``, f32 and bf16) and the XLA matmuls, then waits for orders. One default-flags
subprocess lives through the whole sweep; each setting's subprocess alternates with it ``--flag-reps``
times (each time: one untimed and ``--worker-calls`` timed calls of every contender, the other process
idle). A setting's speed-up is the median over alternations of (default time ÷ setting time). The
pseudo-flag ``--cpus=0`` pins the subprocess to one core with ``taskset`` (XLA sizes its thread pool
by the cores it may use): XLA's counterpart of ``torch.set_num_threads(1)``. Torch thread counts are
timed in-process instead (``--torch-threads``, default 1 besides the default of all cores), since
``torch.set_num_threads`` works at run time.

  .venv-bench/bin/python benchmarks/train_step.py --quick        # tiny ViT, ~1-2 min on a busy 2-core VM
  .venv-bench/bin/python benchmarks/train_step.py                # Ti/S x 16x16x1, 32x32x3, then the sweep

Environment: ``python3 -m venv .venv-bench && .venv-bench/bin/pip install -e . &&
.venv-bench/bin/pip install -r benchmarks/requirements.txt`` (torch's CPU wheel lives only there; it is
never an mtljax dependency). ``--no-torch`` runs the mtljax side alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtljax.config import base_config
from mtljax.cost import flops_of
from mtljax.models import build_model, vit_dims
from mtljax.parallel.mesh import make_mesh
from mtljax.parallel.rules import DEFAULT_RULES, batch_sharding
from mtljax.tasks import Task
from mtljax.models.objective import objective
from mtljax.optim import as_optax, equal
from mtljax.trainer.state import create_state
from mtljax.trainer.step import jit_train_step, make_train_step

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import environment, measure  # noqa: E402

TINY = dict(width=64, depth=2, num_heads=4, mlp_dim=128)  # --quick
DEFAULT_CASES = "Ti:16x16x1:p4,S:16x16x1:p4,Ti:32x32x3:p4,S:32x32x3:p4"
DEFAULT_FLAGS = (
    "ynn_off=--xla_cpu_experimental_ynn_fusion_type=;"
    "xnnpack=--xla_cpu_use_xnnpack=true;"
    "onednn=--xla_cpu_use_onednn=true;"
    "fast_math=--xla_cpu_enable_fast_math=true;"
    "eigen_1thread=--xla_cpu_multi_thread_eigen=false;"
    "concurrency_sched=--xla_cpu_enable_concurrency_optimized_scheduler=true;"
    "one_core=--cpus=0"
)


# ------------------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    variant: str  # Ti | S | B | L | tiny
    shape: tuple[int, int, int]
    patch: int

    @classmethod
    def parse(cls, spec: str) -> "Case":
        """``'S:32x32x3:p4'`` -> ViT-S on 32x32x3 images, 4x4 patches."""
        try:
            variant, shape, patch = spec.split(":")
            h, w, c = (int(s) for s in shape.split("x"))
            return cls(variant, (h, w, c), int(patch.lstrip("p")))
        except ValueError as e:
            raise ValueError(f"case {spec!r}: expected VARIANT:HxWxC:pPATCH, e.g. S:32x32x3:p4") from e

    @property
    def spec(self) -> str:
        return f"{self.variant}:{'x'.join(map(str, self.shape))}:p{self.patch}"

    @property
    def tokens(self) -> int:
        return (self.shape[0] // self.patch) * (self.shape[1] // self.patch)

    @property
    def label(self) -> str:
        return f"ViT-{self.variant} {'x'.join(map(str, self.shape))} p{self.patch} ({self.tokens} tok)"

    def model_config(self, dtype: str):
        cfg = base_config().model
        cfg.backbone = "vit"
        cfg.dtype = dtype
        cfg.head_hidden = 0
        cfg.vit.pool = "gap"
        cfg.vit.patch_size = self.patch
        if self.variant == "tiny":
            cfg.vit.variant = "custom"
            for k, v in TINY.items():
                cfg.vit[k] = v
        else:
            cfg.vit.variant = self.variant
        return cfg

    def dims(self) -> dict:
        return vit_dims(self.model_config("float32").vit)


def make_tasks(classes: list[int]) -> list[Task]:
    return [Task(f"t{i}", "multiclass", num_classes=k) for i, k in enumerate(classes)]


def numpy_batch(case: Case, batch: int, classes: list[int], seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((batch, *case.shape), dtype=np.float32)
    ys = [rng.integers(0, k, batch).astype(np.int32) for k in classes]
    return x, ys


def analytic_flops(case: Case, batch: int, classes: list[int]) -> float:
    """3 x forward FLOPs of the matmuls (backward = 2 x forward): dense layers and attention."""
    d = case.dims()
    w, depth, m = d["width"], d["depth"], d["mlp_dim"]
    n = case.tokens
    pix = case.patch ** 2 * case.shape[2]
    per_token = pix * w + depth * (4 * w * w + 2 * w * m)  # multiply-adds per token in Dense layers
    fwd = 2 * batch * n * per_token + depth * 4 * batch * n * n * w + 2 * batch * w * sum(classes)
    return 3.0 * fwd


# ---------------------------------------------------------------------------------------- contenders
@dataclass
class Contender:
    name: str
    framework: str  # mtljax | torch | xla-matmul | torch-matmul
    dtype: str
    run: Callable[[], None]
    flops: float = float("nan")  # per call
    info: dict = field(default_factory=dict)
    first_s: float = float("nan")
    samples: list = field(default_factory=list)  # per round: list of seconds
    excluded: bool = False  # first call slower than --max-step-s: not timed in rounds


def memory_stats(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return {}
    if m is None:
        return {}
    keys = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "peak_memory_in_bytes")
    return {k: int(getattr(m, k, 0) or 0) for k in keys}


def mtljax_contender(case: Case, dtype: str, batch: int, classes: list[int], seed: int = 0):
    """The compiled mtljax train step and its initial parameters (numpy, for the torch model)."""
    tasks = make_tasks(classes)
    model = build_model(case.model_config(dtype), tasks, case.shape)
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    b_shard = batch_sharding(mesh, DEFAULT_RULES)
    x, ys = numpy_batch(case, batch, classes, seed)
    batch_tree = jax.device_put({
        "inputs": jnp.asarray(x),
        "targets": {t.name: jnp.asarray(y) for t, y in zip(tasks, ys)},
        "masks": {t.name: jnp.ones((batch,), jnp.float32) for t in tasks},
    }, b_shard)
    tx = optax.chain(as_optax(equal(), len(tasks)), optax.adam(1e-3))
    with jax.set_mesh(mesh):
        state, shardings, _ = create_state(model, tx, case.shape, seed, mesh, DEFAULT_RULES)
        jitted = jit_train_step(make_train_step(objective(model, tasks), tx), mesh, shardings, b_shard)
        t0 = time.perf_counter()
        compiled = jitted.lower(state, batch_tree).compile()
        compile_s = time.perf_counter() - t0
    params_np = jax.tree.map(np.asarray, state.params)  # before the state is donated
    n_params = sum(int(np.size(p)) for p in jax.tree.leaves(params_np))
    box = {"state": state, "metrics": None}

    def run(box=box):
        box["state"], box["metrics"] = compiled(box["state"], batch_tree)
        jax.block_until_ready((box["state"], box["metrics"]))

    info = {"compile_s": compile_s, "xla_flops": flops_of(compiled), "memory": memory_stats(compiled),
            "params": n_params}
    c = Contender(f"mtljax/{dtype}", "mtljax", dtype, run, info=info)
    c.info["finite"] = lambda box=box: box["metrics"] is None or bool(box["metrics"]["finite"])
    return c, model, params_np


def equivalence_check(case: Case, model, params_np, torch_vit, classes, batch: int) -> dict:
    """Same parameter count, and the same logits when both models hold the same (random-head) weights."""
    import torch

    tasks = make_tasks(classes)
    tmodel = torch_vit.build(case.dims(), case.shape, case.patch, classes)
    n_jax = sum(int(np.size(p)) for p in jax.tree.leaves(params_np))
    n_torch = torch_vit.param_count(tmodel)
    if n_jax != n_torch:
        raise AssertionError(f"{case.label}: mtljax has {n_jax:,} parameters, the torch model {n_torch:,}")
    rng = np.random.default_rng(1)
    check = {k: v for k, v in params_np.items()}
    for t in tasks:  # mtljax heads start at zero, which would make any backbone look equal
        h = params_np[f"heads_{t.name}"]["out"]
        check[f"heads_{t.name}"] = {"out": {"kernel": rng.normal(0, 0.5, h["kernel"].shape).astype(np.float32),
                                            "bias": rng.normal(0, 0.5, h["bias"].shape).astype(np.float32)}}
    x, _ = numpy_batch(case, min(batch, 8), classes, seed=2)
    out_jax, _ = model.apply({"params": check}, jnp.asarray(x))
    torch_vit.load_flax_params(tmodel, check, [t.name for t in tasks])
    tmodel.eval()
    with torch.no_grad():
        out_torch = tmodel(torch.from_numpy(x))
    diff = max(float(np.max(np.abs(np.asarray(out_jax[t.name]) - o.numpy()))) for t, o in zip(tasks, out_torch))
    scale = max(float(np.max(np.abs(np.asarray(out_jax[t.name])))) for t in tasks)
    if not diff <= 1e-3 * max(scale, 1.0):
        raise AssertionError(f"{case.label}: mtljax and torch logits differ by {diff:.3g} (scale {scale:.3g})")
    return {"params": n_jax, "max_abs_logit_diff": diff, "logit_scale": scale}


def torch_contender(case: Case, bf16: bool, params_np, torch_vit, batch: int, classes: list[int],
                    threads: int | None = None):
    """The eager torch step; ``threads`` (default: all cores) is set before every call."""
    import torch

    tasks = make_tasks(classes)
    tmodel = torch_vit.build(case.dims(), case.shape, case.patch, classes)
    torch_vit.load_flax_params(tmodel, params_np, [t.name for t in tasks])
    x, ys = numpy_batch(case, batch, classes)
    step = torch_vit.make_step(tmodel, x, ys, bf16=bf16)
    dtype = "bfloat16" if bf16 else "float32"
    nthreads = threads or os.cpu_count()
    box = {"loss": None}

    def run():
        if torch.get_num_threads() != nthreads:
            torch.set_num_threads(nthreads)
        box["loss"] = step()

    name = f"torch/{dtype}" + (f"/{threads}t" if threads else "")
    c = Contender(name, "torch", dtype, run, info={"threads": nthreads})
    c.info["finite"] = lambda: box["loss"] is None or bool(np.isfinite(float(box["loss"])))
    return c


def shrink_to(first_call: Callable[[int], float], n: int, max_s: float) -> tuple[int, float]:
    """Largest n / 2^k (>= 256) whose first timed call takes <= max_s seconds."""
    while True:
        t = first_call(n)
        if t <= max_s or n <= 256:
            return n, t
        n //= 2


def xla_matmul(dtype: str, n: int, max_s: float) -> Contender:
    dt = jnp.dtype(dtype)
    state = {}
    f = jax.jit(lambda a, b: a @ b)

    def setup(m):
        key = jax.random.PRNGKey(0)
        a = jax.random.normal(key, (m, m), jnp.float32).astype(dt)
        b = jax.random.normal(jax.random.fold_in(key, 1), (m, m), jnp.float32).astype(dt)
        f(a, b).block_until_ready()  # compile
        state.update(a=a, b=b)
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        return time.perf_counter() - t0

    n, t = shrink_to(setup, n, max_s)

    def run():
        f(state["a"], state["b"]).block_until_ready()

    return Contender(f"xla-matmul/{dtype}", "xla-matmul", dtype, run, flops=2.0 * n ** 3, info={"n": n})


def torch_matmul(dtype: str, n: int, max_s: float, threads: int | None = None) -> Contender:
    import torch

    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    nthreads = threads or os.cpu_count()
    state = {}

    def setup(m):
        torch.set_num_threads(nthreads)
        g = torch.Generator().manual_seed(0)
        a = torch.randn(m, m, generator=g).to(dt)
        b = torch.randn(m, m, generator=g).to(dt)
        torch.mm(a, b)
        state.update(a=a, b=b)
        t0 = time.perf_counter()
        torch.mm(a, b)
        return time.perf_counter() - t0

    n, t = shrink_to(setup, n, max_s)

    def run():
        if torch.get_num_threads() != nthreads:
            torch.set_num_threads(nthreads)
        torch.mm(state["a"], state["b"])

    name = f"torch-matmul/{dtype}" + (f"/{threads}t" if threads else "")
    return Contender(name, "torch-matmul", dtype, run, flops=2.0 * n ** 3, info={"n": n, "threads": nthreads})


# ------------------------------------------------------------------------------------------ timing
def median_time(c: Contender) -> float:
    if c.excluded or not c.samples:
        return c.first_s
    return statistics.median(t for ts in c.samples for t in ts)


def speed_ratio(a: Contender, b: Contender) -> tuple[float, float, float]:
    """Speed of a relative to b (time of b / time of a): median over rounds, min, max."""
    if a.excluded or b.excluded:
        r = b.first_s / a.first_s
        return r, r, r
    rs = [statistics.median(y) / statistics.median(x) for x, y in zip(a.samples, b.samples)]
    return statistics.median(rs), min(rs), max(rs)


def peak_rate(c: Contender) -> float:
    """Matmul GFLOP/s: best round median (the peak is what the machine can do, load permitting)."""
    if c.excluded or not c.samples:
        return c.flops / c.first_s / 1e9
    return c.flops / min(statistics.median(ts) for ts in c.samples) / 1e9


# ----------------------------------------------------------------------------------------- reports
def fmt_ratio(r) -> str:
    return f"{r[0]:.2f} ({r[1]:.2f}–{r[2]:.2f})"


def case_rows(case: Case, cs: list[Contender], batch: int, analytic: float, equiv: dict | None) -> dict:
    by = {c.name: c for c in cs}
    peaks = {c.name: {"gflops": peak_rate(c), "n": c.info.get("n")} for c in cs if "matmul" in c.framework}
    f32_peak = max((v["gflops"] for k, v in peaks.items() if "/float32" in k), default=float("nan"))
    flops = by["mtljax/float32"].info["xla_flops"] if "mtljax/float32" in by else float("nan")
    rows = []
    for c in cs:
        if c.framework not in ("mtljax", "torch"):
            continue
        sec = median_time(c)
        row = {"name": c.name, "framework": c.framework, "dtype": c.dtype, "threads": c.info.get("threads"),
               "ms": 1e3 * sec, "examples_per_s": batch / sec, "gflops": flops / sec / 1e9,
               "frac_f32_peak": flops / sec / 1e9 / f32_peak, "first_call_only": c.excluded}
        mine = by.get(f"mtljax/{c.dtype}")
        if c.framework == "torch" and mine is not None:
            row["mtljax_speed_over_this"] = speed_ratio(mine, c)
        if c.framework == "mtljax":
            row.update(xla_flops=c.info["xla_flops"], compile_s=c.info["compile_s"],
                       temp_mib=c.info["memory"].get("temp_size_in_bytes", 0) / 2 ** 20)
        rows.append(row)
    bf16 = {}
    for fw in ("mtljax", "torch"):
        a, b = by.get(f"{fw}/bfloat16"), by.get(f"{fw}/float32")
        if a is not None and b is not None:
            bf16[fw] = speed_ratio(a, b)
    return {"case": case.spec, "label": case.label, "tokens": case.tokens, "batch": batch, "rows": rows,
            "bf16_speedup": bf16, "peaks": peaks, "f32_peak_gflops": f32_peak, "xla_flops": flops,
            "analytic_flops": analytic, "equivalence": equiv,
            "samples_ms": {c.name: [[1e3 * s for s in ts] for ts in c.samples] for c in cs},
            "first_call_ms": {c.name: 1e3 * c.first_s for c in cs}}


def step_label(row: dict) -> str:
    if row["framework"] == "mtljax":
        return "mtljax (XLA)"
    return f"torch eager, {row['threads']} thread{'s' if row['threads'] != 1 else ''}"


def step_table(results: list[dict]) -> str:
    lines = ["| model (input, patch, tokens) | dtype | step | ms/step | examples/s | GFLOP/s (% of f32 matmul peak) | "
             "mtljax speed ÷ this (min–max over rounds) |",
             "|---|---|---|---:|---:|---:|---:|"]
    for res in results:
        for dtype in ("float32", "bfloat16"):
            for row in (r for r in res["rows"] if r["dtype"] == dtype):
                star = "*" if row["first_call_only"] else ""
                sp = fmt_ratio(row["mtljax_speed_over_this"]) if "mtljax_speed_over_this" in row else "–"
                lines.append(f"| {res['label']} | {dtype} | {step_label(row)} | {row['ms']:.0f}{star} | "
                             f"{row['examples_per_s']:.1f}{star} | {row['gflops']:.0f} "
                             f"({100 * row['frac_f32_peak']:.0f} %){star} | {sp} |")
    return "\n".join(lines)


def flops_table(results: list[dict]) -> str:
    lines = ["| model | params | XLA GFLOP/step (cost analysis) | analytic GFLOP/step | XLA ÷ analytic | "
             "bf16 step GFLOP (XLA) | temp MiB f32 / bf16 | compile s f32 / bf16 | max logit diff vs torch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for res in results:
        by = {r["name"]: r for r in res["rows"]}
        f32, b16 = by.get("mtljax/float32"), by.get("mtljax/bfloat16")
        eq = res["equivalence"] or {}
        params = eq.get("params")
        lines.append("| " + " | ".join([
            res["label"],
            f"{params:,}" if params else "–",
            f"{res['xla_flops'] / 1e9:.1f}",
            f"{res['analytic_flops'] / 1e9:.1f}",
            f"{res['xla_flops'] / res['analytic_flops']:.3f}",
            f"{b16['xla_flops'] / 1e9:.1f}" if b16 else "–",
            (f"{f32['temp_mib']:.0f}" if f32 else "–") + " / " + (f"{b16['temp_mib']:.0f}" if b16 else "–"),
            (f"{f32['compile_s']:.0f}" if f32 else "–") + " / " + (f"{b16['compile_s']:.0f}" if b16 else "–"),
            f"{eq['max_abs_logit_diff']:.1e}" if "max_abs_logit_diff" in eq else "–",
        ]) + " |")
    return "\n".join(lines)


def bf16_table(results: list[dict]) -> str:
    lines = ["| model | mtljax bf16 speed ÷ f32 (min–max) | torch bf16 speed ÷ f32 (min–max) |", "|---|---:|---:|"]
    for res in results:
        b = res["bf16_speedup"]
        lines.append(f"| {res['label']} | {fmt_ratio(b['mtljax']) if 'mtljax' in b else '–'} | "
                     f"{fmt_ratio(b['torch']) if 'torch' in b else '–'} |")
    return "\n".join(lines)


def peak_table(results: list[dict]) -> str:
    names = ["xla-matmul/float32", "xla-matmul/bfloat16", "torch-matmul/float32", "torch-matmul/float32/1t",
             "torch-matmul/bfloat16"]
    lines = ["| measured during | " + " | ".join(f"{n} (n)" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for res in results:
        cells = []
        for n in names:
            p = res["peaks"].get(n)
            cells.append(f"{p['gflops']:.0f} ({p['n']})" if p else "–")
        lines.append(f"| {res['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ flag sweep
def parse_settings(spec: str) -> list[tuple[str, str]]:
    out = []
    for item in (s.strip() for s in spec.split(";")):
        if not item:
            continue
        name, _, flags = item.partition("=")
        out.append((name.strip(), flags.strip()))
    return out


def serve(args) -> None:
    """A sweep worker: compile one case under this process's ``XLA_FLAGS``, then answer ``run K`` lines on
    stdin with the times of K calls of every contender (``TIMES {json}`` on stdout) until ``quit``."""
    case = Case.parse(args.flag_case)
    classes = [int(s) for s in args.classes.split(",")]
    cs = [mtljax_contender(case, d, args.batch, classes)[0] for d in args.dtypes.split(",")]
    cs += [xla_matmul(d, args.peak_n, args.peak_max_s) for d in ("float32", "bfloat16")]
    for c in cs:
        c.run()
    info = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "cpus": sorted(os.sched_getaffinity(0)),
            "compile_s": {c.name: c.info["compile_s"] for c in cs if "compile_s" in c.info},
            "matmul_n": {c.name: c.info["n"] for c in cs if "n" in c.info},
            "flops": {c.name: c.flops for c in cs if "matmul" in c.framework}}
    print("READY " + json.dumps(info), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        k = int(cmd[1])
        times = {}
        for c in cs:
            c.run()  # untimed: this process was idle while the other one ran
            ts = []
            for _ in range(k):
                t0 = time.perf_counter()
                c.run()
                ts.append(time.perf_counter() - t0)
            times[c.name] = ts
        print("TIMES " + json.dumps(times), flush=True)


class Worker:
    """A ``serve`` subprocess for one setting. ``--cpus=LIST`` in ``flags`` is not an XLA flag: the
    process is pinned to those cores with ``taskset`` (XLA sizes its thread pool by the usable cores)."""

    def __init__(self, args, name: str, flags: str):
        self.name, self.flags = name, flags
        words = flags.split()
        cpus = [w.split("=", 1)[1] for w in words if w.startswith("--cpus=")]
        env = dict(os.environ)
        env["XLA_FLAGS"] = " ".join(w for w in words if not w.startswith("--cpus="))
        cmd = (["taskset", "-c", cpus[-1]] if cpus else []) + [
            sys.executable, os.path.abspath(__file__), "--serve", f"--flag-case={args.flag_case}",
            f"--dtypes={args.flag_dtypes}", f"--batch={args.batch}", f"--classes={args.classes}",
            f"--peak-n={args.peak_n}", f"--peak-max-s={args.peak_max_s}"]
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a pipe could fill up and block the worker
        self.p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.stderr, text=True, bufsize=1)
        self.info = self._expect("READY ")

    def _expect(self, tag: str):
        for line in self.p.stdout:
            if line.startswith(tag):
                return json.loads(line[len(tag):])
        self.p.wait()
        self.stderr.seek(0)
        err = [ln for ln in self.stderr.read().strip().splitlines() if ln.strip()]
        raise RuntimeError(f"exit {self.p.returncode}: {(err or ['no output'])[-1][:300]}")

    def run(self, k: int) -> dict:
        self.p.stdin.write(f"run {k}\n")
        self.p.stdin.flush()
        return self._expect("TIMES ")

    def close(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            self.p.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.p.kill()
        self.stderr.close()


def flag_sweep(args, log=print) -> dict:
    """Each setting's worker alternates with one long-lived default worker, ``--flag-reps`` times."""
    settings = parse_settings(args.flags)
    t0 = time.perf_counter()
    base = Worker(args, "default", "")
    log(f"    default worker ready in {time.perf_counter() - t0:.0f} s", flush=True)
    out = {"default_info": base.info, "settings": []}
    try:
        for name, flags in settings:
            t0 = time.perf_counter()
            entry = {"name": name, "xla_flags": flags, "rounds": []}
            out["settings"].append(entry)
            try:
                w = Worker(args, name, flags)
            except RuntimeError as e:
                entry["error"] = str(e)
                log(f"    {name:<18} failed: {e}", flush=True)
                continue
            entry["info"] = w.info
            try:
                for r in range(args.flag_reps):
                    pair = (base, w) if r % 2 == 0 else (w, base)
                    res = {}
                    for x in pair:
                        time.sleep(args.pause)
                        res[x.name if x is w else "default"] = x.run(args.worker_calls)
                    entry["rounds"].append(res)
            finally:
                w.close()
            log(f"    {name:<18} {time.perf_counter() - t0:5.0f} s  " + sweep_brief(entry), flush=True)
    finally:
        base.close()
    return out


def sweep_ratios(entry: dict, key: str) -> list[float]:
    """Per round: (default's median time) / (setting's median time) — the setting's speed-up."""
    out = []
    for res in entry["rounds"]:
        mine = res.get(entry["name"], {}).get(key)
        ref = res.get("default", {}).get(key)
        if mine and ref:
            out.append(statistics.median(ref) / statistics.median(mine))
    return out


def sweep_brief(entry: dict) -> str:
    parts = []
    for key in entry["rounds"][0].get("default", {}) if entry["rounds"] else []:
        rs = sweep_ratios(entry, key)
        if rs:
            parts.append(f"{key} x{statistics.median(rs):.2f}")
    return ", ".join(parts)


def sweep_table(sweep: dict, dtypes: list[str]) -> str:
    head = ["setting", "XLA_FLAGS"]
    for d in dtypes:
        head += [f"step ms {d} (default → setting)", f"speed-up {d} (min–max)"]
    head += ["matmul f32 speed-up", "matmul bf16 speed-up", "compile s (default → setting)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    dcomp = sweep["default_info"]["compile_s"]
    for e in sweep["settings"]:
        if "error" in e:
            lines.append(f"| {e['name']} | `{e['xla_flags']}` | failed: {e['error']} |")
            continue
        cells = [e["name"], f"`{e['xla_flags']}`"]
        for d in dtypes:
            key = f"mtljax/{d}"
            mine = [t for res in e["rounds"] for t in res[e["name"]].get(key, [])]
            ref = [t for res in e["rounds"] for t in res["default"].get(key, [])]
            rs = sweep_ratios(e, key)
            cells.append(f"{1e3 * statistics.median(ref):.0f} → {1e3 * statistics.median(mine):.0f}" if mine else "–")
            cells.append(f"{statistics.median(rs):.2f} ({min(rs):.2f}–{max(rs):.2f})" if rs else "–")
        for mm in ("xla-matmul/float32", "xla-matmul/bfloat16"):
            rs = sweep_ratios(e, mm)
            cells.append(f"{statistics.median(rs):.2f}" if rs else "–")
        comp = e["info"]["compile_s"]
        cells.append(" / ".join(f"{dcomp[k]:.0f} → {comp[k]:.0f}" for k in comp if k in dcomp))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- main
def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny ViT, batch 16, few rounds, one-flag sweep")
    p.add_argument("--cases", default=None, help=f"comma-separated VARIANT:HxWxC:pPATCH (default {DEFAULT_CASES})")
    p.add_argument("--batch", type=int, default=None, help="examples per step (default 64; quick 16)")
    p.add_argument("--classes", default="10,10,19", help="classes of each task head (3 tasks by default)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--per-round", type=int, default=None)
    p.add_argument("--pause", type=float, default=0.05)
    p.add_argument("--max-step-s", type=float, default=30.0,
                   help="a step whose first call is slower is reported from that call only")
    p.add_argument("--peak-n", type=int, default=None, help="matmul size (default 2048; quick 512)")
    p.add_argument("--peak-max-s", type=float, default=1.0, help="halve the matmul size until a call takes this long")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch side")
    p.add_argument("--no-sweep", action="store_true", help="skip the XLA flag sweep")
    p.add_argument("--sweep-only", action="store_true", help="only the XLA flag sweep")
    p.add_argument("--flags", default=None, help="';'-separated NAME=XLA_FLAGS settings to compare with the default")
    p.add_argument("--flag-case", default=None, help="the case the sweep compiles (default Ti:16x16x1:p4)")
    p.add_argument("--flag-dtypes", default="float32,bfloat16")
    p.add_argument("--flag-reps", type=int, default=None)
    p.add_argument("--torch-threads", default="1", help="extra torch.set_num_threads values timed beside the "
                   "default (all cores) for the f32 torch step and matmul; empty for none")
    p.add_argument("--worker-calls", type=int, default=None, help="timed calls per contender and sweep round")
    p.add_argument("--json", default=None, help="write every number here (default for full runs: "
                                                "benchmarks/results/train_step.json)")
    # internal: one sweep setting in a fresh process
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    q = args.quick
    args.batch = args.batch or (16 if q else 64)
    args.peak_n = args.peak_n or (512 if q else 2048)
    args.flag_case = args.flag_case or ("tiny:16x16x1:p4" if q else "Ti:16x16x1:p4")
    if q and args.flag_dtypes == "float32,bfloat16":
        args.flag_dtypes = "float32"
    args.worker_calls = args.worker_calls or (1 if q else 2)
    if args.serve:
        serve(args)
        return
    cases = [Case.parse(s) for s in (args.cases or ("tiny:32x32x3:p4" if q else DEFAULT_CASES)).split(",")]
    if args.sweep_only:
        cases = []
    classes = [int(s) for s in args.classes.split(",")]
    dtypes = [d for d in args.dtypes.split(",") if d]
    extra_threads = [int(k) for k in args.torch_threads.split(",") if k and int(k) != os.cpu_count()]
    rounds = args.rounds or (2 if q else 4)
    per_round = args.per_round or (2 if q else 2)
    flags = args.flags if args.flags is not None else ("fast_math=--xla_cpu_enable_fast_math=true" if q else DEFAULT_FLAGS)
    args.flags = flags
    args.flag_reps = args.flag_reps or (2 if q else 6)
    json_path = args.json or (None if q else os.path.join(HERE, "results", "train_step.json"))

    torch_vit = None
    notes = []
    if not args.no_torch:
        try:
            import torch_vit_step as torch_vit
        except ImportError as e:
            notes.append(f"PyTorch side skipped: {e}")

    env = environment()
    if torch_vit is not None:
        env.update(torch_vit.versions())
    cmd = "python benchmarks/train_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print("# train_step benchmark")
    print(json.dumps(env))
    print(f"command: {cmd.strip()}")
    print(f"HPS ViT (pool gap, linear heads {classes}), batch {args.batch}, Adam 1e-3, equal weighting; "
          f"rounds {rounds} x {per_round} timed calls")

    t_all = time.perf_counter()
    results, torch_rates = [], {}
    for case in cases:
        print(f"\n== {case.label}", flush=True)
        cs, equiv = [], None
        model0, params0 = None, None
        for dtype in dtypes:
            c, model, params_np = mtljax_contender(case, dtype, args.batch, classes)
            print(f"   mtljax {dtype}: compiled in {c.info['compile_s']:.1f} s, "
                  f"{c.info['xla_flops'] / 1e9:.2f} GFLOP/step (XLA)", flush=True)
            cs.append(c)
            if dtype == "float32" or model0 is None:
                model0, params0 = (build_model(case.model_config("float32"), make_tasks(classes), case.shape),
                                   params_np)
        analytic = analytic_flops(case, args.batch, classes)
        if torch_vit is not None:
            equiv = equivalence_check(case, model0, params0, torch_vit, classes, args.batch)
            print(f"   torch model: {equiv['params']:,} parameters (= mtljax), logits agree to "
                  f"{equiv['max_abs_logit_diff']:.1e}", flush=True)
            for dtype in dtypes:
                rate = torch_rates.get(dtype)  # GFLOP/s this torch step reached on an earlier case
                if rate and analytic / rate / 1e9 > args.max_step_s:
                    notes.append(f"{case.label}: torch {dtype} step skipped, predicted "
                                 f"{analytic / rate / 1e9:.0f} s/step from the {rate:.1f} GFLOP/s it reached "
                                 f"on an earlier case (> --max-step-s {args.max_step_s:g})")
                    print(f"   {notes[-1]}", flush=True)
                    continue
                cs.append(torch_contender(case, dtype == "bfloat16", params0, torch_vit, args.batch, classes))
            for k in extra_threads:
                cs.append(torch_contender(case, False, params0, torch_vit, args.batch, classes, threads=k))
        else:
            equiv = {"params": sum(int(np.size(p)) for p in jax.tree.leaves(params0))}
        cs += [xla_matmul(d, args.peak_n, args.peak_max_s) for d in dtypes]
        if torch_vit is not None:
            cs += [torch_matmul(d, args.peak_n, args.peak_max_s) for d in dtypes]
            cs += [torch_matmul("float32", args.peak_n, args.peak_max_s, threads=k) for k in extra_threads]
        measure(cs, rounds=rounds, per_round=per_round, pause=args.pause, max_step_s=args.max_step_s)
        for c in cs:
            ok = c.info.get("finite")
            if ok is not None and not ok():
                notes.append(f"{case.label} {c.name}: last step was not finite")
        results.append(case_rows(case, cs, args.batch, analytic, equiv))
        for row in results[-1]["rows"]:
            if row["framework"] == "torch" and row["threads"] == os.cpu_count():
                torch_rates[row["dtype"]] = row["gflops"]
        print()
        print(step_table(results[-1:]))

    if results:
        print("\n### Train step: examples/s and achieved FLOP/s\n")
        print(step_table(results))
        print("\n### FLOPs per step and compiled memory (mtljax)\n")
        print(flops_table(results))
        print("\n### Mixed precision (bf16 compute, f32 parameters): speed of the bf16 step ÷ the f32 step\n")
        print(bf16_table(results))
        print("\n### Measured matmul rates (best round median; n = matrix size)\n")
        print(peak_table(results))

    sweep = None
    if not args.no_sweep:
        print(f"\n== XLA flag sweep on {Case.parse(args.flag_case).label}, dtypes {args.flag_dtypes}: one "
              f"subprocess per setting, alternating with a default subprocess {args.flag_reps} times "
              f"({args.worker_calls} timed calls each)", flush=True)
        sweep = flag_sweep(args)
        print("\n### XLA CPU flags (speed-up = default time ÷ setting time, median over alternations)\n")
        print(sweep_table(sweep, args.flag_dtypes.split(",")))
    if notes:
        print("\nnotes:")
        for n in dict.fromkeys(notes):
            print(f"- {n}")
    print(f"\ntotal wall time {time.perf_counter() - t_all:.0f} s")
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump({"env": env, "command": cmd, "cases": results, "sweep": sweep, "notes": notes}, f, indent=1)
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
