"""ScaLearn (mtljax.models.peft.scalearn) by its defining properties: the plug is h + Σ_s ω^s ⊙ a^s(h)
(numpy by hand); one-hot scales give the model with that source's adapter (the ``adapter`` method's
forward); the ++ variants share one ω per position across blocks and equal the per-block variant when
every block's ω is the same; trained counts per variant; the source stacks load by task name from a
source run's checkpoint (mtljax.trainer.scalearn_source); bad settings are one-line errors."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mtljax.config import ConfigError, base_config
from mtljax.models import build_model
from mtljax.models.peft.scalearn import ScaLearn
from mtljax.models.plugs import Context
from mtljax.optim.trainable import path_string
from mtljax.tasks import Task
from mtljax.trainer import scalearn_source
from mtljax.trainer.experiment import Experiment
from param_trees import random_like, shapes

SOURCES = ("u", "v", "w")
TARGETS = (Task("a", "multiclass", num_classes=3), Task("b", "regression"))
S, T, WIDTH, DEPTH, M, B = len(SOURCES), len(TARGETS), 16, 2, 4, 2
X = jax.random.normal(jax.random.PRNGKey(0), (B, 8, 8, 1))
VARIANT_COUNTS = {"scalearn": T * S * WIDTH * DEPTH * 2, "uniform": T * S * DEPTH * 2,
                  "scalearn++": T * S * WIDTH * 2, "uniform++": T * S * 2, "fusion": T * 3 * WIDTH ** 2 * DEPTH * 2}


def _model_cfg(method, **scalearn):
    c = base_config().model
    c.vit.update(width=WIDTH, depth=DEPTH, num_heads=2, mlp_dim=16, patch_size=4, pool="gap")
    c.peft.update(method=method, adapter_dim=M)
    c.peft.scalearn.update(dict(source="unused", source_tasks=SOURCES, variant="scalearn") | scalearn)
    return c


def _flat(tree):
    return {path_string(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _set(tree, values):
    return jax.tree_util.tree_map_with_path(lambda p, x: values.get(path_string(p), x), tree)


@pytest.fixture(scope="module")
def adapter_model():
    """The ``adapter`` method on the source tasks, with random parameters (adapters included)."""
    model = build_model(_model_cfg("adapter"), tuple(Task(n, "regression") for n in SOURCES), (8, 8, 1))
    return model, random_like(shapes(model, X), seed=1)


def _scalearn(variant, adapter_params, omega=None):
    """A ScaLearn model and its parameters: the adapter model's backbone and adapters (as the source
    stacks), and every ω set by ``omega(shape) -> array`` (random when ``None``)."""
    model = build_model(_model_cfg("scalearn", variant=variant), TARGETS, (8, 8, 1))
    src, values = _flat(adapter_params), {}
    for path, x in _flat(shapes(model, X)).items():
        name = path.rsplit("/", 1)[-1]
        if name.startswith("source_"):
            values[path] = src[path.replace("/source_", "/")]
        elif "scalearn_omega" in name and omega is not None:
            values[path] = omega(x.shape)
        elif path in src:
            values[path] = src[path]
    return model, _set(random_like(shapes(model, X), seed=2), values)


def _gelu(x):  # flax's default (tanh approximation)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def test_plug_is_residual_plus_scaled_source_deltas():
    """One plug against numpy: h + Σ_s ω^{t(b),s} ⊙ (W_up,s gelu(W_down,s h + b_down,s) + b_up,s)."""
    rng = np.random.default_rng(0)
    h = rng.standard_normal((3, 5, WIDTH)).astype(np.float32)
    ids = jnp.asarray([1, 0, 1])
    for uniform in (False, True):
        plug = ScaLearn(T, S, M, uniform=uniform)
        variables = jax.eval_shape(lambda: plug.init(jax.random.PRNGKey(0), h, Context(task_ids=ids)))
        p = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), nn.unbox(variables["params"]))
        out = np.asarray(jax.jit(lambda p: plug.apply({"params": p}, h, Context(task_ids=ids)))(p))
        expected = h.copy()
        for b, t in enumerate(np.asarray(ids)):
            for s in range(S):
                z = _gelu(h[b] @ p["source_down_kernel"][s] + p["source_down_bias"][s])
                expected[b] += p["scalearn_omega"][t, s] * (z @ p["source_up_kernel"][s] + p["source_up_bias"][s])
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    init = nn.unbox(jax.jit(lambda: ScaLearn(T, 4, M).init(jax.random.PRNGKey(1), h, Context(task_ids=ids)))()["params"])
    omega = np.asarray(init["scalearn_omega"])  # N(2/S, 1e-3)
    assert omega.shape == (T, 4, WIDTH) and abs(omega.mean() - 0.5) < 1e-3 and omega.std() < 2e-3


_ENCODERS = {}


def _encoder(model, key):
    """The jitted pooled encoding of ``model`` (one compilation per ``key`` in this module)."""
    if key not in _ENCODERS:
        _ENCODERS[key] = jax.jit(lambda p, ids: model.apply({"params": p}, X, task_ids=ids, method="encode")[0]["pooled"])
    return _ENCODERS[key]


@pytest.mark.parametrize("variant", ["scalearn", "uniform++"])
def test_one_hot_scales_are_the_model_with_that_sources_adapter(adapter_model, variant):
    model, params = adapter_model
    base = _encoder(model, "adapter")
    for j in range(S):
        def one_hot(shape, j=j):
            w = np.zeros(shape, np.float32)
            w[:, j] = 1.0
            return jnp.asarray(w)

        sl, sl_params = _scalearn(variant, params, one_hot)
        encode = _encoder(sl, variant)
        want = base(params, jnp.full((B,), j))
        got = encode(sl_params, jnp.asarray([0, T - 1]))  # every target task, the same one-hot scales
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_shared_variants_equal_per_block_variants_with_equal_scales_and_trained_counts(adapter_model):
    _, params = adapter_model
    rng = np.random.default_rng(3)
    for per_block, shared in (("scalearn", "scalearn++"),):  # the uniform ones differ only in ω's last axis
        m1, p1 = _scalearn(per_block, params)
        m2, p2 = _scalearn(shared, params)
        f1, f2 = _flat(p1), _flat(p2)
        f2.update({k: v for k, v in f1.items() if k in f2})  # the same heads
        for pos, scope in (("attention", "attn_adapter"), ("mlp", "mlp_adapter")):
            omega = jnp.asarray(rng.standard_normal(f2[f"backbone/scalearn_omega_{pos}"].shape), jnp.float32)
            f2[f"backbone/scalearn_omega_{pos}"] = omega
            for i in range(DEPTH):
                f1[f"backbone/block{i}/{scope}/scalearn_omega"] = omega
        ids = jnp.asarray([0, 1])
        np.testing.assert_allclose(_encoder(m1, per_block)(_set(p1, f1), ids), _encoder(m2, shared)(_set(p2, f2), ids),
                                   rtol=1e-5, atol=1e-5)
    for variant, n in VARIANT_COUNTS.items():
        model = build_model(_model_cfg("scalearn", variant=variant), TARGETS, (8, 8, 1))
        flat = _flat(shapes(model, X))
        assert sum(int(np.prod(x.shape)) for p, x in flat.items() if "scalearn_" in p) == n, variant
        stacks = [p for p in flat if p.rsplit("/", 1)[-1] == "source_down_kernel"]
        assert len(stacks) == 2 * DEPTH and all(flat[p].shape == (S, WIDTH, M) for p in stacks)


def test_fusion_with_zero_queries_and_identity_values_averages_the_sources(adapter_model):
    """AdapterFusion (variant 'fusion') with W_Q = 0 attends uniformly; with W_V = I (its initialisation)
    it is ScaLearn with every ω = 1/S."""
    _, params = adapter_model
    m1, p1 = _scalearn("scalearn", params, lambda shape: jnp.full(shape, 1.0 / S))
    m2, p2 = _scalearn("fusion", params)
    f1, f2 = _flat(p1), _flat(p2)
    f2.update({k: v for k, v in f1.items() if k in f2})
    f2.update({k: jnp.broadcast_to(jnp.eye(WIDTH), v.shape) if k.endswith("value") else
               (jnp.zeros_like(v) if k.endswith("query") else v) for k, v in f2.items() if "scalearn_fusion" in k})
    ids = jnp.asarray([0, 1])
    np.testing.assert_allclose(_encoder(m1, "scalearn")(p1, ids), _encoder(m2, "fusion")(_set(p2, f2), ids),
                               rtol=1e-5, atol=1e-5)


# ---- the source run and the loader ------------------------------------------------------------------

def _run_config(workdir, tasks, method, **peft):
    c = base_config()
    c.workdir = str(workdir)
    c.data.update(name="factors", image_size=16, num_train=32, num_test=16, batch_size=16, eval_batch_size=16,
                  tasks=tasks)
    c.model.vit.update(patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=16)
    c.model.peft.update(method=method, adapter_dim=M, **peft)
    c.train.update(steps=2, log_every=2, eval_every=2, checkpoint_every=2, progress=False)
    return c


def _write_run(workdir, c):
    """A run directory as the trainer leaves it (config.json, ``checkpoints/2/state`` holding ``params``)
    with random parameters; nothing is compiled."""
    params = random_like(Experiment(c).param_shapes, seed=4)
    with ocp.StandardCheckpointer() as checkpointer:  # asynchronous: closing waits for the files
        checkpointer.save(os.path.join(workdir, "checkpoints", "2", "state"), {"params": params})
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(c.to_json_best_effort())
    return jax.tree.map(np.asarray, params)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("scalearn_source") / "run"
    params = _write_run(workdir, _run_config(workdir, ("count", "texture", "pos_x"), "adapter"))
    plain = tmp_path_factory.mktemp("plain") / "run"
    _write_run(plain, _run_config(plain, ("count", "texture"), ""))
    return workdir, params, plain


def _target(tmp_path, src, **scalearn):
    c = _run_config(tmp_path / "target", ("background",), "scalearn")
    c.model.peft.scalearn.update(dict(source=str(src), source_tasks=(), variant="scalearn") | scalearn)
    c.optim.trainable = ("scalearn_", "^heads_")
    return c


def test_loader_fills_the_stacks_by_task_name_in_the_requested_order(source_run, tmp_path):
    source, src, _ = source_run
    assert Experiment(_target(tmp_path, source)).source_plan.tasks == ("count", "texture", "pos_x")  # empty: all
    exp = Experiment(_target(tmp_path, source, source_tasks=("pos_x", "count")))
    plan = exp.source_plan
    assert plan.tasks == ("pos_x", "count") and plan.run_tasks == ("count", "texture", "pos_x") and plan.step == 2
    fresh = random_like(exp.param_shapes, seed=5)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = scalearn_source.load(plan, fresh, jax.tree.map(lambda _: one, fresh))
    for scope in ("attn_adapter", "mlp_adapter"):
        for name in ("down_kernel", "down_bias", "up_kernel", "up_bias"):
            got = np.asarray(params["backbone"]["block0"][scope][f"source_{name}"])
            np.testing.assert_array_equal(got, src["backbone"]["block0"][scope][name][[2, 0]])
    rest = {k: v for k, v in _flat(params).items() if "/source_" not in k}
    assert all(np.array_equal(v, _flat(fresh)[k]) for k, v in rest.items())  # nothing else changes
    assert plan.summary().endswith("slot 0 <- 'pos_x', slot 1 <- 'count'")


@pytest.mark.parametrize("change, key, words", [
    (dict(source="/nonexistent/run"), "model.peft.scalearn.source", "is not a directory"),
    (dict(source="PLAIN"), "model.peft.scalearn.source", "has no bottleneck adapters"),
    (dict(source_tasks=("count", "shape")), "model.peft.scalearn.source_tasks", "no task 'shape'"),
    (dict(source_tasks=("count", "count")), "model.peft.scalearn.source_tasks", "twice"),
    (dict(variant="mean"), "model.peft.scalearn.variant", "unknown variant"),
    (dict(source=""), "model.peft.scalearn.source", "is empty"),
    ("adapter_dim", "model.peft.adapter_dim", r"width \[4\]"),
    ("method", "model.peft.method", "both fill the adapter plugs"),
    ("positions", "model.peft.adapter_positions", "has adapters at"),
    ("trainable", "optim.trainable", "frozen source adapters"),
    ("all trainable", "optim.trainable", "frozen source adapters"),
])
def test_bad_settings_are_one_line_errors_naming_the_key(source_run, tmp_path, change, key, words):
    source, _, plain = source_run
    if isinstance(change, dict):
        change = {k: str(plain) if v == "PLAIN" else v for k, v in change.items()}
        c = _target(tmp_path, source, **change)
    else:
        c = _target(tmp_path, source)
        if change == "adapter_dim":
            c.model.peft.adapter_dim = 8
        elif change == "method":
            c.model.peft.method = "scalearn+adapter"
        elif change == "positions":
            c.model.peft.adapter_positions = ("mlp",)
        else:
            c.optim.trainable = ("adapter", "^heads_") if change == "trainable" else ()
    with pytest.raises(ConfigError, match=words) as err:
        Experiment(c)
    assert str(err.value).startswith(f"config.{key}: ") and "\n" not in str(err.value)


def test_configs_build_every_variant(source_run, tmp_path):
    """configs/scalearn.py's variants, shrunk to the fixture's source run: only ω and the target head train."""
    from mtljax.config import load_config
    from mtljax.optim.trainable import count, split, trainable_mask

    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "scalearn.py")
    assert load_config(root).data.tasks == ("count", "texture", "orientation", "pos_x")  # the source run
    small = _run_config(tmp_path, ("background",), "scalearn")
    for variant, n in (("scalearn", 16 * 3 * 2), ("uniform", 3 * 2), ("scalearn++", 16 * 3 * 2), ("uniform++", 3 * 2),
                       ("fusion", 3 * 16 * 16 * 2)):
        c = load_config(f"{root}:{variant}")
        assert c.model.peft.scalearn.variant == variant and c.init.checkpoint == "runs/pretrain"
        c.workdir, c.init.checkpoint, c.data, c.model.vit = str(tmp_path / variant), "", small.data, small.model.vit
        c.model.peft.update(adapter_dim=M)
        c.model.peft.scalearn.source = str(source_run[0])
        exp = Experiment(c)
        shapes = exp.param_shapes
        head = count(shapes["heads_background"])
        assert count(split(shapes, trainable_mask(shapes, tuple(c.optim.trainable)))[0]) == n + head, variant
