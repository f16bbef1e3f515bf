"""Per-task Jacobians and Gramians equal jax.jacrev's, chunked or not, sharded with one all-reduce."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from mtljax.optim import as_optax, get_method
from mtljax.optim.jacobian import sharded_gramian, task_gramian, task_jacobian
from mtljax.optim.solvers import box_qp, min_norm_simplex, regularize

T = 5


def _problem():
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    params = {"w": jax.random.normal(k[0], (8, 16)), "b": jax.random.normal(k[1], (16,)),
              "h": jax.random.normal(k[2], (16, T))}
    x = jax.random.normal(k[0], (32, 8))

    def losses(p):
        z = jnp.tanh(x @ p["w"] + p["b"]) @ p["h"]
        return jnp.mean(z ** 2, axis=0) + jnp.arange(T, dtype=jnp.float32) * jnp.mean(z, axis=0)

    ref = jax.jacrev(losses)(params)
    gram = sum(v.reshape(T, -1) @ v.reshape(T, -1).T for v in ref.values())
    return params, losses, ref, gram


@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 5])
def test_jacobian_and_gramian_match_jacrev(chunk):
    params, losses, ref, gram = _problem()
    out, jac, vjp_fn = task_jacobian(losses, params, chunk_size=chunk)
    np.testing.assert_allclose(out, losses(params), rtol=1e-6)
    for k in params:
        np.testing.assert_allclose(jac[k], ref[k], rtol=1e-5, atol=1e-6)
    _, g, vjp2 = task_gramian(losses, params, chunk_size=chunk)
    np.testing.assert_allclose(g, gram, rtol=1e-5)
    w = jnp.linspace(0.1, 1.0, T)
    combined = vjp2(w)[0]
    for k in params:
        np.testing.assert_allclose(combined[k], jnp.tensordot(w, ref[k], axes=1), rtol=1e-5, atol=1e-6)


def test_bad_chunk_size():
    params, losses, _, _ = _problem()
    with pytest.raises(ValueError, match="chunk_size"):
        task_gramian(losses, params, chunk_size=0)


@pytest.mark.parametrize("specs", [
    {"w": P(None, "model"), "b": P("model"), "h": P("model", None)},
    {"w": P("data", None), "b": P(None), "h": P("model", None)},
])
def test_sharded_gramian_single_all_reduce(specs):
    params, losses, ref, gram = _problem()
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    jac = {k: jax.device_put(ref[k], NamedSharding(mesh, P(None, *specs[k]))) for k in ref}
    fn = jax.jit(lambda j: sharded_gramian(j, mesh, specs))
    np.testing.assert_allclose(fn(jac), gram, rtol=1e-5)
    hlo = fn.lower(jac).compile().as_text()
    assert hlo.count("all-reduce(") + hlo.count("all-reduce-start(") == 1
    assert "all-gather" not in hlo


def test_solvers_reach_scipy_optimum():
    scipy_optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(0)
    for t in (2, 3, 6):
        j = rng.standard_normal((t, 12))
        j[1] = -0.8 * j[0] + 0.1 * j[1]
        g = j @ j.T
        w = np.asarray(min_norm_simplex(jnp.asarray(g)))
        ref = scipy_optimize.minimize(lambda v: v @ g @ v, np.ones(t) / t, method="SLSQP", bounds=[(0, None)] * t,
                                      constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1}],
                                      options=dict(ftol=1e-14, maxiter=1000))
        assert abs(w.sum() - 1) < 1e-5 and w.min() >= 0 and w @ g @ w <= ref.fun * (1 + 1e-4) + 1e-7
        u = np.eye(t)[0]
        v = np.asarray(box_qp(regularize(jnp.asarray(g)), jnp.asarray(u)))
        assert np.all(v >= u - 1e-7) and np.all(g @ v >= -1e-4 * np.abs(g).max())  # J(Jᵀv) ≥ 0: dual cone


def test_as_optax_chains_with_adam():
    tx = optax.chain(as_optax(get_method("equal"), 3), optax.adam(1e-2))
    params = {"a": jnp.ones((4,)), "b": jnp.ones((2, 2))}
    jac = {"a": jnp.arange(12.0).reshape(3, 4), "b": jnp.ones((3, 2, 2))}
    state = tx.init(params)
    updates, state = jax.jit(lambda j, s, p: tx.update(j, s, p, losses=jnp.ones(3)))(jac, state, params)
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)
    with pytest.raises(ValueError, match="leading task axis of size 3"):
        tx.update({"a": jnp.ones((2, 4)), "b": jnp.ones((2, 2, 2))}, state, params, losses=jnp.ones(2))
    with pytest.raises(ValueError, match="unknown method"):
        get_method("sgd-magic")
