"""Rep-MTL: regularising representation-level task saliency.

Wang, Li, Xu, "Rep-MTL: Unleashing the Power of Representation-level Task Saliency for Multi-Task
Learning", ICCV 2025 (arXiv 2507.21049). The authors did not release code; this module follows the
equations of the paper (Sec. 3, Eqs. 3–10) and lists below every point the paper leaves open.

Equations as implemented
------------------------
The paper uses a channel-first map ``Z ∈ R^{B×C×H'×W'}``. Here the saliency arrives channel-LAST,
as the trainer stacks it: ``S`` of shape ``[T, B, *positions, C]`` — ``[T, B, C]`` for pooled
features (one position), ``[T, B, N, C]`` for tokens, ``[T, B, H, W, C]`` for NHWC maps. All position
axes are flattened into ``P`` positions (the paper's ``H'W'``).

* Task saliency (Eq. 3): ``S_t = ∂L_t/∂Z`` — the gradient of the *unweighted* task loss w.r.t. the
  shared representation (:func:`task_saliency`: one decoder VJP applied to the ``T`` unit
  cotangents).
* Task-specific Saliency Regulation, TSR (:func:`entropy_penalty`):

  - Eq. 4: ``Ŝ_{t,b,p} = (1/C) Σ_c S_{t,b,p,c}`` (signed mean over channels);
  - Eq. 5: ``P_{i,t} = |Ŝ_{i,t}| / Σ_k |Ŝ_{i,k}|`` for every element ``i = (b, p)``;
  - Eq. 6: ``L_tsr = (1/(B·P)) Σ_i ( −Σ_t P_{i,t} log P_{i,t} )``.

  The paper *penalises high entropy*: ``L_tsr`` is 0 when every element's saliency sits on a single
  task and maximal (``log T``) when it is spread evenly over the tasks.
* Cross-task Saliency Alignment, CSA (:func:`alignment_loss`):

  - Eq. 7: per-task, per-sample channel affinity ``M_{t,b} = Σ_p s_{t,b,p} s_{t,b,p}ᵀ ∈ R^{C×C}``
    (``S_t S_tᵀ`` with ``S_t`` read as ``C × H'W'``);
  - Eq. 8: anchor ``A_b = (1/P) Σ_p S_{:,b,p,:}ᵀ ∈ R^{C×T}`` (spatial mean, one column per task) and
    ``Â_b = A_b A_bᵀ = Σ_t a_{t,b} a_{t,b}ᵀ ∈ R^{C×C}``;
  - both are flattened and L2-normalised (``z^a_b``, ``z^t_b``); ``sim`` is their cosine;
  - Eq. 9: positives are ``(z^a_b, z^t_b)`` (same sample, every task: ``B × T`` pairs), negatives are
    ``(z^a_b, z^a_k)``, ``k ≠ b`` (anchors of the other samples: ``B × (B−1)`` pairs)::

        L_csa = (1/(B·T)) Σ_b Σ_t [ −sim(z^a_b, z^t_b)/τ + log Σ_{k≠b} exp(sim(z^a_b, z^a_k)/τ) ]

* Joint objective (Eq. 10): ``L_Rep = Σ_t ω_t L_t + λ_tsr L_tsr(Z) + λ_csa L_csa(Z)``
  (:func:`rep_mtl_regularizer` returns the last two terms; :func:`regularized_objective` all of it).

The ``C × C`` matrices are never formed: Frobenius products of Gram matrices are computed from the
smaller side (``⟨XXᵀ, YYᵀ⟩ = ‖XᵀY‖²``), which is exactly the same number at a fraction of the memory
(``T × T`` and ``P × T`` products instead of ``C × C``; ``‖M_{t,b}‖`` uses ``min(P, C)``²).

Gradient recipe (what the trainer must do)
------------------------------------------
The paper's recipe is (a): *gradients of the regularisers flow through the saliency*. Eq. 10 is one
scalar objective and "gradients from all these components flow through the multi-task model"; App.
D.2 attributes the extra cost to "second-order (gradient) information". So ``S`` must NOT be
stop-gradiented: the train step differentiates ``Σ_t ω_t L_t(θ) + λ_tsr L_tsr(S(θ)) + λ_csa
L_csa(S(θ))`` w.r.t. all parameters (double backprop through the decoders only; the encoder is
differentiated once, through ``Z``). Recipe for the paper's setting (EW or any loss weighting)::

    def objective(params):
        rep, aux = model.apply({"params": params}, x, method=model.encode, ...)   # Z = E(x)

        def dec_losses(z):                      # closes over params: heads get 2nd-order grads too
            out = model.apply({"params": params}, z, method=model.decode)
            return jnp.stack([task.loss(out[task.name], ...) for task in tasks])   # [T], unweighted

        total, (losses, metrics) = regularized_objective(
            dec_losses, rep, weights=w)          # w: [T] loss weights, stop-gradiented; EW = ones
        return total + aux_losses, (losses, metrics)

    grads, (losses, metrics) = jax.grad(objective, has_aux=True)(params)

Loss-weighting methods that need the current losses (DWA, UW, ...) compute ``w`` inside
``objective`` from ``jax.lax.stop_gradient(losses)`` (:func:`regularized_objective` accepts ``weights``
as a callable ``losses -> w`` for that) and return their state through ``has_aux``. With a gradient
*aggregator* (not evaluated in the paper, but it says Rep-MTL "complements existing MTO
strategies"), aggregate the per-task gradients as usual and add ``∇_θ (λ_tsr L_tsr + λ_csa L_csa)``
to the aggregated update (like an auxiliary loss with weight 1).

Gaps in the paper and the choices made here
-------------------------------------------
1. Temperature τ is not reported. Default ``τ = 0.1`` (a common contrastive value); tune it.
2. λ_tsr, λ_csa: the paper grid-searches ``{0.7, 0.9, 1.1, 1.3, 1.5}`` per dataset and reports no
   final values; its sensitivity study fixes the other coefficient at 0.9. Defaults:
   ``λ_tsr = λ_csa = 0.9``.
3. Eq. 9 writes one positive per ``(b, t)`` but sums only over ``b``; the ``B × T`` positive pairs of
   Fig. 2 are averaged here (``1/(B·T)``). The denominator of Eq. 9 holds the negatives only
   (positive excluded, so the loss can be negative); ``positive_in_denominator=True`` gives the
   standard InfoNCE form ``exp(pos) + Σ_{k≠b} exp(neg)`` instead.
4. Eq. 8 writes ``A_b = (1/H'W') Σ_hw S_{hw,b}`` without saying which task's saliency; Fig. 2
   ("Mean(HW)", ``C × T``) shows one column per task, which makes ``Â_b = A_b A_bᵀ`` the sum of the
   tasks' outer products — the reading implemented here.
5. ``B = 1`` has no negatives: the log-sum-exp term is dropped (the loss is ``−mean_t sim/τ``; 0 with
   ``positive_in_denominator``).
6. Saliency is the gradient of the unweighted ``L_t`` (Eq. 3), also when loss weights ``ω_t`` are
   used in the task term. ``L_t`` is the batch-mean loss as in the paper, so ``S`` carries the
   ``1/B`` factor; both regularisers are invariant to a common rescaling of ``S`` anyway.
7. Layout: channels are the last axis (Flax); for pooled features (``P = 1``) Eq. 4 reduces to one
   signed channel mean per sample and task, Eq. 7 to ``M_{t,b} = s sᵀ`` — a literal reading of the
   paper, which only describes spatial maps.
8. Numerics (not in the paper): ``S`` is cast to (at least) float32 and divided by ``max|S|`` under
   ``stop_gradient``. Both regularisers are homogeneous of degree 0 in ``S`` (ratios in Eq. 5, cosines
   in Eq. 9), so this changes neither value nor gradient, but keeps tiny gradients (``~1e-8``) away
   from the ``eps`` guards and from float32 underflow in the quartic Gram norms. ``eps`` guards the
   normalisation of Eq. 5, ``log P`` (``P log(P + eps)``) and the cosine norms
   (``sqrt(‖·‖² + eps²)``), so an all-zero saliency gives finite values and gradients
   (``L_tsr = 0``, every cosine 0, ``L_csa = log(B−1)``). Because of the rescaling ``eps`` is
   relative to ``max|S|``. Being scale-free, the regularisers have gradients ``∝ 1/|S|`` in ``S``
   (intrinsic to Eqs. 5 and 9); ``eps`` caps them at elements whose saliency vanishes for all tasks.
9. A coefficient that is a Python ``0`` skips its term entirely (its metric reports 0).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from mtljax.optim.jacobian import check_chunk_size, jacobian_from_vjp

LAMBDA_ENTROPY = 0.9  # λ_tsr, Eq. 10 (gap 2)
LAMBDA_ALIGN = 0.9  # λ_csa, Eq. 10 (gap 2)
TEMPERATURE = 0.1  # τ, Eq. 9 (gap 1)
EPS = 1e-8


# ----------------------------------------------------------------------------------------- checks

def _concrete(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_nonneg(name: str, value) -> None:
    if _concrete(value) and not value >= 0:  # also rejects NaN
        raise ValueError(f"rep_mtl: {name} must be >= 0, got {value!r}")


def _check_pos(name: str, value) -> None:
    if _concrete(value) and not value > 0:
        raise ValueError(f"rep_mtl: {name} must be > 0, got {value!r}")


def _prepare(S) -> jax.Array:
    """``[T, B, *positions, C]`` → (at least) float32 ``[T, B, P, C]``, divided by a stop-gradient ``max|S|``."""
    S = jnp.asarray(S)
    if S.ndim < 3:
        raise ValueError(f"rep_mtl: S must have shape [T, B, ..., C] (ndim >= 3), got shape {tuple(S.shape)}")
    t, b, c = S.shape[0], S.shape[1], S.shape[-1]
    S = S.astype(jnp.promote_types(S.dtype, jnp.float32)).reshape(t, b, -1, c)
    scale = jax.lax.stop_gradient(jnp.max(jnp.abs(S)))
    return S / jnp.where(scale > 0, scale, 1.0)


def _safe_norm(sq: jax.Array, eps: float) -> jax.Array:
    return jnp.sqrt(sq + eps * eps)


# ------------------------------------------------------------------------------------ saliency

def task_saliency(dec_loss_fn: Callable, rep: jax.Array, *, chunk_size: int | None = None,
                  has_aux: bool = False):
    """Eq. 3: ``S_t = ∂L_t/∂Z`` for all tasks from one decoder VJP.

    ``dec_loss_fn(rep) -> losses [T]`` (or ``(losses, aux)`` with ``has_aux``). Returns
    ``(losses, S)`` (plus ``aux``) with ``S`` of shape ``[T, *rep.shape]``. The result is
    differentiable (no stop-gradient), so it can sit inside a ``jax.grad`` for double backprop.
    ``chunk_size`` pulls back that many unit cotangents at a time (less memory).
    """
    check_chunk_size(chunk_size)
    if has_aux:
        losses, vjp_fn, aux = jax.vjp(dec_loss_fn, rep, has_aux=True)
    else:
        losses, vjp_fn = jax.vjp(dec_loss_fn, rep)
    if losses.ndim != 1:
        raise ValueError(f"rep_mtl: dec_loss_fn must return a loss vector [T], got shape {tuple(losses.shape)}")
    (S,) = jacobian_from_vjp(vjp_fn, losses.shape[0], chunk_size=chunk_size, dtype=losses.dtype)
    return (losses, S, aux) if has_aux else (losses, S)


saliency = task_saliency


# ------------------------------------------------------------------------------ TSR, Eqs. 4–6

def _entropy(S4: jax.Array, eps: float) -> jax.Array:
    shat = jnp.abs(jnp.mean(S4, axis=-1))  # Eq. 4 (then |·| of Eq. 5): [T, B, P]
    p = shat / (jnp.sum(shat, axis=0, keepdims=True) + eps)  # Eq. 5
    h = -jnp.sum(p * jnp.log(p + eps), axis=0)  # entropy over tasks, [B, P]
    return jnp.mean(h)  # Eq. 6


def entropy_penalty(S, *, eps: float = EPS) -> jax.Array:
    """``L_tsr`` (Eqs. 4–6): mean over elements of the entropy of the task-wise saliency distribution.

    ``S``: ``[T, B, *positions, C]``. 0 when each element is salient for one task only, ``log T`` when
    all tasks are equally salient there; the paper penalises (minimises) it.
    """
    _check_pos("eps", eps)
    return _entropy(_prepare(S), eps)


# -------------------------------------------------------------------------------- CSA, Eqs. 7–9

def _alignment(S4: jax.Array, temperature, eps: float, positive_in_denominator: bool) -> jax.Array:
    t, b, p, c = S4.shape
    A = jnp.mean(S4, axis=2)  # Eq. 8 anchors, as [T, B, C] (A_b = A[:, b, :]ᵀ)
    # ‖Â_b‖² and ⟨Â_b, Â_k⟩ = Σ_{t,u} (a_{t,b} · a_{u,k})²
    cross = jnp.einsum("tbc,ukc->bktu", A, A)
    anchor_inner = jnp.sum(cross * cross, axis=(2, 3))  # [B, B]
    anchor_norm = _safe_norm(jnp.diagonal(anchor_inner), eps)  # [B]
    # ⟨M_{t,b}, Â_b⟩ = Σ_u Σ_p (s_{t,b,p} · a_{u,b})²
    proj = jnp.einsum("tbpc,ubc->tbpu", S4, A)
    pos_inner = jnp.sum(proj * proj, axis=(2, 3))  # [T, B]
    # ‖M_{t,b}‖² from the smaller Gram side
    if p <= c:
        gram = jnp.einsum("tbpc,tbqc->tbpq", S4, S4)
    else:
        gram = jnp.einsum("tbpc,tbpd->tbcd", S4, S4)
    m_norm = _safe_norm(jnp.sum(gram * gram, axis=(2, 3)), eps)  # [T, B]

    pos = pos_inner / (m_norm * anchor_norm[None, :]) / temperature  # [T, B]
    if b == 1:  # gap 5: no negatives
        return jnp.zeros((), pos.dtype) if positive_in_denominator else -jnp.mean(pos)
    neg = anchor_inner / (anchor_norm[:, None] * anchor_norm[None, :]) / temperature  # [B, B]
    neg = jnp.where(jnp.eye(b, dtype=bool), -jnp.inf, neg)
    if positive_in_denominator:
        neg = jnp.broadcast_to(neg[None], (t, b, b))
        denom = jax.nn.logsumexp(jnp.concatenate([pos[..., None], neg], axis=-1), axis=-1)  # [T, B]
    else:
        denom = jax.nn.logsumexp(neg, axis=-1)[None, :]  # [1, B]
    return jnp.mean(denom - pos)  # Eq. 9, averaged over the B × T positive pairs


def alignment_loss(S, *, temperature=TEMPERATURE, eps: float = EPS,
                   positive_in_denominator: bool = False) -> jax.Array:
    """``L_csa`` (Eqs. 7–9): sample-wise contrastive alignment of task affinities to the anchors.

    ``S``: ``[T, B, *positions, C]``. Lower when each task's per-sample channel affinity ``M_{t,b}``
    agrees with the sample's cross-task anchor ``Â_b`` and anchors of different samples differ.
    """
    _check_pos("temperature", temperature)
    _check_pos("eps", eps)
    return _alignment(_prepare(S), temperature, eps, positive_in_denominator)


# ------------------------------------------------------------------------------------ Eq. 10

def rep_mtl_regularizer(S, *, lambda_entropy=LAMBDA_ENTROPY, lambda_align=LAMBDA_ALIGN,
                        temperature=TEMPERATURE, eps: float = EPS, positive_in_denominator: bool = False):
    """``λ_tsr L_tsr + λ_csa L_csa`` of Eq. 10 and its metrics.

    Returns ``(reg, {"rep_mtl/entropy": L_tsr, "rep_mtl/align": L_csa, "rep_mtl/reg": reg})``. A
    coefficient given as Python ``0`` skips its term (metric 0). Differentiable in ``S``.
    """
    _check_nonneg("lambda_entropy", lambda_entropy)
    _check_nonneg("lambda_align", lambda_align)
    _check_pos("temperature", temperature)
    _check_pos("eps", eps)
    S4 = _prepare(S)
    zero = jnp.zeros((), S4.dtype)
    skip = lambda lam: _concrete(lam) and lam == 0  # noqa: E731
    h = zero if skip(lambda_entropy) else _entropy(S4, eps)
    a = zero if skip(lambda_align) else _alignment(S4, temperature, eps, positive_in_denominator)
    reg = zero
    if not skip(lambda_entropy):
        reg = reg + lambda_entropy * h
    if not skip(lambda_align):
        reg = reg + lambda_align * a
    return reg, {"rep_mtl/entropy": h, "rep_mtl/align": a, "rep_mtl/reg": reg}


def regularized_objective(dec_loss_fn: Callable, rep: jax.Array, *, weights=None,
                          lambda_entropy=LAMBDA_ENTROPY, lambda_align=LAMBDA_ALIGN,
                          temperature=TEMPERATURE, eps: float = EPS, positive_in_denominator: bool = False,
                          chunk_size: int | None = None):
    """The full Eq. 10 objective at a shared representation, ready for ``jax.grad`` (double backprop).

    ``dec_loss_fn(rep) -> losses [T]`` (unweighted task losses; close over the decoder parameters so
    they are differentiated too). ``weights``: ``None`` (equal weighting, the paper's setting), a
    ``[T]`` array, or a callable ``stop_gradient(losses) -> [T]``. Returns
    ``(Σ_t w_t L_t + λ_tsr L_tsr(S) + λ_csa L_csa(S), (losses, metrics))`` where ``S = ∂L/∂rep`` is
    NOT stop-gradiented, so ``jax.grad`` of the total w.r.t. upstream parameters includes the
    second-order terms of the regularisers.
    """
    losses, S = task_saliency(dec_loss_fn, rep, chunk_size=chunk_size)
    if weights is None:
        w = jnp.ones_like(losses)
    elif callable(weights):
        w = jnp.asarray(weights(jax.lax.stop_gradient(losses)), losses.dtype)
    else:
        w = jnp.asarray(weights, losses.dtype)
    if w.shape != losses.shape:
        raise ValueError(f"rep_mtl: weights must have shape {tuple(losses.shape)}, got {tuple(w.shape)}")
    reg, metrics = rep_mtl_regularizer(S, lambda_entropy=lambda_entropy, lambda_align=lambda_align,
                                       temperature=temperature, eps=eps,
                                       positive_in_denominator=positive_in_denominator)
    task_term = jnp.dot(w, losses)
    metrics = {**metrics, "rep_mtl/task": task_term}
    return task_term + reg, (losses, metrics)


def with_rep_mtl(objective, **kwargs):
    """An objective (:class:`mtljax.models.objective.Objective`) with the Rep-MTL regulariser added in
    training as the auxiliary loss ``aux["losses"]["rep_mtl"]`` (weight 1), its metrics in
    ``aux["metrics"]``; ``kwargs`` go to :func:`rep_mtl_regularizer`.

    The saliency ``S_t = ∂L_t/∂z`` is taken where the task decoders read the shared representation
    (``objective.rep_keys``): the pooled representation for classification tasks, the patch tokens for
    dense ones (``[T, B, N, C]``, the analogue of the paper's feature maps). It stays differentiable,
    so the regulariser's gradient reaches the encoder and the decoders by double backprop (Eq. 10).
    Tasks that read different entries (pooled and tokens) have saliencies in different spaces that
    Eqs. 4–9 cannot compare: that mixture is rejected, as are objectives without a shared
    representation. The returned objective has no ``encode``/``decode`` (its regulariser lives in
    ``forward``; gradient methods use the parameter or Gramian level).
    """
    if not objective.has_representation:
        raise ValueError("rep_mtl: needs one representation shared by all tasks; this model gives every task its own")
    keys = sorted(set(objective.rep_keys))
    if len(keys) != 1:
        by = {k: [t.name for t, r in zip(objective.tasks, objective.rep_keys) if r == k] for k in keys}
        raise ValueError(f"rep_mtl: the tasks read different representations ({by}); Rep-MTL compares saliencies "
                         "on one representation: use tasks that are all dense or all non-dense")
    key = keys[0]
    _check_kwargs(kwargs)

    def forward(params, batch, *, train, rng=None, step=None):
        if not train:
            return objective.forward(params, batch, train=False, rng=rng, step=step)
        rep, aux = objective.encode(params, batch, rng=rng)
        losses, S, outputs = task_saliency(lambda z: objective.decode(params, {**rep, key: z}, batch), rep[key],
                                           has_aux=True)
        reg, metrics = rep_mtl_regularizer(S, **kwargs)
        return losses, outputs, {"losses": {**aux["losses"], "rep_mtl": reg}, "metrics": {**aux["metrics"], **metrics}}

    return dataclasses.replace(objective, forward=forward, encode=None, decode=None, decode_task=None,
                               rep_keys=())


def _check_kwargs(kwargs) -> None:
    allowed = {"lambda_entropy", "lambda_align", "temperature", "eps", "positive_in_denominator"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"rep_mtl: unknown argument(s) {unknown}; choose from {sorted(allowed)}")
    for name in ("lambda_entropy", "lambda_align"):
        if name in kwargs:
            _check_nonneg(name, kwargs[name])
    for name in ("temperature", "eps"):
        if name in kwargs:
            _check_pos(name, kwargs[name])


__all__ = ["with_rep_mtl", "LAMBDA_ENTROPY", "LAMBDA_ALIGN", "TEMPERATURE", "EPS", "task_saliency", "saliency",
           "entropy_penalty", "alignment_loss", "rep_mtl_regularizer", "regularized_objective"]
