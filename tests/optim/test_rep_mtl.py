"""Rep-MTL regularisers: the paper's Eqs. 4–10 against dense references, their defining properties,
numerical safety, validation, and double backprop through the saliency."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.optim.rep_mtl import (EPS, LAMBDA_ALIGN, LAMBDA_ENTROPY, TEMPERATURE, alignment_loss,
                                  entropy_penalty, regularized_objective, rep_mtl_regularizer,
                                  task_saliency)


def _rand(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# jitted entry points: one compilation per shape keeps the file fast on a small CPU
_HYPER = ("lambda_entropy", "lambda_align", "temperature", "eps", "positive_in_denominator")
reg_fn = jax.jit(rep_mtl_regularizer, static_argnames=_HYPER)
ent_fn = jax.jit(entropy_penalty, static_argnames=("eps",))
align_fn = jax.jit(alignment_loss, static_argnames=_HYPER[2:])
reg_grad = jax.jit(jax.grad(lambda s: rep_mtl_regularizer(s)[0]))
S0 = (3, 4, 5, 6)  # the shape most tests share, so their compilations are reused


@jax.jit
def _three_terms(S):
    return (entropy_penalty(S), alignment_loss(S, temperature=0.5),
            alignment_loss(S, temperature=0.2, positive_in_denominator=True))


# ------------------------------------------------------------------ dense references (Eqs. 4–9)

def _ref_entropy(S):
    S = np.asarray(S, np.float64)
    t, b, c = S.shape[0], S.shape[1], S.shape[-1]
    S = S.reshape(t, b, -1, c)
    shat = np.abs(S.mean(-1))  # Eq. 4, |.| of Eq. 5
    p = shat / shat.sum(0, keepdims=True)  # Eq. 5
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(0)
    return h.mean()  # Eq. 6


def _ref_alignment(S, tau, positive_in_denominator=False):
    S = np.asarray(S, np.float64)
    t, b, c = S.shape[0], S.shape[1], S.shape[-1]
    S = S.reshape(t, b, -1, c)
    unit = lambda m: m.ravel() / np.linalg.norm(m)  # noqa: E731
    M = [[unit(S[k, i].T @ S[k, i]) for i in range(b)] for k in range(t)]  # Eq. 7, C x C
    A = [S[:, i].mean(1).T for i in range(b)]  # Eq. 8, C x T
    Z = [unit(a @ a.T) for a in A]
    total = 0.0
    for i in range(b):
        negs = [np.exp(Z[i] @ Z[k] / tau) for k in range(b) if k != i]
        for k in range(t):
            pos = np.exp(Z[i] @ M[k][i] / tau)
            denom = sum(negs) + (pos if positive_in_denominator else 0.0)
            total += -np.log(pos / denom)  # Eq. 9
    return total / (b * t)


# (2, 3, 7, 2): P > C, the C x C Gram side; (2, 3, 2, 7): P < C, the P x P side
@pytest.mark.parametrize("shape", [(3, 4, 6), (2, 3, 7, 2), (2, 3, 2, 7), (3, 2, 2, 3, 5)])
def test_matches_dense_reference(shape):
    S = _rand(shape, 1)
    h, a, a_infonce = _three_terms(S)
    np.testing.assert_allclose(h, _ref_entropy(S), rtol=1e-5)
    np.testing.assert_allclose(a, _ref_alignment(S, 0.5), rtol=1e-4)
    np.testing.assert_allclose(a_infonce, _ref_alignment(S, 0.2, True), rtol=1e-4)


# ------------------------------------------------------------------------- TSR properties (Eq. 6)

def test_entropy_zero_when_each_element_salient_for_one_task():
    T, B, N, C = 3, 4, 5, 6
    owner = np.random.default_rng(0).integers(0, T, (B, N))
    onehot = jnp.asarray(np.eye(T, dtype=np.float32)[owner].transpose(2, 0, 1)[..., None])  # [T, B, N, 1]
    mag = jnp.abs(_rand((T, B, N, C), 3)) + 0.1  # positive channels: nonzero channel mean
    S = onehot * mag * jnp.where(_rand((T, B, N, 1), 4) > 0, 1.0, -1.0)
    assert float(ent_fn(S)) == pytest.approx(0.0, abs=1e-5)


def test_entropy_maximal_log_t_when_spread_uniformly():
    T, B, N, C = S0
    base = jnp.abs(_rand((1, B, N, C), 5)) + 0.1
    signs = jnp.where(_rand((T, 1, 1, 1), 6) > 0, 1.0, -1.0)  # |.| makes the sign irrelevant
    S = signs * jnp.broadcast_to(base, (T, B, N, C))
    uniform = float(ent_fn(S))
    assert uniform == pytest.approx(math.log(T), rel=1e-5)
    rand = float(ent_fn(_rand((T, B, N, C), 7)))
    assert 0.0 < rand < uniform


def test_entropy_uses_signed_channel_mean_first():
    # task 0: channels (+1, -1) -> channel mean 0; task 1: (1, 1) -> all saliency on task 1
    S = jnp.asarray([[[1.0, -1.0]], [[1.0, 1.0]]])  # [T=2, B=1, C=2]
    assert float(ent_fn(S)) == pytest.approx(0.0, abs=1e-6)
    S = jnp.asarray([[[1.0, 1.0]], [[1.0, 1.0]]])
    assert float(ent_fn(S)) == pytest.approx(math.log(2), rel=1e-6)


# ------------------------------------------------------------------------- CSA properties (Eq. 9)

@pytest.mark.parametrize("shape", [(3, 8, 16), (3, 8, 6, 16)])
def test_alignment_lower_when_tasks_agree_per_sample(shape):
    # 16 random problems at once; channels well above T so the positives, not chance similarities
    # between the anchors of different samples, decide the comparison
    draws = 16
    shared = _rand((draws, 1) + shape[1:], 11)
    aligned = jnp.broadcast_to(shared, (draws,) + shape)  # identical saliency for every task
    noise = _rand((draws,) + shape, 12)  # independent saliency per task
    half = shared + 0.5 * noise  # partly shared
    batched = jax.jit(jax.vmap(lambda s: alignment_loss(s)))
    la, lh, lr = (np.asarray(batched(s)) for s in (aligned, half, noise))
    assert np.all(la < lr) and np.all(la < lh), (la, lh, lr)
    assert la.mean() < lh.mean() < lr.mean(), (la.mean(), lh.mean(), lr.mean())


def test_alignment_pooled_identical_tasks_reach_cosine_one():
    # P = 1: M_{t,b} = s sᵀ and Â_b = T s sᵀ -> every positive cosine is 1
    S = jnp.broadcast_to(_rand((1, 5, 7), 13), (3, 5, 7))
    tau = 0.5
    got = float(align_fn(S, temperature=tau))
    Sb = np.asarray(S[0], np.float64)
    z = np.stack([np.outer(s, s).ravel() / np.linalg.norm(np.outer(s, s)) for s in Sb])
    sims = z @ z.T / tau
    want = np.mean([-1.0 / tau + np.log(np.sum(np.exp(np.delete(sims[i], i)))) for i in range(5)])
    np.testing.assert_allclose(got, want, rtol=1e-5)


# ----------------------------------------------------------------------------- combination (Eq. 10)

def test_defaults_and_linear_combination():
    assert (LAMBDA_ENTROPY, LAMBDA_ALIGN, TEMPERATURE) == (0.9, 0.9, 0.1)
    S = _rand(S0, 20)
    reg, m = reg_fn(S)
    h, a = ent_fn(S), align_fn(S)
    np.testing.assert_allclose(reg, 0.9 * h + 0.9 * a, rtol=1e-5)
    np.testing.assert_allclose(m["rep_mtl/entropy"], h, rtol=1e-6)
    np.testing.assert_allclose(m["rep_mtl/align"], a, rtol=1e-6)
    reg2, a2 = jax.jit(lambda s: (rep_mtl_regularizer(s, lambda_entropy=0.3, lambda_align=1.7, temperature=0.25)[0],
                                  alignment_loss(s, temperature=0.25)))(S)
    np.testing.assert_allclose(reg2, 0.3 * h + 1.7 * a2, rtol=1e-5)


def test_zero_lambdas_contribute_nothing():
    S = _rand(S0, 21)
    reg, m = reg_fn(S, lambda_entropy=0.0, lambda_align=0)
    assert float(reg) == 0.0 and float(m["rep_mtl/entropy"]) == 0.0 and float(m["rep_mtl/align"]) == 0.0
    g = jax.jit(jax.grad(lambda s: rep_mtl_regularizer(s, lambda_entropy=0.0, lambda_align=0.0)[0]))(S)
    assert float(jnp.max(jnp.abs(g))) == 0.0
    only_h, _ = reg_fn(S, lambda_entropy=1.0, lambda_align=0.0)
    np.testing.assert_allclose(only_h, ent_fn(S), rtol=1e-6)


def test_jit_with_static_and_traced_hyperparameters():
    S = _rand(S0, 22)
    static, _ = reg_fn(S)  # defaults as static arguments
    f = jax.jit(lambda s, le, la, tau: rep_mtl_regularizer(s, lambda_entropy=le, lambda_align=la,
                                                           temperature=tau))
    got, metrics = f(S, LAMBDA_ENTROPY, LAMBDA_ALIGN, TEMPERATURE)  # traced hyperparameters
    np.testing.assert_allclose(got, static, rtol=1e-5)
    assert set(metrics) == {"rep_mtl/entropy", "rep_mtl/align", "rep_mtl/reg"}
    g = reg_grad(S)
    assert g.shape == S.shape and bool(jnp.all(jnp.isfinite(g)))


# ----------------------------------------------------------------------------------- numerics

def test_zero_saliency_is_finite_with_finite_gradients():
    S = jnp.zeros(S0)
    reg, m = reg_fn(S)
    assert float(m["rep_mtl/entropy"]) == 0.0
    np.testing.assert_allclose(m["rep_mtl/align"], math.log(3), rtol=1e-6)  # all cosines 0: log(B-1)
    assert bool(jnp.isfinite(reg))
    g = reg_grad(S)
    assert bool(jnp.all(jnp.isfinite(g)))
    # one task with zero saliency, the others not
    S = _rand(S0, 23).at[1].set(0.0)
    reg, _ = reg_fn(S)
    g = reg_grad(S)
    assert bool(jnp.isfinite(reg)) and bool(jnp.all(jnp.isfinite(g)))


def test_scale_invariance_and_tiny_saliencies():
    S = _rand(S0, 24)
    ref, _ = reg_fn(S)
    for c in (1e-30, 1e-8, 1e6):
        got, _ = reg_fn(S * c)
        np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_batch_of_one_and_bfloat16():
    S = _rand((2, 1, 3, 4), 25)
    reg, m = reg_fn(S)
    assert bool(jnp.isfinite(reg))
    np.testing.assert_allclose(m["rep_mtl/align"], _single_positive(S), rtol=1e-5)
    assert float(align_fn(S, positive_in_denominator=True)) == 0.0
    reg16, _ = reg_fn(_rand((3, 4, 5), 26).astype(jnp.bfloat16))
    assert reg16.dtype == jnp.float32 and bool(jnp.isfinite(reg16))


def _single_positive(S):
    S = np.asarray(S, np.float64)[:, 0]  # [T, P, C]
    a = S.mean(1)  # [T, C]
    za = (a.T @ a).ravel()
    za /= np.linalg.norm(za)
    sims = [(s.T @ s).ravel() @ za / np.linalg.norm((s.T @ s).ravel()) for s in S]
    return -np.mean(sims) / TEMPERATURE


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("kwargs,name", [
    ({"lambda_entropy": -0.1}, "lambda_entropy"),
    ({"lambda_align": -1.0}, "lambda_align"),
    ({"lambda_align": float("nan")}, "lambda_align"),
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": -0.5}, "temperature"),
    ({"eps": 0.0}, "eps"),
])
def test_hyperparameter_validation(kwargs, name):
    with pytest.raises(ValueError, match=name) as e:
        rep_mtl_regularizer(jnp.ones((2, 3, 4)), **kwargs)
    assert "\n" not in str(e.value)


def test_shape_and_weights_validation():
    with pytest.raises(ValueError, match=r"S must have shape") as e:
        entropy_penalty(jnp.ones((2, 3)))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="temperature"):
        alignment_loss(jnp.ones((2, 3, 4)), temperature=0)
    with pytest.raises(ValueError, match="weights"):
        two_losses = lambda z: jnp.stack([z.sum(), (z ** 2).sum()])  # noqa: E731
        jax.eval_shape(lambda r: regularized_objective(two_losses, r, weights=jnp.ones(3)),
                       jax.ShapeDtypeStruct((3, 4), jnp.float32))


# --------------------------------------------------------- saliency and double backprop (Eq. 10)

def _tiny_problem(dtype):
    rng = np.random.default_rng(7)
    arr = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)  # noqa: E731
    x = arr(4, 3, 2)  # B=4 samples, N=3 tokens
    y = arr(3, 4, 3)  # targets for T=3 tasks
    params = {"enc": arr(2, 5), "dec": arr(3, 5)}

    def encode(p):
        return jnp.tanh(x @ p["enc"])  # rep: [B, N, D=5]

    def dec_losses(p):
        def f(z):
            pred = jnp.tanh(jnp.einsum("bnd,td->tbn", z, p["dec"]))
            return jnp.mean((pred - y) ** 2, axis=(1, 2))  # [T]
        return f

    return params, encode, dec_losses


def test_task_saliency_matches_jacrev():
    params, encode, dec_losses = _tiny_problem(jnp.float32)
    rep, f = encode(params), dec_losses(params)
    losses, S = jax.jit(lambda r: task_saliency(f, r))(rep)
    np.testing.assert_allclose(losses, f(rep), rtol=1e-6)
    np.testing.assert_allclose(S, jax.jit(jax.jacrev(f))(rep), rtol=1e-5, atol=1e-7)
    _, S1 = jax.jit(lambda r: task_saliency(f, r, chunk_size=1))(rep)
    np.testing.assert_allclose(S1, S, rtol=1e-5, atol=1e-7)


def test_regularized_objective_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        params, encode, dec_losses = _tiny_problem(jnp.float64)
        w = jnp.asarray([1.0, 0.5, 2.0])

        def total(p, **kw):
            return regularized_objective(dec_losses(p), encode(p), weights=w, temperature=0.5, **kw)[0]

        no_reg = lambda q: total(q, lambda_entropy=0.0, lambda_align=0.0)  # noqa: E731
        grads, plain = jax.jit(lambda p: (jax.grad(total)(p), jax.grad(no_reg)(p)))(params)
        for leaf in jax.tree.leaves(grads):
            assert bool(jnp.all(jnp.isfinite(leaf)))
        # central differences along 3 random directions, all 6 evaluations in one vmapped call
        h = 1e-5
        dirs = [jax.tree.map(lambda a, s=seed: _rand(a.shape, 100 + s).astype(a.dtype), params) for seed in range(3)]
        shifted = [jax.tree.map(lambda a, d, sg=sg: a + sg * h * d, params, v) for v in dirs for sg in (1, -1)]
        values = jax.jit(jax.vmap(total))(jax.tree.map(lambda *xs: jnp.stack(xs), *shifted))
        for i, v in enumerate(dirs):
            fd = (values[2 * i] - values[2 * i + 1]) / (2 * h)
            an = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(v)))
            np.testing.assert_allclose(an, fd, rtol=1e-6, atol=1e-9)
        # the regulariser really contributes second-order terms to the upstream (encoder) gradient
        assert float(jnp.max(jnp.abs(grads["enc"] - plain["enc"]))) > 1e-6
        assert float(jnp.max(jnp.abs(grads["dec"] - plain["dec"]))) > 1e-6


def test_regularized_objective_value_and_zero_saliency():
    params, encode, dec_losses = _tiny_problem(jnp.float32)
    rep, f = encode(params), dec_losses(params)

    def both(r):
        plain = regularized_objective(f, r)
        # callable weights receive the (stop-gradiented) losses
        doubled = regularized_objective(f, r, weights=lambda l: 2.0 * jnp.ones_like(l))[0]
        return plain, doubled, rep_mtl_regularizer(jax.jacrev(f)(r))[0]

    (total, (losses, metrics)), total_w, reg = jax.jit(both)(rep)
    np.testing.assert_allclose(metrics["rep_mtl/task"], jnp.sum(losses), rtol=1e-6)
    np.testing.assert_allclose(total, jnp.sum(losses) + reg, rtol=1e-5)
    np.testing.assert_allclose(total_w, 2 * jnp.sum(losses) + reg, rtol=1e-5)

    # losses that ignore the representation: S = 0 everywhere, still finite with finite gradients
    def flat(p):
        return regularized_objective(lambda z: 0.0 * jnp.sum(z) + p["dec"].sum(1) ** 2, encode(p))[0]

    val, g = jax.jit(jax.value_and_grad(flat))(params)
    assert bool(jnp.isfinite(val))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(g))


def test_eps_default_is_small():
    assert 0 < EPS <= 1e-6
