"""Nash-MTL — Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022 (arXiv 2202.01017).

The update d = Σ_t α_t g_t is the Nash bargaining solution: maximise Σ_t log(g_tᵀ d) over a ball. Its
optimality condition is

    G α = 1 / α   (elementwise), α > 0,   G = J Jᵀ,

i.e. α_t (Gα)_t = 1 for every task, so every task's directional improvement g_tᵀd equals 1/α_t and
‖d‖² = αᵀGα = T.

Solver: the paper linearises a concave term and solves ``optim_niter`` convex programs with cvxpy.
Here the same α is the unique minimiser of the strictly convex ½ αᵀGα − Σ_t log α_t, minimised with
``optim_niter`` damped Newton steps (shared with FairGrad, which at α_fair = 1 is the same equation; see
:func:`mtljax.optim.fairgrad.solve_fair_weights`). The official code divides G by its norm before
solving (a numerical device: the solution obeys α(cG) = α(G)/√c, and we map back exactly, normalising by
trace(G)/T instead) and starts each solve from the previous α; we start from the orthogonal-gradient
solution α_t = 1/‖g_t‖ instead (the Newton solve converges from there), so weights do not depend on
history except through ``update_weights_every``. A relative diagonal ridge (1e-6) keeps a solution when
a gradient is zero or gradients cancel (a zero-gradient task then gets a large but finite α that
multiplies a zero gradient).

As in the official code, the update is the gradient of ``Σ_t α_t L_t``: task-specific parameters
(heads) get ``α_t ∇L_t`` (``Method.heads = "weighted"``), and only the *shared* update ``J_sᵀα`` is
rescaled to global norm ``max_norm`` when longer (``torch.nn.utils.clip_grad_norm_(shared_parameters,
max_norm)``; ``Method.clip_shared``; ``max_norm = 0`` disables it; since ‖J_sᵀα‖ = √T, with T ≥ 2 the
default always yields a shared update of norm 1). ``weights`` returns the unclipped α; the transform
(:func:`mtljax.optim.as_optax`) clips the combined shared update. Defaults as in the official code:
``max_norm = 1.0``; ``update_weights_every = 1`` — α is recomputed every that many steps and
otherwise reused from the state; ``optim_niter = 20``. With one task, α = 1/‖g‖: the update is the unit
gradient (by definition).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtljax.optim.base import Method
from mtljax.optim.dtypes import working_dtype
from mtljax.optim.fairgrad import solve_fair_weights


def nash_mtl(*, max_norm: float = 1.0, update_weights_every: int = 1, optim_niter: int = 20) -> Method:
    if max_norm < 0:
        raise ValueError(f"nash_mtl: max_norm must be >= 0, got {max_norm}")
    if not isinstance(update_weights_every, int) or update_weights_every < 1:
        raise ValueError(f"nash_mtl: update_weights_every must be a positive integer, got {update_weights_every!r}")
    if not isinstance(optim_niter, int) or optim_niter < 1:
        raise ValueError(f"nash_mtl: optim_niter must be a positive integer, got {optim_niter!r}")
    max_norm = float(max_norm)

    def init(num_tasks):
        return {"alpha": jnp.ones((num_tasks,), jnp.float32), "step": jnp.zeros((), jnp.int32)}

    def weights(losses, state, key, *, gramian=None):
        del losses, key
        gram = jnp.asarray(gramian, working_dtype(gramian))
        if update_weights_every == 1:
            alpha = solve_fair_weights(gram, 1.0, optim_niter)
        else:
            alpha = jax.lax.cond(state["step"] % update_weights_every == 0,
                                 lambda: solve_fair_weights(gram, 1.0, optim_niter),
                                 lambda: state["alpha"].astype(gram.dtype))
        new_state = {"alpha": alpha.astype(state["alpha"].dtype), "step": state["step"] + 1}
        return alpha, new_state

    return Method("nash_mtl", "gramian", init=init, weights=weights, heads="weighted", clip_shared=max_norm)
