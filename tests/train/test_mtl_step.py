"""The multi-task train step: every gradient level gives the method the right Gramian and applies
``Jᵀ w`` to the shared parameters and own-task gradients to the heads; sharded equals unsharded."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtljax.config import base_config
from mtljax.data import build_dataset, train_dataset, train_iterator
from mtljax.models import build_model
from mtljax.models.hps import split_params
from mtljax.optim.base import Method
from mtljax.optim.jacobian import sharded_gramian
from mtljax.parallel.mesh import make_mesh
from mtljax.parallel.rules import DEFAULT_RULES, batch_sharding
from mtljax.train import step as st
from mtljax.train.state import create_state

W = jnp.asarray([0.3, 0.7])


def recording_method():
    """Fixed weights; stores the Gramian it was given (to check it against jax.jacrev)."""

    def weights(losses, state, key, *, gramian=None):
        return W, gramian

    return Method("record", "gramian", init=lambda t: jnp.zeros((t, t)), weights=weights)


def _setup(devices, mesh_shape):
    c = base_config()
    c.data.num_train, c.data.num_test = 128, 32
    c.model.vit.update(width=16, depth=1, num_heads=2, mlp_dim=32)
    data = build_dataset(c.data)
    model = build_model(c.model, data.tasks, data.input_shape)
    mesh = make_mesh(mesh_shape, devices)
    batch = next(train_iterator(train_dataset(data.splits["train"], data.tasks, 16, 0), prefetch=0))
    return model, data.tasks, mesh, batch


def _one_step(model, tasks, mesh, batch, level, chunk_size=None, sharded_g=False, warmup=0):
    tx = optax.sgd(1.0)  # the update is minus the gradient
    method = recording_method()
    with jax.set_mesh(mesh):
        state, shardings, _ = create_state(model, tx, (16, 16, 1), 0, mesh, DEFAULT_RULES,
                                           lambda: method.init(len(tasks)))
        gfn = None
        if sharded_g:
            specs = jax.tree.map(lambda s: s.spec, split_params(shardings.params)[0])
            gfn = lambda js: sharded_gramian(js, mesh, specs)  # noqa: E731
        fn = st.make_train_step(model, tasks, tx, method=method, level=level, chunk_size=chunk_size,
                                gramian_fn=gfn)
        bsh = batch_sharding(mesh)
        gbatch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(bsh, np.asarray(x)), batch)
        step = st.jit_train_step(fn, mesh, shardings, bsh)
        for _ in range(warmup):  # heads start at zero: move away so representation gradients are non-zero
            state, _ = step(state, gbatch)
        before = jax.device_get(state.params)
        new, metrics = step(state, gbatch)
        grads = jax.tree.map(lambda a, b: a - b, before, jax.device_get(new.params))
        return before, grads, np.asarray(new.mtl_state), metrics


def _reference(model, tasks, params, batch):
    rng = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(0), 0))[0]
    del rng  # dropout is off in these models: the key does not matter

    def losses(p):
        return st.task_losses(model, tasks, p, batch, train=True)[0]

    jac = jax.jacrev(losses)(params)
    shared, heads = split_params(jac)
    flat = jnp.concatenate([x.reshape(2, -1) for x in jax.tree.leaves(shared)], axis=1)
    gram = flat @ flat.T
    g_shared = jax.tree.map(lambda j: jnp.tensordot(W, j, axes=1), shared)
    g_heads = jax.tree.map(lambda j: j.sum(0), heads)
    return gram, {**g_shared, **g_heads}


@pytest.mark.parametrize("level,chunk", [("param", None), ("param", 1), ("gramian", None), ("gramian", 1)])
def test_param_levels_give_jacobian_gramian_and_weighted_update(level, chunk):
    model, tasks, mesh, batch = _setup(jax.devices()[:1], {"data": 1})
    params, grads, gram, _ = _one_step(model, tasks, mesh, batch, level, chunk)
    ref_gram, ref_grads = _reference(model, tasks, params, batch)
    np.testing.assert_allclose(gram, ref_gram, rtol=1e-4, atol=1e-7)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, ref_grads)


def test_rep_level_update_equals_weighted_gradient():
    model, tasks, mesh, batch = _setup(jax.devices()[:1], {"data": 1})
    params, grads, gram, _ = _one_step(model, tasks, mesh, batch, "rep", warmup=1)
    _, ref_grads = _reference(model, tasks, params, batch)
    # the update is exact (chain rule); only the Gramian differs: it is taken w.r.t. the representation
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, ref_grads)

    def rep_losses(rep):
        out = model.apply({"params": params}, rep, method=model.decode)
        return jnp.stack([t.loss(out[t.name], batch["targets"][t.name], batch["masks"][t.name]) for t in tasks])

    rep, _ = model.apply({"params": params}, batch["inputs"], train=True, method=model.encode)
    jz = jax.jacrev(rep_losses)(rep)
    flat = jnp.concatenate([x.reshape(2, -1) for x in jax.tree.leaves(jz)], axis=1)
    np.testing.assert_allclose(gram, flat @ flat.T, rtol=1e-4, atol=1e-9)
    assert gram[0, 0] > 0


def test_sharded_gramian_step_equals_single_device():
    model, tasks, mesh1, batch = _setup(jax.devices()[:1], {"data": 1})
    _, grads1, gram1, _ = _one_step(model, tasks, mesh1, batch, "param")
    mesh8 = make_mesh({"data": 2, "expert": 2, "model": 2}, jax.devices())
    _, grads8, gram8, _ = _one_step(model, tasks, mesh8, batch, "param", sharded_g=True)
    np.testing.assert_allclose(gram8, gram1, rtol=1e-4, atol=1e-7)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads8, grads1)


def test_jacobian_methods_need_param_level():
    model, tasks, _, _ = _setup(jax.devices()[:1], {"data": 1})
    m = Method("agg", "jacobian", init=lambda t: (), aggregate=lambda j, l, s, k: (j, s))
    with pytest.raises(ValueError, match="config.optim.level"):
        st.make_train_step(model, tasks, optax.sgd(1.0), method=m, level="rep")
