"""The ViT train-step case that ``train_step.py`` and ``xla_flags.py`` time: which model, which
batch, how many FLOPs, and the mtljax contender — the real compiled train step. Measures nothing by
itself; it is imported (``from vit_case import Case, mtljax_contender``).

* :class:`Case` — ``VARIANT:HxWxC:pPATCH`` (e.g. ``S:32x32x3:p4``; ``tiny`` is the ``--quick`` ViT),
  the mtljax model config of an HPS ViT (``backbone='vit'``, ``pool='gap'``, linear heads) for a dtype;
* :func:`make_tasks`, :func:`numpy_batch` — the tasks (one multiclass head per entry of ``classes``)
  and a seeded random batch, shared with the PyTorch peer so both train on the same numbers;
* :func:`analytic_flops` — 3 × the forward matmul FLOPs (``2·B·N·(matmul params)`` plus attention's
  ``4·B·N²·D`` per layer), the check on XLA's ``cost_analysis``;
* :func:`mtljax_contender` — ``build_model`` + ``make_train_step`` (the chain
  ``as_optax(equal(), T)``, Adam 1e-3) + ``jit_train_step`` on a mesh ``{'data': devices}``, compiled
  once with ``.lower(...).compile()`` and called with the state donated, as the trainer does. With
  ``devices > 1`` the batch is sharded over the mesh (``batch_sharding``) and the parameters are
  replicated: data parallelism, e.g. over simulated CPU devices (``jax_num_cpu_devices``, which must
  be set before JAX initialises).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtljax.config import base_config
from mtljax.cost import flops_of
from mtljax.models import build_model, vit_dims
from mtljax.models.objective import objective
from mtljax.optim import as_optax, equal
from mtljax.optim.loss_scale import parse_loss_scale
from mtljax.parallel.mesh import make_mesh
from mtljax.parallel.rules import DEFAULT_RULES, batch_sharding
from mtljax.tasks import Task
from mtljax.trainer.state import create_state
from mtljax.trainer.step import jit_train_step, make_train_step

from common import Contender, memory_stats

TINY = dict(width=64, depth=2, num_heads=4, mlp_dim=128)  # --quick
DEFAULT_CASES = "Ti:16x16x1:p4,S:16x16x1:p4,Ti:32x32x3:p4,S:32x32x3:p4"


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


def mtljax_contender(case: Case, dtype: str, batch: int, classes: list[int], seed: int = 0, devices: int = 1):
    """The compiled mtljax train step and its initial parameters (numpy, for the torch model).

    ``devices > 1``: data parallel over the first ``devices`` devices (mesh ``{'data': devices}``, the
    batch sharded over it, parameters and optimizer state replicated); the contender is named
    ``mtljax/<dtype>/<devices>dev``.
    """
    if jax.device_count() < devices:
        raise ValueError(f"{devices} devices asked for, JAX has {jax.device_count()} "
                         f"(set jax_num_cpu_devices before JAX initialises)")
    if batch % devices:
        raise ValueError(f"batch {batch} is not divisible by {devices} devices")
    tasks = make_tasks(classes)
    model = build_model(case.model_config(dtype), tasks, case.shape)
    mesh = make_mesh({"data": devices}, devices=jax.devices()[:devices])
    b_shard = batch_sharding(mesh, DEFAULT_RULES)
    x, ys = numpy_batch(case, batch, classes, seed)
    batch_tree = jax.device_put({
        "inputs": jnp.asarray(x),
        "targets": {t.name: jnp.asarray(y) for t, y in zip(tasks, ys)},
        "masks": {t.name: jnp.ones((batch,), jnp.float32) for t in tasks},
    }, b_shard)
    tx = optax.chain(as_optax(equal(), len(tasks)), optax.adam(1e-3))
    scale = parse_loss_scale("auto", dtype)  # float16: dynamic loss scaling, as config.train.loss_scale='auto'
    with jax.set_mesh(mesh):
        state, shardings, _ = create_state(model, tx, case.shape, seed, mesh, DEFAULT_RULES, loss_scale=scale)
        jitted = jit_train_step(make_train_step(objective(model, tasks), tx, loss_scale=scale), mesh, shardings,
                                b_shard)
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
            "params": n_params, "devices": devices}
    name = f"mtljax/{dtype}" + (f"/{devices}dev" if devices > 1 else "")
    c = Contender(name, "mtljax", dtype, run, info=info)
    c.info["finite"] = lambda box=box: box["metrics"] is None or bool(box["metrics"]["finite"])
    c.compiled = compiled  # for benchmarks/profile_step.py (its HLO text)
    c.box = box  # the current state and the last step's metrics
    return c, model, params_np
