"""SAM in the train step: flat-region SAM reduces to its base method at ρ = 0 and otherwise uses the
per-task gradients at θ + ρ g_t/‖g_t‖; plain SAM (optax.contrib.sam) uses ∇L at θ + ρ g/‖g‖."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtljax.config import ConfigError, base_config, validate
from mtljax.data import build_dataset, train_dataset, train_iterator
from mtljax.models import build_model
from mtljax.models.hps import split_params
from mtljax.optim import get_method
from mtljax.optim.base import Method
from mtljax.optim.flat_sam import perturbations
from mtljax.parallel.mesh import make_mesh
from mtljax.parallel.rules import DEFAULT_RULES
from mtljax.train import step as st
from mtljax.train.state import create_state

W = jnp.asarray([0.25, 0.75])
FIXED = Method("fixed", "gramian", init=lambda t: (), weights=lambda l, s, k, gramian=None: (W, s))


@pytest.fixture(scope="module")
def setup():
    c = base_config()
    c.data.num_train, c.data.num_test = 64, 16
    c.model.backbone = "mlp"
    c.model.mlp.hidden = (8,)
    data = build_dataset(c.data)
    model = build_model(c.model, data.tasks, data.input_shape)
    batch = next(train_iterator(train_dataset(data.splits["train"], data.tasks, 16, 0), prefetch=0))
    return model, data.tasks, batch, data.input_shape


def _grads(setup, method, tx=None, **kw):
    model, tasks, batch, shape = setup
    tx = tx or optax.sgd(1.0)
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    with jax.set_mesh(mesh):
        state, _, _ = create_state(model, tx, shape, 0, mesh, DEFAULT_RULES, lambda: method.init(len(tasks)))
        # move off the zero-initialised heads so every task has a gradient on the shared layers
        leaves, tree = jax.tree.flatten(state.params)
        keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
        noise = [0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
        state = state.replace(params=jax.tree.unflatten(tree, [x + n for x, n in zip(leaves, noise)]))
        new, _ = jax.jit(st.make_train_step(model, tasks, tx, method=method, **kw))(state, batch)
    return state.params, jax.tree.map(lambda a, b: a - b, state.params, new.params)


def _task_loss(setup, t):
    model, tasks, batch, _ = setup
    return lambda p: st.task_losses(model, tasks, p, batch, train=True)[0][t]


def test_rho_zero_equals_base_method(setup):
    for method in (FIXED, get_method("equal")):
        _, base = _grads(setup, method)
        _, flat = _grads(setup, method, sam="flat", sam_rho=1e-30)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), flat, base)


def test_flat_region_uses_task_perturbed_gradients(setup):
    rho = 0.5
    params, got = _grads(setup, FIXED, sam="flat", sam_rho=rho)
    shared_ref, heads_ref = None, None
    for t in range(2):
        f = _task_loss(setup, t)
        g = jax.grad(f)(params)
        norm = jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(g)))
        g_sam = jax.grad(f)(jax.tree.map(lambda p, gi: p + rho * gi / norm, params, g))
        sh, hd = split_params(g_sam)
        # fixed weights: Agg(g) + Agg(g_sam - g) = Σ w_t g_sam_t on shared; heads get their own g_sam
        sh = jax.tree.map(lambda x: W[t] * x, sh)
        shared_ref = sh if shared_ref is None else jax.tree.map(jnp.add, shared_ref, sh)
        heads_ref = hd if heads_ref is None else jax.tree.map(jnp.add, heads_ref, hd)
    ref = {**shared_ref, **heads_ref}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), got, ref)


def test_adaptive_perturbation_formula():
    g = {"a": jnp.asarray([[3.0, 4.0]]), "b": jnp.asarray([[0.0]])}
    p = {"a": jnp.asarray([2.0, 1.0]), "b": jnp.asarray([5.0])}
    e = perturbations(g, p, 0.1, adaptive=True)
    # θ² ⊙ g / ‖|θ| ⊙ g‖ with |θ| ⊙ g = (6, 4)
    np.testing.assert_allclose(e["a"], 0.1 * jnp.asarray([[12.0, 4.0]]) / np.sqrt(52.0), rtol=1e-6)
    np.testing.assert_allclose(perturbations(g, p, 0.1)["a"], 0.1 * jnp.asarray([[0.6, 0.8]]), rtol=1e-6)


def test_plain_sam_step_uses_ascent_point(setup):
    rho = 0.3
    adversary = optax.chain(optax.contrib.normalize(), optax.sgd(rho))
    tx = optax.contrib.sam(optax.sgd(1.0), adversary, sync_period=2, opaque_mode=True)
    params, got = _grads(setup, get_method("equal"), tx=tx, sam="sam", sam_rho=rho)
    f = lambda p: _task_loss(setup, 0)(p) + _task_loss(setup, 1)(p)  # noqa: E731
    g = jax.grad(f)(params)
    norm = jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(g)))
    ref = jax.grad(f)(jax.tree.map(lambda p, gi: p + rho * gi / norm, params, g))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), got, ref)


def test_sam_config_errors(tmp_path):
    c = base_config()
    c.workdir = str(tmp_path)
    c.optim.sam, c.optim.sam_rho = "flat", 0.0
    with pytest.raises(ConfigError, match="config.optim.sam_rho"):
        validate(c)
    c.optim.sam_rho, c.optim.level = 0.05, "rep"
    with pytest.raises(ConfigError, match="config.optim.level"):
        validate(c)
    c.optim.sam = "sharp"
    with pytest.raises(ConfigError, match="config.optim.sam"):
        validate(c)


def test_rep_mtl_regulariser_enters_the_gradient(setup):
    from mtljax.optim.rep_mtl import rep_mtl_regularizer, task_saliency

    model, tasks, batch, _ = setup
    kw = dict(lambda_entropy=0.9, lambda_align=0.9, temperature=0.1)
    params, got = _grads(setup, get_method("equal"), rep_mtl=kw)

    def objective(p):
        rep, _ = model.apply({"params": p}, batch["inputs"], train=True, method=model.encode)

        def dec(z):
            out = model.apply({"params": p}, {**rep, "pooled": z}, method=model.decode)
            return jnp.stack([t.loss(out[t.name], batch["targets"][t.name], batch["masks"][t.name]) for t in tasks])

        losses, s = task_saliency(dec, rep["pooled"])
        return jnp.sum(losses) + rep_mtl_regularizer(s, **kw)[0]

    ref = jax.grad(objective)(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), got, ref)
    _, plain = _grads(setup, get_method("equal"))
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(plain)))
    assert diff > 1e-6  # the regulariser changes the update
