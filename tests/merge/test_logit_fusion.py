"""Tests for mtljax.merge.logit_fusion; KLs are measured independently with scipy in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import rel_entr, softmax

from mtljax.merge.logit_fusion import dynamic_logit_fusion, fuse, solve_alpha


def kl(zp, zq):
    zp = np.asarray(zp, np.float64)
    zq = np.asarray(zq, np.float64)
    return rel_entr(softmax(zp, axis=-1), softmax(zq, axis=-1)).sum(-1)


def make(seed=0, B=8, T=3, C=10, scale=1.5):
    rng = np.random.default_rng(seed)
    z0 = rng.normal(size=(B, C)).astype(np.float32)
    E = (z0[None] + scale * rng.normal(size=(T, B, C))).astype(np.float32)
    return z0, E


def objective(z0, E, alpha):
    """Σ_t KL(p(z_t) ‖ p_α) in float64 (the default s_t = z_0 case)."""
    fused = z0 + np.einsum("...t,t...c->...c", alpha, E - z0[None])
    return kl(E, fused[None]).sum(0)


@pytest.mark.parametrize("budget", ["min", "mean", "max"])
def test_alpha_satisfies_kl_budget(budget):
    z0, E = make()
    fused, alpha = dynamic_logit_fusion(z0, E, budget=budget)
    alpha = np.asarray(alpha)
    delta = kl(E, z0[None])  # [T, B]
    eps = {"min": np.min, "mean": np.mean, "max": np.max}[budget](delta, axis=0)
    shift = kl(fused, z0)
    assert np.all(shift <= eps + 1e-5), (shift - eps).max()
    assert np.all(alpha >= -1e-6) and np.all(alpha <= 2.0 + 1e-6)
    if budget == "min":  # each per-expert constraint KL(p_α ‖ p_0) ≤ KL(p_t ‖ p_0) holds
        assert np.all(shift[None] <= delta + 1e-5)


def test_near_optimal_against_grid_search_two_experts():
    z0, E = make(seed=1, T=2)
    alpha = np.asarray(solve_alpha(z0, E))
    grid = np.linspace(0.0, 2.0, 101)
    A = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    delta = kl(E, z0[None]).min(0)
    for b in range(z0.shape[0]):
        fused = z0[b] + A @ (E[:, b] - z0[b])
        feasible = kl(fused, z0[b][None]) <= delta[b]
        f_grid = kl(E[:, b][None], fused[:, None]).sum(1)[feasible].min()
        f_ours = objective(z0[b], E[:, b], alpha[b])
        assert f_ours <= f_grid + 1e-3, (b, f_ours, f_grid)


def test_single_expert_tight_constraint_reproduces_expert():
    z0, E = make(seed=2, T=1)
    fused, alpha = dynamic_logit_fusion(z0, E)
    np.testing.assert_allclose(np.asarray(alpha), 1.0, atol=1e-3)
    np.testing.assert_allclose(softmax(np.asarray(fused, np.float64), -1), softmax(E[0], -1), atol=1e-4)
    # α = 1 meets the KL budget with equality
    np.testing.assert_allclose(kl(fused, z0), kl(E[0], z0), rtol=1e-3, atol=1e-6)


def test_alpha_zero_when_experts_equal_base():
    z0, _ = make(seed=3, T=1)
    E = np.stack([z0, z0, z0])
    fused, alpha = dynamic_logit_fusion(z0, E)
    np.testing.assert_allclose(np.asarray(alpha), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(fused), z0, atol=1e-6)


def test_fuse_hand_computed():
    z0 = np.array([1.0, 0.0, -1.0])
    E = np.array([[2.0, 0.0, -1.0], [1.0, 3.0, 1.0]])
    alpha = np.array([0.5, 2.0])
    # z0 + 0.5·[1, 0, 0] + 2·[0, 3, 2]
    np.testing.assert_allclose(np.asarray(fuse(z0, E, alpha)), [1.5, 6.0, 3.0], rtol=1e-6)
    small = np.zeros((2, 3))
    # shifts are now the experts themselves: z0 + 0.5·E_1 + 2·E_2
    np.testing.assert_allclose(np.asarray(fuse(z0, E, alpha, z_small_base=small)), [4.0, 6.0, 0.5],
                               rtol=1e-6)


def test_batched_equals_per_example_loop():
    z0, E = make(seed=4)
    _, alpha = dynamic_logit_fusion(z0, E)
    alpha = np.asarray(alpha)
    # one example at a time, unbatched inputs z_base [C], z_experts [T, C]
    loop = np.stack([np.asarray(solve_alpha(z0[b], E[:, b])) for b in range(z0.shape[0])])
    np.testing.assert_allclose(alpha, loop, atol=1e-4)
    np.testing.assert_allclose(objective(z0, E, alpha), objective(z0, E, loop), rtol=1e-5, atol=1e-6)
    # extra leading batch axes: [2, 4, C]
    a2 = solve_alpha(z0.reshape(2, 4, -1), E.reshape(3, 2, 4, -1))
    np.testing.assert_allclose(np.asarray(a2).reshape(8, 3), alpha, atol=1e-6)


def test_small_base_targets_shift_and_budget():
    # each expert has its own small base; with one expert α = 1 gives z0 + (z_1 − s_1)
    z0, E = make(seed=5, T=1)
    rng = np.random.default_rng(6)
    S = (E + 0.3 * rng.normal(size=E.shape)).astype(np.float32)
    fused, alpha = dynamic_logit_fusion(z0, E, z_small_base=S)
    assert np.all(kl(fused, z0) <= kl(E[0], S[0]) + 1e-5)
    np.testing.assert_allclose(np.asarray(fused), z0 + np.asarray(alpha)[:, :1] * (E[0] - S[0]), atol=1e-5)


def test_runs_under_jit():
    z0, E = make(seed=7)
    f = jax.jit(lambda a, b: dynamic_logit_fusion(a, b))
    fused, alpha = f(jnp.asarray(z0), jnp.asarray(E))
    fused2, alpha2 = dynamic_logit_fusion(z0, E)
    np.testing.assert_allclose(np.asarray(alpha), np.asarray(alpha2), atol=1e-6)
    np.testing.assert_allclose(np.asarray(fused), np.asarray(fused2), atol=1e-5)
    g = jax.jit(fuse)(jnp.asarray(z0), jnp.asarray(E), alpha)
    np.testing.assert_allclose(np.asarray(g), np.asarray(fused), atol=1e-5)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda z0, E: solve_alpha(z0, E[:0]), "z_experts"),  # T = 0
        (lambda z0, E: solve_alpha(z0, E[:, :, :-1]), "z_experts"),  # C mismatch
        (lambda z0, E: solve_alpha(z0, E[0]), "z_experts"),  # missing T axis
        (lambda z0, E: solve_alpha(np.float32(1.0), E), "z_base"),  # scalar base
        (lambda z0, E: solve_alpha(z0, E, z_small_base=E[:2]), "z_small_base"),
        (lambda z0, E: solve_alpha(z0, E, bounds=(0.5, 2.0)), "bounds"),
        (lambda z0, E: solve_alpha(z0, E, budget="median"), "budget"),
        (lambda z0, E: solve_alpha(z0, E, newton_iters=-1), "newton_iters"),
        (lambda z0, E: fuse(z0, E, np.ones((8, 2))), "alpha"),
    ],
)
def test_validation_errors_name_argument(call, name):
    z0, E = make(seed=8)
    with pytest.raises(ValueError, match=name):
        call(z0, E)
