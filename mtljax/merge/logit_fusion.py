"""Dynamic logit fusion: per-example fusion weights for expert logit shifts under a KL budget.

Source
------
Fan, Lu, Wei, Tian, Qu, Chen, Cheng, "On Giant's Shoulders: Effortless Weak to Strong by Dynamic
Logits Fusion", NeurIPS 2024 (arXiv:2406.15480). The authors' repository (Facico/Dynamic-Logit-Fusion)
only holds a "coming soon" README, so nothing here follows their code. What could be checked from the
abstract and public summaries: at every decoding step a large model's logits are moved by a weighted
sum of the shifts (fine-tuned small expert minus small base) of several task experts,

    z̃ = z_L + Σ_t α_t (z_{S,t} − z_S),

and the weights α are chosen per step by a KL-divergence-constrained optimisation whose premise is
that the fused distribution should move away from the large model by as much as each small expert
moved away from its small base (the unknown KL(P_{L,ft} ‖ P_L) is replaced by KL(P_{S,ft} ‖ P_S)).
The exact multi-expert objective and solver of the paper could not be read, so the problem below is a
documented interpretation of that constraint, not a transcription.

Our setting
-----------
Classification, one step per example. ``z_0 ∈ R^C`` are the base logits (the pretrained model with the
task's head; it plays both z_L and z_S), ``z_t`` the logits of expert ``t = 1..T``. Optionally each
expert has its own "small base" ``s_t`` (then the shift is ``z_t − s_t``); by default ``s_t = z_0``.
Write ``d_t = z_t − s_t``, ``D = [d_1; …; d_T] ∈ R^{T×C}``, ``p(z) = softmax(z)`` and

    z(α) = z_0 + Σ_t α_t d_t = z_0 + Dᵀα,        p_α = p(z(α)).

Problem solved (per example)
----------------------------
Budget: the KL shift each expert made, ``δ_t = KL(p(z_t) ‖ p(s_t))``, aggregated as
``ε = min_t δ_t`` (default, ``budget="min"``: the fused shift may not exceed ANY expert's shift, i.e.
the T constraints ``KL(p_α ‖ p_0) ≤ δ_t`` hold together), or ``mean_t δ_t`` / ``max_t δ_t``.
Targets: ``q_t = p(z_0 + d_t)``, the distribution expert ``t`` alone would give at α = e_t (with the
default ``s_t = z_0`` this is exactly the expert's own distribution ``p(z_t)``).

    minimise_α   F(α) = Σ_t KL(q_t ‖ p_α) + (μ/2)‖α‖²
    subject to   KL(p_α ‖ p_0) ≤ ε,        lo ≤ α_t ≤ hi   (lo ≤ 0 ≤ hi).

F is convex (−log softmax is convex in the logits and z(α) is affine); the tiny ridge μ makes the
minimiser unique (α = 0 when every expert equals the base). The KL constraint is what makes the
weights dynamic: with one expert and s_1 = z_0 the unconstrained optimum is α = 1 and the constraint
is tight there (KL(p_α ‖ p_0) = δ_1), so the fused model reproduces the expert; with several experts
pulling in different directions, the shared budget decides how much of each shift is kept.

Solver (fixed iteration counts, jax.lax loops, vmapped over the batch)
---------------------------------------------------------------------
The constraint set is star-shaped around α = 0: along any ray, d/ds KL(p_{sα} ‖ p_0) =
s · Var_{p_{sα}}(Dᵀα) ≥ 0, so KL grows monotonically with the scale s. Hence "retract(α)" = the
largest s ∈ [0, 1] with KL(p_{sα} ‖ p_0) ≤ ε, found by ``n_bisect`` bisection steps (keeping the
feasible end), always returns a feasible point inside the box (0 is in the box).

1. ``newton_iters`` projected Newton steps on F over the box, from α = 0: direction H⁻¹∇F with
   ∇F = D(T·p_α − Σ_t q_t) + μα, H = T·D(diag p_α − p_α p_αᵀ)Dᵀ + μI; the step length is picked from
   a fixed grid {1, 1/2, …, 2^{−(n_steps−1)}} (all evaluated at once, clipped to the box) as the one
   with the lowest F, and the step is kept only if F decreases. F differences are evaluated as
   T·log1p(Σ p_a·expm1(z_c − z_a)) − Σ_t q_t·(z_c − z_a) + the ridge term, so that the accept test
   is not lost in float32 rounding near the optimum.
2. α ← retract(α).
3. ``refine_iters`` feasible projected-gradient steps: candidates retract(clip(α − c·∇F/L)) for
   c ∈ {8, 4, 2, …} (n_steps values), with L = T·‖D‖_F²/2 + μ ≥ T·λ_max(DDᵀ)/2 + μ, a Lipschitz
   constant of ∇F (the softmax covariance has norm ≤ 1/2); the best candidate is accepted only if it
   lowers F. So F never increases and every iterate after step 2 is feasible.

For T = 1 steps 1–2 are exact (convex 1-D objective on an interval). For T ≥ 2 step 3 is a
feasible-descent heuristic: it returns a feasible point with F no larger than after step 2, not a
certified KKT point of the non-convex constrained problem.

Cost per example: O(newton_iters · (T²C + T³ + n_steps·TC) + refine_iters · n_steps · n_bisect · TC),
memory O(n_steps · TC). Compiled once per (input shape, iteration counts); bounds, budget and ridge are traced.

Deviations from the paper: one classification step per example instead of per decoding step; the
large and small base coincide by default; the objective (forward KL to each expert's target
distribution) and the aggregation of the T per-expert budgets are our interpretation; α is found by
the fixed-iteration solver above instead of the paper's search.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

__all__ = ["fuse", "solve_alpha", "dynamic_logit_fusion", "BUDGETS"]

BUDGETS = ("min", "mean", "max")


# --------------------------------------------------------------------------------------------
# validation (plain Python, runs before anything is traced)
# --------------------------------------------------------------------------------------------


def _shape(x, name):
    try:
        return tuple(jnp.shape(x))
    except Exception as e:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name}: not an array ({type(x).__name__})") from e


def _check_logits(z_base, z_experts, z_small_base=None):
    bs = _shape(z_base, "z_base")
    es = _shape(z_experts, "z_experts")
    if len(bs) < 1:
        raise ValueError(f"z_base: expected shape [..., C], got {bs}")
    if bs[-1] == 0:
        raise ValueError("z_base: number of classes C must be > 0")
    if len(es) != len(bs) + 1:
        raise ValueError(f"z_experts: expected shape [T, *{bs}], got {es}")
    if es[0] == 0:
        raise ValueError("z_experts: need at least one expert (T = 0)")
    if es[1:] != bs:
        raise ValueError(f"z_experts: trailing shape {es[1:]} does not match z_base {bs}")
    if z_small_base is not None:
        ss = _shape(z_small_base, "z_small_base")
        if ss != es:
            raise ValueError(f"z_small_base: expected shape {es} (like z_experts), got {ss}")
    return bs, es[0]


def _check_int(v, name, minimum):
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v!r}")


# --------------------------------------------------------------------------------------------
# fusion
# --------------------------------------------------------------------------------------------


def fuse(z_base, z_experts, alpha, *, z_small_base=None):
    """Fused logits ``z_base + Σ_t alpha[..., t] · (z_experts[t] − ref_t)``.

    ``z_base`` [..., C], ``z_experts`` [T, ..., C], ``alpha`` [..., T] → [..., C]; ``ref_t`` is
    ``z_small_base[t]`` ([T, ..., C]) when given, else ``z_base``.
    """
    bs, T = _check_logits(z_base, z_experts, z_small_base)
    a_shape = _shape(alpha, "alpha")
    if a_shape != bs[:-1] + (T,):
        raise ValueError(f"alpha: expected shape {bs[:-1] + (T,)}, got {a_shape}")
    return _fuse(jnp.asarray(z_base), jnp.asarray(z_experts), jnp.asarray(alpha),
                 None if z_small_base is None else jnp.asarray(z_small_base))


def _fuse(z_base, z_experts, alpha, z_small_base):
    ref = z_base if z_small_base is None else z_small_base
    shifts = jnp.moveaxis(z_experts - ref, 0, -2)  # [..., T, C]
    return z_base + jnp.sum(alpha[..., :, None] * shifts, axis=-2)


# --------------------------------------------------------------------------------------------
# per-example solver
# --------------------------------------------------------------------------------------------


def _kl_logits(zp, zq):
    """KL(softmax(zp) ‖ softmax(zq)) over the last axis."""
    lp = jax.nn.log_softmax(zp, axis=-1)
    lq = jax.nn.log_softmax(zq, axis=-1)
    return jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)


def _solve_one(z0, E, S, lo, hi, budget_code, ridge, *, newton_iters, refine_iters, n_steps, n_bisect):
    """z0 [C], E [T, C], S [T, C] (small bases) → alpha [T]. lo/hi/budget_code/ridge are traced."""
    T = E.shape[0]
    D = E - S  # [T, C] shifts
    delta = _kl_logits(E, S)  # [T] per-expert shift
    eps = jnp.stack([jnp.min(delta), jnp.mean(delta), jnp.max(delta)])[budget_code]
    q = jax.nn.softmax(z0[None, :] + D, axis=-1)  # [T, C] target distributions
    qsum = jnp.sum(q, axis=0)

    def logits(a):
        return z0 + a @ D

    def f_change(a, c):
        # F(c) − F(a), written so that small steps do not drown in float rounding:
        # lse(z_c) − lse(z_a) = log1p(Σ p_a · expm1(z_c − z_a)).
        dz = (c - a) @ D
        p = jax.nn.softmax(logits(a))
        dlse = jnp.log1p(jnp.sum(p * jnp.expm1(dz)))
        return T * dlse - qsum @ dz + 0.5 * ridge * ((c - a) @ (c + a))

    def grad_hess(a):
        p = jax.nn.softmax(logits(a))
        g = D @ (T * p - qsum) + ridge * a
        Dp = D @ p
        H = T * ((D * p[None, :]) @ D.T - jnp.outer(Dp, Dp)) + ridge * jnp.eye(T, dtype=a.dtype)
        return g, H

    def shift_kl(a):
        return _kl_logits(logits(a), z0)

    def best_of(a, cands):
        # keep a unless some candidate lowers F
        df = jax.vmap(lambda c: f_change(a, c))(cands)
        k = jnp.argmin(df)
        return jnp.where(df[k] < 0, cands[k], a)

    halvings = 0.5 ** jnp.arange(n_steps, dtype=z0.dtype)  # 1, 1/2, 1/4, ...

    def newton_step(_, a):
        g, H = grad_hess(a)
        direction = jnp.linalg.solve(H, g)
        cands = jnp.clip(a[None, :] - halvings[:, None] * direction[None, :], lo, hi)
        return best_of(a, cands)

    def retract(a):
        # largest s in [0, 1] with KL(p_{s a} ‖ p_0) <= eps (monotone in s); keep the feasible end
        def body(_, bracket):
            s_lo, s_hi = bracket
            mid = 0.5 * (s_lo + s_hi)
            ok = shift_kl(mid * a) <= eps
            return jnp.where(ok, mid, s_lo), jnp.where(ok, s_hi, mid)

        s_lo, _ = jax.lax.fori_loop(0, n_bisect, body, (jnp.zeros((), a.dtype), jnp.ones((), a.dtype)))
        return jnp.where(shift_kl(a) <= eps, a, s_lo * a)

    # ‖D‖_F² >= λ_max(DDᵀ), so L bounds the Lipschitz constant of ∇F (softmax covariance ≤ 1/2)
    lipschitz = 0.5 * T * jnp.sum(D * D) + ridge
    gd_steps = 8.0 * halvings / lipschitz  # 8/L, 4/L, 2/L, ...

    def refine_step(_, a):
        g = grad_hess(a)[0]
        cands = jnp.clip(a[None, :] - gd_steps[:, None] * g[None, :], lo, hi)
        return best_of(a, jax.vmap(retract)(cands))

    a = jnp.zeros((T,), z0.dtype)
    a = jax.lax.fori_loop(0, newton_iters, newton_step, a)
    a = retract(a)
    a = jax.lax.fori_loop(0, refine_iters, refine_step, a)
    return a


@partial(jax.jit, static_argnames=("newton_iters", "refine_iters", "n_steps", "n_bisect"))
def _solve_flat(z0, E, S, lo, hi, budget_code, ridge, **iters):
    """z0 [N, C], E and S [N, T, C] → alpha [N, T]."""
    solve = partial(_solve_one, **iters)
    return jax.vmap(solve, in_axes=(0, 0, 0, None, None, None, None))(z0, E, S, lo, hi, budget_code, ridge)


def solve_alpha(z_base, z_experts, *, z_small_base=None, bounds=(0.0, 2.0), budget="min",
                ridge=1e-6, newton_iters=20, refine_iters=20, n_steps=8, n_bisect=40):
    """Per-example fusion weights α [..., T] solving the KL-budgeted problem in the module docstring.

    ``z_base`` [..., C]; ``z_experts`` and optional ``z_small_base`` [T, ..., C]. ``bounds = (lo, hi)``
    with ``lo <= 0 <= hi`` boxes each α_t; ``budget`` in {"min", "mean", "max"} aggregates the T
    per-expert shifts KL(p(z_t) ‖ p(s_t)) into the bound on KL(p_α ‖ p_0). The iteration counts are
    static, so the solver compiles once per (input shape, iteration counts); bounds, budget and
    ridge are traced values and do not trigger recompilation.
    """
    bs, T = _check_logits(z_base, z_experts, z_small_base)
    try:
        lo, hi = (float(b) for b in bounds)
    except Exception as e:
        raise ValueError(f"bounds: expected a pair (lo, hi), got {bounds!r}") from e
    if not (lo <= 0.0 <= hi) or lo == hi:
        raise ValueError(f"bounds: need lo <= 0 <= hi and lo < hi, got {bounds!r}")
    if budget not in BUDGETS:
        raise ValueError(f"budget: expected one of {BUDGETS}, got {budget!r}")
    try:
        ridge = float(ridge)
    except Exception as e:
        raise ValueError(f"ridge: expected a positive float, got {ridge!r}") from e
    if not ridge > 0.0:
        raise ValueError(f"ridge: expected a positive float, got {ridge!r}")
    _check_int(newton_iters, "newton_iters", 0)
    _check_int(refine_iters, "refine_iters", 0)
    _check_int(n_steps, "n_steps", 1)
    _check_int(n_bisect, "n_bisect", 1)

    zb = jnp.asarray(z_base)
    dtype = jnp.result_type(zb.dtype, jnp.float32)
    C = bs[-1]
    z0 = zb.astype(dtype).reshape(-1, C)
    E = jnp.moveaxis(jnp.asarray(z_experts).astype(dtype), 0, -2).reshape(-1, T, C)
    if z_small_base is None:
        S = jnp.broadcast_to(z0[:, None, :], E.shape)
    else:
        S = jnp.moveaxis(jnp.asarray(z_small_base).astype(dtype), 0, -2).reshape(-1, T, C)
    alpha = _solve_flat(z0, E, S, jnp.asarray(lo, dtype), jnp.asarray(hi, dtype),
                        jnp.asarray(BUDGETS.index(budget)), jnp.asarray(ridge, dtype),
                        newton_iters=newton_iters, refine_iters=refine_iters, n_steps=n_steps,
                        n_bisect=n_bisect)
    return alpha.reshape(bs[:-1] + (T,))


def dynamic_logit_fusion(z_base, z_experts, **kw):
    """``(fused_logits [..., C], alpha [..., T])``: α from :func:`solve_alpha` (same keywords),
    fused logits from :func:`fuse`."""
    alpha = solve_alpha(z_base, z_experts, **kw)
    zsb = kw.get("z_small_base")
    fused = _fuse(jnp.asarray(z_base).astype(alpha.dtype), jnp.asarray(z_experts).astype(alpha.dtype),
                  alpha, None if zsb is None else jnp.asarray(zsb).astype(alpha.dtype))
    return fused, alpha
