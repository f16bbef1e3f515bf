"""The multi-task transform as users compose it: optax wrappers outside and inside, gradient
accumulation, the finite guard, a wrongly shaped input, plain SAM and task-based flat-region SAM.

One tiny pure-JAX model (a shared linear layer and two linear heads, squared losses) is the reference:
every expected value is computed here with ``jax.grad`` / ``jax.jacrev`` from the equations.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtljax.optim import (Method, apply_if_finite, as_optax, flat_sam, get_method, multi_steps, sam, sam_adversary,
                          task_gradients)
from mtljax.optim.flat_sam import perturbations

W = jnp.asarray([0.25, 0.75])
FIXED = Method("fixed", "gramian", init=lambda t: (), weights=lambda l, s, k, gramian=None: (W, s))
SPECIFIC = {"shared": False, "heads_a": False, "heads_b": False}


def _problem(seed=0, n=16):
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    params = {"shared": 0.5 * jax.random.normal(k[0], (3, 4)), "heads_a": jax.random.normal(k[1], (4,)),
              "heads_b": jax.random.normal(k[2], (4,))}
    x, y = jax.random.normal(k[3], (n, 3)), jax.random.normal(k[4], (n, 2))
    return params, x, y


def _losses(params, x, y):
    h = jnp.tanh(x @ params["shared"])
    return jnp.stack([jnp.mean((h @ params["heads_a"] - y[:, 0]) ** 2), jnp.mean((h @ params["heads_b"] - y[:, 1]) ** 2)])


def _fn(x, y):
    return lambda p: (_losses(p, x, y), None, {})


def _specific(params):
    return {k: k.startswith("heads_") for k in params}


def test_wrongly_shaped_input_names_the_missing_task_axis():
    params, x, y = _problem()
    tx = optax.chain(as_optax(get_method("upgrad"), 2), optax.adam(1e-3))
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"\['heads_a'\] has the parameter's shape \(4,\): the leading task axis "
                                         r"\(size 2\) is missing"):
        tx.update(jax.grad(lambda p: _losses(p, x, y).sum())(params), state, params, losses=jnp.ones(2))
    jac = jax.jacrev(_losses)(params, x, y)
    with pytest.raises(ValueError, match=r"has shape \(2, 4\), expected \[3, \*\(4,\)\]"):
        optax.chain(as_optax(get_method("upgrad"), 3), optax.adam(1e-3)).update(
            jac, tx.init(params), params, losses=jnp.ones(2))
    with pytest.raises(ValueError, match="pass losses"):
        tx.update(jac, state, params)


def test_wrappers_from_outside_and_inside():
    """inject_hyperparams around the whole chain; optax.apply_if_finite / masked inside, after the
    multi-task transform; mtljax.optim.apply_if_finite around it. All give UPGrad's update."""
    params, x, y = _problem()
    jac, losses = jax.jacrev(_losses)(params, x, y), _losses(params, x, y)
    mt = as_optax(get_method("upgrad"), 2)
    ref_tx = optax.chain(mt, optax.sgd(0.1))
    ref, _ = ref_tx.update(jac, ref_tx.init(params), params, losses=losses)
    txs = [
        optax.inject_hyperparams(lambda learning_rate: optax.chain(mt, optax.sgd(learning_rate)))(learning_rate=0.1),
        optax.chain(mt, optax.apply_if_finite(optax.sgd(0.1), 2)),
        optax.chain(mt, optax.masked(optax.sgd(0.1), jax.tree.map(lambda _: True, params))),
        apply_if_finite(optax.chain(mt, optax.sgd(0.1)), 2),
    ]
    for tx in txs:
        got, _ = jax.jit(lambda j, s, p, l, tx=tx: tx.update(j, s, p, losses=l))(jac, tx.init(params), params, losses)
        chex.assert_trees_all_close(got, ref, rtol=1e-6)


def test_apply_if_finite_skips_a_nan_step_and_keeps_state():
    params, x, y = _problem()
    tx = apply_if_finite(optax.chain(as_optax(get_method("famo"), 2), optax.adam(0.1)), 3)
    jac, losses = jax.jacrev(_losses)(params, x, y), _losses(params, x, y)
    state = tx.init(params)
    upd, state = tx.update(jac, state, params, losses=losses)
    bad = jax.tree.map(lambda j: j.at[0].set(jnp.nan), jac)
    skipped, after = tx.update(bad, state, params, losses=losses)
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(skipped))
    chex.assert_trees_all_equal(after.inner_state, state.inner_state)
    assert int(after.notfinite_count) == 1 and int(after.total_notfinite) == 1


def test_multi_steps_equals_the_large_batch():
    """Accumulating per-task gradients over 2 micro-batches and applying the method once equals the
    method on the whole batch (the mean of per-task gradients, not of combined updates)."""
    params, x, y = _problem(n=16)
    key = jax.random.PRNGKey(3)

    def run(method):
        ref_tx = optax.chain(as_optax(method, 2), optax.sgd(1.0))
        ref, _ = ref_tx.update(jax.jacrev(_losses)(params, x, y), ref_tx.init(params), params,
                               losses=_losses(params, x, y), key=key)
        tx = multi_steps(optax.chain(as_optax(method, 2), optax.sgd(1.0)), 2, 2)
        state, outs = tx.init(params), []
        for half in (slice(0, 8), slice(8, 16)):
            xs, ys = x[half], y[half]
            out, state = tx.update(jax.jacrev(_losses)(params, xs, ys), state, params, losses=_losses(params, xs, ys),
                                   key=key)
            outs.append(out)
        return ref, outs

    for name in ("upgrad", "graddrop"):
        ref, (first, second) = jax.jit(lambda: run(get_method(name)))()
        assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(first))
        chex.assert_trees_all_close(second, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("level", ["param", "gramian"])
def test_heads_get_their_own_gradient_or_the_weighted_one(level):
    params, x, y = _problem()
    grads, _ = task_gradients(_fn(x, y), params, level=level, specific=_specific(params))
    jac = jax.jacrev(_losses)(params, x, y)
    for heads, coef in (("task", jnp.ones(2)), ("weighted", W)):
        tx = as_optax(FIXED, 2, heads=heads)
        got, _ = tx.update(grads, tx.init(params), params)
        want = {"shared": jnp.tensordot(W, jac["shared"], 1), "heads_a": coef[0] * jac["heads_a"][0],
                "heads_b": coef[1] * jac["heads_b"][1]}
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(grads.gramian(), np.einsum("tij,sij->ts", jac["shared"], jac["shared"]), rtol=1e-5)


def test_plain_sam_takes_the_gradient_at_the_ascent_point():
    rho = 0.3
    params, x, y = _problem()
    mt = as_optax(get_method("equal"), 2)
    tx = sam(optax.chain(mt, optax.sgd(1.0)), sam_adversary(mt, rho))
    got, _ = jax.jit(lambda p: tx.update(task_gradients(_fn(x, y), p)[0], tx.init(p), p))(params)
    total = lambda p: _losses(p, x, y).sum()  # noqa: E731
    g = jax.grad(total)(params)
    norm = optax.global_norm(g)
    want = jax.tree.map(lambda d: -d, jax.grad(total)(jax.tree.map(lambda p, gi: p + rho * gi / norm, params, g)))
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-7)


def _flat_reference(params, x, y, rho, balls):
    """Σ_t w_t ∇_shared L_t(θ + e_t) and ∇_head_t L_t(θ + e_t) with e_t from task t's gradient."""
    shared = jnp.zeros_like(params["shared"])
    heads = {}
    for t, head in enumerate(("heads_a", "heads_b")):
        g = jax.grad(lambda p: _losses(p, x, y)[t])(params)
        n_s, n_h = jnp.linalg.norm(g["shared"]), jnp.linalg.norm(g[head])
        if balls == "joint":
            n_s = n_h = jnp.sqrt(n_s ** 2 + n_h ** 2)
        moved = {**params, "shared": params["shared"] + rho * g["shared"] / n_s, head: params[head] + rho * g[head] / n_h}
        g_sam = jax.grad(lambda p: _losses(p, x, y)[t])(moved)
        shared, heads[head] = shared + W[t] * g_sam["shared"], g_sam[head]
    return {"shared": shared, **heads}


@pytest.mark.parametrize("balls", ["separate", "joint"])
def test_flat_sam_uses_task_perturbed_gradients(balls):
    rho = 0.5
    params, x, y = _problem()
    tx = flat_sam(as_optax(FIXED, 2), rho, balls=balls)
    grads, _ = task_gradients(_fn(x, y), params, specific=_specific(params))
    got, _ = tx.update(grads, tx.init(params), params)
    chex.assert_trees_all_close(got, _flat_reference(params, x, y, rho, balls), rtol=1e-5, atol=1e-6)
    # rho = 0: the base method
    zero, base_tx = flat_sam(as_optax(FIXED, 2), 0.0), as_optax(FIXED, 2)
    grads, _ = task_gradients(_fn(x, y), params, specific=_specific(params))
    base, _ = base_tx.update(task_gradients(_fn(x, y), params, specific=_specific(params))[0], base_tx.init(params),
                             params)
    chex.assert_trees_all_close(zero.update(grads, zero.init(params), params)[0], base, rtol=1e-5, atol=1e-7)


def test_adaptive_perturbation_formula():
    g, p = [jnp.asarray([[3.0, 4.0]])], [jnp.asarray([2.0, 1.0])]
    e, _ = perturbations(g, [], p, [], 0.1, adaptive=True)
    # θ² ⊙ g / ‖|θ| ⊙ g‖ with |θ| ⊙ g = (6, 4)
    np.testing.assert_allclose(e[0], 0.1 * jnp.asarray([[12.0, 4.0]]) / np.sqrt(52.0), rtol=1e-6)
    np.testing.assert_allclose(perturbations(g, [], p, [], 0.1)[0][0], 0.1 * jnp.asarray([[0.6, 0.8]]), rtol=1e-6)
