"""The objective hook: Rep-MTL's regulariser reaches the gradient by double backprop, is taken where
the task decoders read (patch tokens for dense tasks), and refuses tasks that read different
representations; the slimmable model's objective averages each task's loss over its configurations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtljax.config import base_config
from mtljax.data import build_dataset, train_dataset, train_iterator
from mtljax.models import build_model
from mtljax.models.objective import Objective, objective, task_losses
from mtljax.optim import as_optax, get_method
from mtljax.optim.rep_mtl import rep_mtl_regularizer, task_saliency, with_rep_mtl
from mtljax.tasks import Task
from mtljax.trainer import step as st

KW = dict(lambda_entropy=0.9, lambda_align=0.9, temperature=0.1)


@pytest.fixture(scope="module")
def mlp():
    c = base_config()
    c.data.num_train, c.data.num_test = 64, 16
    c.model.backbone = "mlp"
    c.model.mlp.hidden = (8,)
    data = build_dataset(c.data)
    model = build_model(c.model, data.tasks, data.input_shape)
    batch = next(train_iterator(train_dataset(data.splits["train"], data.tasks, 16, 0), prefetch=0))
    params = model.init(jax.random.PRNGKey(0), batch["inputs"][:1])["params"]
    # move off the zero-initialised heads so every task has a saliency
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(7), p.shape), params)
    return model, data.tasks, batch, params


def _update(obj, params, batch, num_tasks):
    tx = optax.chain(as_optax(get_method("equal"), num_tasks), optax.sgd(1.0))
    state = st.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=jax.random.PRNGKey(0))
    new, _ = jax.jit(st.make_train_step(obj, tx))(state, batch)
    return jax.tree.map(lambda a, b: a - b, params, new.params)


def test_rep_mtl_regulariser_enters_the_gradient(mlp):
    model, tasks, batch, params = mlp
    base = objective(model, tasks)
    got = _update(with_rep_mtl(base, **KW), params, batch, len(tasks))

    def total(p):  # Eq. 10 with equal weights, the saliency at the pooled representation NOT stop-gradiented
        rep, _ = model.apply({"params": p}, batch["inputs"], train=True, method=model.encode)

        def dec(z):
            return task_losses(tasks, model.apply({"params": p}, {**rep, "pooled": z}, method=model.decode), batch)

        losses, s = task_saliency(dec, rep["pooled"])
        return jnp.sum(losses) + rep_mtl_regularizer(s, **KW)[0]

    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), got,
                 jax.jit(jax.grad(total))(params))
    plain = _update(base, params, batch, len(tasks))
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(plain))) > 1e-6


def _dense_objective(tasks):
    """Tokens [B, N, C] from a linear encoder; dense tasks read tokens, others the mean token."""
    def encode(p, batch, *, rng=None):
        tokens = jnp.tanh(batch["inputs"] @ p["enc"])
        return {"tokens": tokens, "pooled": tokens.mean(1)}, {"losses": {}, "metrics": {}}

    def decode(p, rep, batch):
        out = {t.name: rep["tokens"] @ p[t.name] if t.is_dense else rep["pooled"] @ p[t.name] for t in tasks}
        return task_losses(tasks, out, batch), out

    def forward(p, batch, *, train, rng=None, step=None):
        rep, aux = encode(p, batch)
        losses, out = decode(p, rep, batch)
        return losses, out, aux

    return Objective(tuple(tasks), forward, encode, decode, tuple("tokens" if t.is_dense else "pooled" for t in tasks))


def test_rep_mtl_on_dense_tasks_takes_the_saliency_at_the_tokens():
    """Before: the saliency was taken at the pooled representation, which dense decoders do not read,
    so it was exactly zero and the regulariser a constant. Now it is taken at the tokens."""
    tasks = (Task("segment", "dense", num_classes=3), Task("edges", "dense", num_classes=2))
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    params = {"enc": jax.random.normal(k[0], (3, 4)), "segment": jax.random.normal(k[1], (4, 3)),
              "edges": jax.random.normal(k[2], (4, 2))}
    batch = {"inputs": jax.random.normal(k[3], (4, 5, 3)),
             "targets": {t.name: jax.random.randint(k[4], (4, 5), 0, t.num_classes) for t in tasks},
             "masks": {t.name: jnp.ones((4, 5)) for t in tasks}}
    new = with_rep_mtl(_dense_objective(tasks), **KW)
    # the old rule (saliency at the pooled representation, which dense decoders do not read): constant
    old = with_rep_mtl(dataclasses.replace(_dense_objective(tasks), rep_keys=("pooled", "pooled")), **KW)

    @jax.jit
    def probe(p):
        moved = {**p, "enc": p["enc"] * 1.5}
        out = {}
        for name, obj in (("new", new), ("old", old)):
            reg = lambda q, obj=obj: obj.forward(q, batch, train=True)[2]["losses"]["rep_mtl"]  # noqa: E731
            out[name] = (jnp.abs(jax.grad(reg)(p)["enc"]).max(), reg(moved) - reg(p))
        return out

    got = probe(params)
    assert float(got["new"][0]) > 1e-4 and abs(float(got["new"][1])) > 1e-4  # depends on the encoder
    assert float(got["old"][0]) == 0.0 and float(got["old"][1]) == 0.0


def test_rep_mtl_refuses_tasks_reading_different_representations():
    tasks = (Task("seg", "dense", num_classes=3), Task("label", "multiclass", num_classes=3))
    with pytest.raises(ValueError, match="read different representations"):
        with_rep_mtl(_dense_objective(tasks), **KW)
    no_rep = Objective(tasks, forward=lambda *a, **k: None)
    with pytest.raises(ValueError, match="shared by all tasks"):
        with_rep_mtl(no_rep)
