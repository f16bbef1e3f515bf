"""Level ``autogram`` gives the Gramian and the update of level ``param`` (up to float rounding): on the
MLP and on a tiny ViT (DenseGeneral with several contracting axes, attention), on a plain function
with a kernel read twice, a kernel on the left of its product, batched kernels, a parameter that is
not only a kernel and an auxiliary term, and through ``make_train_step`` with UPGrad (MGDA and the
other Gramian methods read the same Gramian). One compiled function per model checks many weightings."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtljax.config import ConfigError, base_config
from mtljax.models import build_model
from mtljax.models.objective import objective
from mtljax.optim import as_optax, get_method
from mtljax.optim.autogram import count_dense_kernels
from mtljax.optim.task_grads import LossFunction, task_gradients
from mtljax.tasks import Task
from mtljax.trainer import step as st
from mtljax.trainer.optimizer import check_autogram, training_level
from mtljax.trainer.state import TrainState, make_init_fn

TASKS = (Task("a", "regression"), Task("b", "multiclass", num_classes=3), Task("c", "regression"))
WEIGHTS = np.asarray([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0], [-0.4, 2.0, 0.1], [0.0, 0.0, 0.0]], np.float32)


@functools.cache  # built once per test session
def _model(backbone):
    c = base_config().model
    c.backbone = backbone
    if backbone == "mlp":
        c.mlp.hidden, shape = (8, 8), (6,)
    else:
        c.vit.width, c.vit.depth, c.vit.num_heads, c.vit.mlp_dim, c.vit.patch_size = 8, 1, 2, 16, 4
        shape = (8, 8, 1)
    model = build_model(c, TASKS, shape)

    @jax.jit  # one compilation instead of one per eager op
    def init(key):
        params = nn.unbox(make_init_fn(model, optax.identity(), shape)(key).params)
        keys = iter(jax.random.split(key, len(jax.tree.leaves(params))))
        return jax.tree.map(lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape), params)  # heads start at 0

    params = init(jax.random.PRNGKey(0))
    rng, n = np.random.default_rng(0), 5
    batch = {"inputs": jnp.asarray(rng.standard_normal((n, *shape)), jnp.float32),
             "targets": {"a": jnp.asarray(rng.standard_normal(n), jnp.float32),
                         "b": jnp.asarray(rng.integers(0, 3, n), jnp.int32),
                         "c": jnp.asarray(rng.standard_normal(n), jnp.float32)},
             "masks": {t.name: jnp.ones((n,), jnp.float32) for t in TASKS}}
    return model, objective(model, TASKS), params, batch


@pytest.fixture(scope="module", params=["mlp", "vit"])
def compared(request):
    """One compiled function: Gramian and updates at both levels, for a batch of weightings."""
    _, obj, params, batch = _model(request.param)
    specific = obj.specific(params)
    fn = obj.loss_function(batch)

    @jax.jit
    def run(ws, hws):
        out = {}
        for level in ("param", "autogram"):
            tg, _ = task_gradients(fn, params, level=level, specific=specific)
            gram = tg.gramian()
            out[level] = (gram, jax.vmap(tg.update)(ws, hws))
        return out

    kernels = count_dense_kernels(lambda p: fn.losses(p)[0], params, specific)
    return request.param, run(jnp.asarray(WEIGHTS), jnp.asarray(WEIGHTS[::-1])), kernels


def _close(a, b, rtol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        scale = max(float(np.max(np.abs(y))), 1e-3)
        np.testing.assert_allclose(x, y, rtol=0, atol=rtol * scale)


def test_same_gramian_and_update_as_param_level(compared):
    name, out, kernels = compared
    assert kernels == {"mlp": 2, "vit": 7}[name]  # vit: patch embedding, q, k, v, out, fc1, fc2
    (g_p, u_p), (g_a, u_a) = out["param"], out["autogram"]
    assert float(np.max(np.abs(g_p))) > 1e-3
    _close(g_a, g_p)
    _close(u_a, u_p)


def _toy():
    """Kernels read twice (w), on the left (v), batched (bk), narrow (e: rows formed) and wide (f: by the
    rows' kernel A Aᵀ); a parameter also read elementwise (t)."""
    k = iter(jax.random.split(jax.random.PRNGKey(2), 10))
    p = {"w": jax.random.normal(next(k), (4, 4)), "v": jax.random.normal(next(k), (3, 4)),
         "bk": jax.random.normal(next(k), (2, 2, 3)), "t": jax.random.normal(next(k), (4, 2)),
         "b": jax.random.normal(next(k), (4,)), "head": jax.random.normal(next(k), (3, 3)),
         "e": jax.random.normal(next(k), (4, 32)), "f": 0.2 * jax.random.normal(next(k), (32, 32))}
    x = jax.random.normal(next(k), (6, 4))

    def losses(q):
        h = jnp.tanh(x @ q["w"] + q["b"])
        h = jnp.tanh(h @ q["w"])  # the same kernel again
        z = q["v"] @ h.T  # kernel on the left: [3, 6]
        g = jnp.einsum("gnk,gkm->gnm", h.reshape(6, 2, 2).transpose(1, 0, 2), q["bk"])  # batch axis g
        u = (h @ q["t"]) * jnp.sum(q["t"])  # t is not only a kernel
        wide = jnp.tanh(jnp.tanh(h @ q["e"]) @ q["f"])  # f: wider than the 6 rows (Gramian by A Aᵀ)
        out = z.T @ q["head"] + jnp.sum(g, axis=0) + jnp.sum(u) + wide[:, :3]
        ls = jnp.mean(out ** 2, axis=0) + jnp.arange(3.0) * jnp.mean(out, axis=0)
        return ls, 0.1 * jnp.sum(h ** 2), {}

    return p, {**{n: False for n in p}, "head": True}, losses


def test_toy_function_with_auxiliary_term():
    params, specific, losses = _toy()
    fn = LossFunction(losses)
    assert count_dense_kernels(lambda p: losses(p)[0], params, specific) == 5  # w, v, bk, e, f

    @jax.jit
    def run(w, hw):
        out = []
        for level in ("param", "autogram"):
            tg, _ = task_gradients(fn, params, level=level, specific=specific, chunk_size=2)
            gram = tg.gramian()  # the update then combines the rows (autogram: the G_t of every product)
            alone = task_gradients(fn, params, level=level, specific=specific)[0]  # no Gramian: one pullback
            out.append((gram, tg.update(w, hw), tg.update(w, hw, clip_shared=0.5), alone.update(w, hw)))
        return out

    (p, a) = run(jnp.asarray([0.3, -0.2, 1.1]), jnp.asarray([1.0, 0.5, 0.0]))
    assert float(np.max(np.abs(p[0]))) > 1e-2
    _close(a, p)


def test_upgrad_step_matches_param_level():
    _, obj, params, batch = _model("mlp")
    tx = optax.chain(as_optax(get_method("upgrad"), len(TASKS)), optax.adam(1e-2))
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.PRNGKey(0))
    steps = [st.make_train_step(obj, tx, level=level) for level in ("param", "autogram")]
    (new_p, m_p), (new_a, m_a) = jax.jit(lambda s: [step(s, batch) for step in steps])(state)
    assert bool(m_p["finite"]) and bool(m_a["finite"])
    assert float(np.min(m_p["task_weights"])) != float(np.max(m_p["task_weights"]))  # UPGrad did reweigh
    _close(m_a["task_weights"], m_p["task_weights"], 1e-4)
    _close(new_a.params, new_p.params, 1e-4)
    _close(new_a.opt_state, new_p.opt_state, 1e-4)


def test_config_level_autogram():
    opt = base_config().optim
    opt.level = "autogram"
    assert training_level(opt, get_method("upgrad")) == "autogram"
    opt.method = "graddrop"
    with pytest.raises(ConfigError, match="config.level: 'autogram'"):  # the key is relative to config.optim
        training_level(opt, get_method("graddrop"))
    p = {"w": jnp.ones((3, 3)), "head": jnp.ones((3, 2))}
    check_autogram(lambda q: jnp.tanh(jnp.ones((2, 3)) @ q["w"]) @ q["head"], p)
    with pytest.raises(ConfigError, match=r"^config.level: 'autogram' needs a dense layer.*'conv' has none"):
        check_autogram(lambda q: jnp.sum(q["w"] ** 2) * q["head"], p, None, "conv")
    with pytest.raises(ValueError, match="level 'autogram' found no dense kernel"):
        task_gradients(lambda q: (jnp.sum(q["w"]) * jnp.ones(2), None, {}), p, level="autogram")


def test_run_refuses_autogram_without_dense_kernel(tmp_path, monkeypatch):
    from mtljax.trainer.experiment import Experiment  # noqa: PLC0415

    c = base_config()
    c.model.backbone, c.model.mlp.hidden = "mlp", (8,)
    c.data.num_train, c.data.num_test = 64, 16
    c.optim.method, c.optim.level, c.workdir = "upgrad", "autogram", str(tmp_path / "run")
    assert Experiment(c).level == "autogram"  # the MLP has dense layers
    monkeypatch.setattr(Experiment, "_abstract_forward", lambda self, p: sum(jnp.sum(x) for x in jax.tree.leaves(p)))
    with pytest.raises(ConfigError, match=r"^config.optim.level: 'autogram' needs a dense layer") as err:
        Experiment(c)
    assert "\n" not in str(err.value)
