"""The PyTorch / TorchJD side of ``benchmarks/mtl_step.py``: the same multi-task MLP, trained in eager
PyTorch, with a plain backward or with TorchJD's UPGrad.

The model mirrors what ``mtljax.models.build_model`` makes for ``backbone='mlp'``: per hidden layer
``Linear -> GELU (tanh approximation, Flax's default) -> LayerNorm (eps 1e-6, Flax's default)``,
Xavier-uniform kernels and zero biases, then one linear head per task reading the last hidden layer
(zero-initialised kernels, like mtljax's ``ClassificationHead``). Even-numbered tasks are scalar
regressions (mean squared error), odd-numbered ones 5-class classifications (cross-entropy), exactly
as in ``mtl_step.py``.

Steps (each one complete: forward, backward, ``torch.optim.Adam.step``):

* ``torch_sum`` — plain ``sum(losses).backward()``: the baseline TorchJD's cost is quoted against.
* ``torchjd_upgrad`` — ``torchjd.autojac.mtl_backward(losses, features=shared_repr)`` fills the
  ``.jac`` field of every shared parameter (one row per task; heads get their own task's gradient in
  ``.grad``), then ``torchjd.autojac.jac_to_grad(shared_params, UPGrad())`` aggregates those
  Jacobians into ``.grad``. This is parameter-level UPGrad: the Jacobian is taken w.r.t. the shared
  *parameters* (TorchJD >= 0.17 API; checked against the installed 0.18.0).
* ``torchjd_upgrad_gram`` — the same with ``jac_to_grad(..., optimize_gramian_computation=True)``
  (sums per-parameter Gramians instead of concatenating the Jacobian; TorchJD documents it as
  saving memory).
* ``torchjd_autogram_upgrad`` — TorchJD's Gramian engine (``torchjd.autogram.Engine`` on the shared
  backbone, ``batch_dim=None`` because the task losses are batch means): Gramian -> ``UPGradWeighting``
  -> ``losses.backward(weights)``. Informative only (heads then get ``w``-weighted gradients).

Run alone: ``.venv-bench/bin/python benchmarks/torchjd_step.py [--quick]`` prints each step's median
time. ``mtl_step.py`` imports :func:`make_steps` to interleave these steps with mtljax's in one process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

NUM_CLASSES = 5  # classes of the odd-numbered (classification) tasks; mtl_step.py uses the same


def task_kinds(num_tasks: int) -> list[str]:
    return ["regression" if t % 2 == 0 else "multiclass" for t in range(num_tasks)]


class Backbone(nn.Module):
    """Shared trunk with mtljax MLP's layer order: Linear, tanh-GELU, LayerNorm."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            lin = nn.Linear(width, h)
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.GELU(approximate="tanh"), nn.LayerNorm(h, eps=1e-6)]
            width = h
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def make_heads(width: int, kinds: list[str]) -> nn.ModuleList:
    heads = nn.ModuleList()
    for kind in kinds:
        lin = nn.Linear(width, 1 if kind == "regression" else NUM_CLASSES)
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)
        heads.append(lin)
    return heads


def make_batch(batch: int, in_dim: int, kinds: list[str], seed: int = 0):
    """Inputs and targets as numpy arrays (``mtl_step.py`` feeds the very same values to JAX)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, in_dim), dtype=np.float32)
    ys = []
    for kind in kinds:
        if kind == "regression":
            ys.append(rng.standard_normal((batch,), dtype=np.float32))
        else:
            ys.append(rng.integers(0, NUM_CLASSES, size=(batch,), dtype=np.int32))
    return x, ys


def _losses(feats, heads, kinds, ys):
    out = []
    for head, kind, y in zip(heads, kinds, ys):
        pred = head(feats)
        out.append(F.mse_loss(pred[:, 0], y) if kind == "regression" else F.cross_entropy(pred, y))
    return out


STEP_NAMES = ("torch_sum", "torchjd_upgrad", "torchjd_upgrad_gram", "torchjd_autogram_upgrad")


def make_steps(num_tasks: int, *, batch: int, in_dim: int, hidden: tuple[int, ...], lr: float = 1e-3,
               seed: int = 0, names=STEP_NAMES) -> dict:
    """``{name: step()}``: each closure owns its own model copy and optimizer and runs one full step."""
    from torchjd.aggregation import UPGrad, UPGradWeighting
    from torchjd.autogram import Engine
    from torchjd.autojac import jac_to_grad, mtl_backward

    kinds = task_kinds(num_tasks)
    x_np, ys_np = make_batch(batch, in_dim, kinds, seed)
    x = torch.from_numpy(x_np)
    ys = [torch.from_numpy(y) if k == "regression" else torch.from_numpy(y).long() for y, k in zip(ys_np, kinds)]

    def fresh():
        torch.manual_seed(seed)
        backbone = Backbone(in_dim, hidden)
        heads = make_heads(hidden[-1], kinds)
        opt = torch.optim.Adam([*backbone.parameters(), *heads.parameters()], lr=lr)
        return backbone, heads, opt

    steps = {}
    if "torch_sum" in names:
        backbone, heads, opt = fresh()

        def torch_sum(backbone=backbone, heads=heads, opt=opt):
            opt.zero_grad(set_to_none=True)
            losses = _losses(backbone(x), heads, kinds, ys)
            torch.stack(losses).sum().backward()
            opt.step()

        steps["torch_sum"] = torch_sum

    for name, optimize in (("torchjd_upgrad", False), ("torchjd_upgrad_gram", True)):
        if name not in names:
            continue
        backbone, heads, opt = fresh()
        aggregator = UPGrad()
        shared = list(backbone.parameters())

        def jd_step(backbone=backbone, heads=heads, opt=opt, aggregator=aggregator, shared=shared,
                    optimize=optimize):
            opt.zero_grad(set_to_none=True)
            feats = backbone(x)
            losses = _losses(feats, heads, kinds, ys)
            mtl_backward(losses, features=feats)
            jac_to_grad(shared, aggregator, optimize_gramian_computation=optimize)
            opt.step()

        steps[name] = jd_step

    if "torchjd_autogram_upgrad" in names:
        backbone, heads, opt = fresh()
        engine = Engine(backbone, batch_dim=None)
        weighting = UPGradWeighting()

        def autogram_step(backbone=backbone, heads=heads, opt=opt, engine=engine, weighting=weighting):
            opt.zero_grad(set_to_none=True)
            losses = torch.stack(_losses(backbone(x), heads, kinds, ys))
            gram = engine.compute_gramian(losses)
            losses.backward(weighting(gram))
            opt.step()

        steps["torchjd_autogram_upgrad"] = autogram_step
    return steps


def versions() -> dict:
    from importlib.metadata import version

    return {"torch": torch.__version__, "torchjd": version("torchjd"),
            "torch_threads": torch.get_num_threads()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model, few iterations")
    p.add_argument("--tasks", default="2,3,10")
    p.add_argument("--iters", type=int, default=None)
    args = p.parse_args(argv)
    batch, in_dim, hidden = (32, 16, (64, 64, 64)) if args.quick else (256, 64, (512, 512, 512))
    iters = args.iters or (5 if args.quick else 30)
    print(versions())
    for t in (int(s) for s in args.tasks.split(",")):
        steps = make_steps(t, batch=batch, in_dim=in_dim, hidden=hidden)
        times = {n: [] for n in steps}
        for n, f in steps.items():
            f()  # warm-up
        for _ in range(iters):  # interleaved, one step of each per round
            for n, f in steps.items():
                t0 = time.perf_counter()
                f()
                times[n].append(time.perf_counter() - t0)
        base = statistics.median(times["torch_sum"]) if "torch_sum" in times else None
        for n, ts in times.items():
            med = statistics.median(ts)
            rel = f"  {med / base:.2f}x torch_sum" if base else ""
            print(f"T={t:<3} {n:<26} {1e3 * med:8.2f} ms{rel}")


if __name__ == "__main__":
    main()
