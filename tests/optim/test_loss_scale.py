"""Loss scaling (mtljax.optim.loss_scale): exact unscaling, rescued float16 gradients, the dynamic schedule,
skipped overflow steps in the train step, and the config key's one-line error."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtljax.config import ConfigError, base_config
from mtljax.models import build_model
from mtljax.models.objective import objective
from mtljax.optim import as_optax, get_method
from mtljax.optim.loss_scale import LossScale, parse_loss_scale, scale_loss_function
from mtljax.optim.task_grads import LossFunction, task_gradients
from mtljax.parallel.mesh import make_mesh
from mtljax.parallel.rules import DEFAULT_RULES, batch_sharding
from mtljax.tasks import Task
from mtljax.trainer.state import create_state
from mtljax.trainer.step import jit_train_step, make_train_step


def _toy(dtype):
    """Two task losses of a 2-layer net computed in ``dtype`` from float32 parameters; an encode/decode split."""
    x = jnp.linspace(-1.0, 1.0, 24, dtype=jnp.float32).reshape(6, 4)

    def encode(p):
        h = jnp.tanh(x.astype(dtype) @ p["w1"].astype(dtype))
        return h, None, {}

    def decode(p, h):
        out = (h @ p["w2"].astype(dtype)).astype(jnp.float32)
        return jnp.stack([jnp.mean(out[:, 0] ** 2), jnp.mean((out[:, 1] - 1.0) ** 2)]), {}

    def losses(p):
        h, _, _ = encode(p)
        ls, aux = decode(p, h)
        return ls, None, aux

    params = {"w1": jnp.sin(jnp.arange(12, dtype=jnp.float32)).reshape(4, 3),
              "w2": jnp.cos(jnp.arange(6, dtype=jnp.float32)).reshape(3, 2)}
    return LossFunction(losses, encode, decode), params


@pytest.mark.parametrize("level", ["param", "gramian", "rep"])
def test_power_of_two_scale_is_exactly_undone(level):
    # multiplying by 2^k and dividing by 2^k is exact in float32: every view equals the unscaled one (up to
    # the summation order XLA picks for the two programs' fusions)
    fn, params = _toy(jnp.float32)
    w = jnp.asarray([0.3, 0.7])

    @jax.jit
    def views(scale):
        f = fn if scale is None else scale_loss_function(fn, scale)
        tg, _ = task_gradients(f, params, level=level)
        return tg.gramian(), tg.update(w, w), tg.losses

    plain, scaled = views(None), views(jnp.float32(2.0 ** 12))
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(scaled)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=1e-9)


def test_scaling_rescues_float16_gradients_that_underflow():
    # d/dp of 1e-5 * sum(p * x) in float16: the cotangent 1e-5 survives, but 1e-5 * x <= 3e-9 is below
    # float16's smallest subnormal (6e-8) and flushes to zero unless the backward pass is scaled
    x = jnp.asarray([1e-4, 2e-4, 3e-4], jnp.float16)

    def losses(p):
        h = p.astype(jnp.float16) * x
        return jnp.stack([jnp.sum(h * jnp.float16(1e-5)).astype(jnp.float32)]), None, {}

    p = jnp.ones(3, jnp.float32)
    fn = LossFunction(losses)
    grad = lambda f: task_gradients(f, p)[0].update(jnp.ones(1), jnp.ones(1))  # noqa: E731
    reference = 1e-5 * np.asarray([1e-4, 2e-4, 3e-4])  # float32 calculus
    assert not np.any(np.asarray(grad(fn)))  # underflow: all zero
    np.testing.assert_allclose(np.asarray(grad(scale_loss_function(fn, jnp.float32(2.0 ** 12)))), reference, rtol=1e-2)


def test_dynamic_schedule():
    ls = LossScale(init=8.0, growth_interval=3)
    state, seen = ls.initial_state(), []
    for finite in [True, True, True, False, True, False, False, False, False, False]:
        state = ls.adjust(state, jnp.asarray(finite))
        seen.append(float(state.scale))
    # doubles after 3 finite steps in a row, halves on each overflow, never below min_scale / factor
    assert seen == [8.0, 8.0, 16.0, 8.0, 8.0, 4.0, 2.0, 1.0, 0.5, 0.5]
    static = LossScale(dynamic=False, init=4.0)
    assert float(static.adjust(static.initial_state(), jnp.asarray(False)).scale) == 4.0


def test_parse_and_bad_value():
    assert parse_loss_scale("auto", "float16").dynamic and parse_loss_scale("auto", "bfloat16") is None
    assert parse_loss_scale("none", "float16") is None and parse_loss_scale(128, "float32").init == 128.0
    for bad in ("dynamc", 0, -2.0, True, float("inf")):
        with pytest.raises(ConfigError) as err:
            parse_loss_scale(bad, "float32")
        assert str(err.value).startswith("config.loss_scale: must be 'auto', 'dynamic', 'none'")


def test_overflow_skips_the_step_and_halves_the_scale():
    # a float16 MLP whose scale starts so high that the scaled gradients overflow: the first steps are
    # skipped (parameters and Adam state kept), the scale halves each time, and training goes on once it fits
    tasks = [Task("a", "regression"), Task("b", "multiclass", num_classes=3)]
    cfg = base_config().model
    cfg.update(backbone="mlp", dtype="float16")
    cfg.mlp.hidden = (16,)
    model = build_model(cfg, tasks, (5,))
    ls = LossScale(init=2.0 ** 40)  # float16 overflows above 65504
    tx = optax.chain(as_optax(get_method("upgrad"), 2), optax.adam(1e-2))
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    rng = np.random.default_rng(0)
    batch = {"inputs": jnp.asarray(rng.standard_normal((8, 5)), jnp.float32),
             "targets": {"a": jnp.asarray(rng.standard_normal(8), jnp.float32),
                         "b": jnp.asarray(rng.integers(0, 3, 8), jnp.int32)},
             "masks": {"a": jnp.ones(8), "b": jnp.ones(8)}}
    with jax.set_mesh(mesh):
        state, shardings, _ = create_state(model, tx, (5,), 0, mesh, DEFAULT_RULES, loss_scale=ls)
        step = jit_train_step(make_train_step(objective(model, tasks), tx, loss_scale=ls), mesh, shardings,
                              batch_sharding(mesh, DEFAULT_RULES))
        before = jax.tree.map(np.asarray, state.params)
        scales, skipped = [], []
        for _ in range(30):
            state, m = step(state, batch)
            assert bool(m["finite"])  # an overflow is not a stop
            scales.append(float(m["aux"]["loss_scale"]))
            skipped.append(float(m["aux"]["skipped_steps"]))
    first_ok = skipped.index(0.0)
    assert 0 < first_ok < 30 and all(s == 1.0 for s in skipped[:first_ok])
    assert scales[:first_ok + 1] == [2.0 ** (40 - i) for i in range(first_ok + 1)]
    assert scales[first_ok] * 2 ** -16 <= 65504  # the scale that fits
    assert int(state.step) == 30  # the counter runs on (the data did); Adam's count does not
    assert int(state.opt_state[1][0].count) == 30 - sum(skipped)
    moved = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, state.params)
    assert all(jax.tree.leaves(moved))


def test_float16_attention_runs_on_cpu():
    # XLA's CPU dot has no float16 x float16 -> float32 form; attend() runs float16 attention in float32 there
    from mtljax.models.layers import attend

    q, k, v = (jnp.asarray(np.random.default_rng(i).standard_normal((2, 5, 4, 8)), jnp.float32) for i in range(3))
    out = jax.jit(attend)(q.astype(jnp.float16), k.astype(jnp.float16), v.astype(jnp.float16))
    assert out.dtype == jnp.float16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(attend(q, k, v)), atol=5e-3)
