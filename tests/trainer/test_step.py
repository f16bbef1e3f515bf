"""The train step at every gradient level gives the method the Gramian of the task gradients (against
``jax.jacrev``), applies ``Jᵀ w`` to the shared parameters and each task's own gradient to its head;
the representation level takes the Gramian at the shared representation; on a mesh the sharded
Gramian equals the single-device one."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtljax.config import base_config
from mtljax.data import build_dataset, train_dataset, train_iterator
from mtljax.models import build_model
from mtljax.models.objective import heads_mask, objective, task_losses
from mtljax.optim import as_optax
from mtljax.optim.base import Method
from mtljax.optim.jacobian import sharded_gramian
from mtljax.optim.task_grads import Partition
from mtljax.parallel.mesh import make_mesh
from mtljax.parallel.rules import DEFAULT_RULES, batch_sharding
from mtljax.trainer import step as st
from mtljax.trainer.state import create_state

W = jnp.asarray([0.3, 0.7])


def recording_method():
    """Fixed weights; keeps the Gramian it was given in its state (to check it against jax.jacrev)."""
    return Method("record", "gramian", init=lambda t: jnp.zeros((t, t)), weights=lambda l, s, k, gramian=None: (W, gramian))


@pytest.fixture(scope="module")
def setup():
    c = base_config()
    c.data.num_train, c.data.num_test = 128, 32
    c.model.backbone = "mlp"  # cheap to compile; the levels do not depend on the backbone
    c.model.mlp.hidden = (16, 16)
    data = build_dataset(c.data)
    model = build_model(c.model, data.tasks, data.input_shape)
    batch = next(train_iterator(train_dataset(data.splits["train"], data.tasks, 16, 0), prefetch=0))
    return model, data.tasks, batch


def _one_step(setup, level, chunk_size=None, mesh_shape=None, warmup=0):
    model, tasks, batch = setup
    devices = jax.devices() if mesh_shape else jax.devices()[:1]
    mesh = make_mesh(mesh_shape or {"data": 1}, devices)
    tx = optax.chain(as_optax(recording_method(), len(tasks)), optax.sgd(1.0))  # update = minus the gradient
    with jax.set_mesh(mesh):
        state, shardings, _ = create_state(model, tx, (16, 16, 1), 0, mesh, DEFAULT_RULES)
        gramian_fn = None
        if mesh_shape:
            specs = jax.tree.map(lambda s: s.spec, shardings.params)
            shared_specs, _ = Partition(specs, heads_mask(specs)).split(specs)
            gramian_fn = lambda rows: sharded_gramian(rows, mesh, shared_specs)  # noqa: E731
        fn = st.make_train_step(objective(model, tasks), tx, level=level, chunk_size=chunk_size, gramian_fn=gramian_fn)
        bsh = batch_sharding(mesh)
        gbatch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(bsh, np.asarray(x)), batch)
        step = st.jit_train_step(fn, mesh, shardings, bsh)
        for _ in range(warmup):  # heads start at zero: move away so representation gradients are non-zero
            state, _ = step(state, gbatch)
        before = jax.device_get(state.params)
        new, metrics = step(state, gbatch)
        grads = jax.tree.map(lambda a, b: a - b, before, jax.device_get(new.params))
        return before, grads, np.asarray(new.opt_state[0].inner), metrics


def _reference(setup, params):
    model, tasks, batch = setup

    def losses(p):
        outputs, _ = model.apply({"params": p}, batch["inputs"], train=True)
        return task_losses(tasks, outputs, batch)

    jac = jax.jacrev(losses)(params)
    shared = {k: v for k, v in jac.items() if not k.startswith("heads_")}
    flat = jnp.concatenate([x.reshape(2, -1) for x in jax.tree.leaves(shared)], axis=1)
    grads = {k: (jax.tree.map(lambda j: jnp.tensordot(W, j, axes=1), v) if k in shared else
                 jax.tree.map(lambda j: j.sum(0), v)) for k, v in jac.items()}
    return flat @ flat.T, grads


def _close(a, b, **kw):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kw), a, b)


@pytest.mark.parametrize("level,chunk", [("param", None), ("param", 1), ("gramian", None), ("gramian", 1)])
def test_param_levels_give_jacobian_gramian_and_weighted_update(setup, level, chunk):
    params, grads, gram, metrics = _one_step(setup, level, chunk)
    ref_gram, ref_grads = _reference(setup, params)
    np.testing.assert_allclose(gram, ref_gram, rtol=1e-4, atol=1e-7)
    _close(grads, ref_grads, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["task_weights"], W)


@pytest.mark.parametrize("chunk", [None, 1])  # each task's gradient from its own head / the decoder's pullback
def test_rep_level_update_equals_weighted_gradient(setup, chunk):
    model, tasks, batch = setup
    params, grads, gram, _ = _one_step(setup, "rep", chunk_size=chunk, warmup=1)
    _, ref_grads = _reference(setup, params)
    # the update is exact (chain rule); only the Gramian differs: it is taken w.r.t. the representation
    _close(grads, ref_grads, rtol=1e-4, atol=1e-6)

    def rep_losses(rep):
        return task_losses(tasks, model.apply({"params": params}, rep, method=model.decode), batch)

    rep, _ = model.apply({"params": params}, batch["inputs"], train=True, method=model.encode)
    jz = jax.jacrev(rep_losses)(rep)
    flat = jnp.concatenate([x.reshape(2, -1) for x in jax.tree.leaves(jz)], axis=1)
    np.testing.assert_allclose(gram, flat @ flat.T, rtol=1e-4, atol=1e-9)
    assert gram[0, 0] > 0


def test_sharded_gramian_step_equals_single_device(setup):
    _, grads1, gram1, _ = _one_step(setup, "param")
    _, grads8, gram8, _ = _one_step(setup, "param", mesh_shape={"data": 2, "expert": 2, "model": 2})
    np.testing.assert_allclose(gram8, gram1, rtol=1e-4, atol=1e-7)
    _close(grads8, grads1, rtol=1e-4, atol=1e-6)
