"""Level ``"autogram"``: the Gramian of the per-task gradients of dense kernels without forming them.

The idea is TorchJD's *autogram* engine (Gramian-based Jacobian descent; the layer-wise Gramian
trick also behind per-example gradient norms): for a dense layer ``y = A W`` (``A``: ``N × K`` rows
of inputs, every batch and token position flattened into ``N``; ``G_t = ∂L_t/∂y``: ``N × M``) the
per-task kernel gradient is ``∇_W L_t = Aᵀ G_t``, so

    ⟨∇_W L_s, ∇_W L_t⟩ = Σ (A Aᵀ) ⊙ (G_s G_tᵀ) = Σ G_s ⊙ (K G_t),    K = A Aᵀ,

which costs ``N²K + T·N²M + T²·N·M`` instead of ``T·N·K·M + T²·K·M`` for the per-task kernel
gradients and their Gramian. The update of a kernel is ``Aᵀ (Σ_t w_t G_t)``: one weight-gradient
matmul, no further backward pass. Per kernel, the cheaper of the two ways (by FLOPs from the shapes,
the update included) is used: with many tokens, or a narrow input, ``N`` exceeds the width and the
rows ``Aᵀ G_t`` of that one kernel are formed directly (never all ``T`` rows of the whole model); the
update then combines them.

How the ``G_t`` and ``A`` are obtained: the loss function is traced once to a jaxpr
(``jax.make_jaxpr``) and re-evaluated equation by equation. A shared parameter is a *dense kernel*
when every use of it (through dtype casts and sharding constraints) is one operand of a
``dot_general`` — ``nn.Dense``, ``nn.DenseGeneral`` (several contracting and batch axes), a plain
``x @ W`` or einsum. During the re-evaluation a zero perturbation is added to each such dot's output
and its other operand (``A``) is recorded; one vmapped VJP w.r.t. the perturbations, the other shared
parameters and the task-specific ones gives the ``G_t`` of every dense layer and the per-task rows
of everything else (biases, norms, embeddings: small; heads: their own per-task gradients as at
level ``param``). The kernels themselves are constants of that VJP, so XLA never computes a per-task
kernel gradient.

Why the jaxpr and not Flax's ``nn.intercept_methods``: intercepting ``Dense.__call__`` captures the
inputs, but cannot tell whether a kernel is also read elsewhere (tied weights, a custom module
reading ``variables``), which would silently drop that part of its gradient. In the jaxpr every use
of every parameter is visible: a parameter used in any other way is simply not treated as a kernel
and gets its per-task rows from the VJP, so the result equals level ``param`` for any loss function
(Flax or not), up to float rounding. Kernels read inside a nested ``jit``/``remat``/``scan`` are not
looked into (they fall back to VJP rows).

Per-task rows of the non-kernel parameters and all ``G_t`` are kept (``chunk_size`` only batches the
pullbacks); methods that read the per-task gradients themselves (GradDrop, flat-region SAM) need
level ``param``. On a mesh XLA partitions these products like any others (the ``gramian_fn`` of level
``param`` is not used). In a run, ``config.optim.level='autogram'`` is refused before compilation
when the model has no shared dense kernel (:func:`mtljax.trainer.optimizer.check_autogram`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from mtljax.optim.jacobian import combine, gramian_of, jacobian_from_vjp

_TRANSPARENT = ("convert_element_type", "sharding_constraint", "copy", "copy_p")

NO_KERNEL = ("level 'autogram' found no dense kernel among the shared parameters (no shared parameter is used "
             "only as an operand of a matrix product); use 'param' or 'gramian'")


class _Use(NamedTuple):
    """One ``dot_general`` reading a kernel: permutations to the canonical ``[Gb, N, K]`` / ``[Gb, N, M]``
    / ``[Gb, K, M]`` layouts of the activation, the output and the kernel."""

    eqn: int
    act: int  # operand index of the activation (0 or 1)
    act_perm: tuple
    out_perm: tuple
    ker_perm: tuple
    sizes: tuple  # (Gb, N, K, M)


def _use(k: int, eqn, side: int) -> _Use:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    if side == 1:
        ac, kc, ab, kb, act, ker = lc, rc, lb, rb, lhs, rhs
    else:
        ac, kc, ab, kb, act, ker = rc, lc, rb, lb, rhs, lhs
    afree = [d for d in range(act.ndim) if d not in ac and d not in ab]
    kfree = [d for d in range(ker.ndim) if d not in kc and d not in kb]
    nb, na, nk = len(ab), len(afree), len(kfree)
    if side == 1:  # output: batch, lhs free (activation), rhs free (kernel)
        out_perm = tuple(range(nb + na + nk))
    else:  # output: batch, lhs free (kernel), rhs free (activation)
        out_perm = (*range(nb), *range(nb + nk, nb + nk + na), *range(nb, nb + nk))
    size = lambda shape, dims: math.prod(shape[d] for d in dims)  # noqa: E731
    return _Use(k, 1 - side, (*ab, *afree, *ac), out_perm, (*kb, *kc, *kfree),
                (size(ker.shape, kb), size(act.shape, afree), size(ker.shape, kc), size(ker.shape, kfree)))


def dense_kernels(jaxpr, candidates) -> dict[int, list[_Use]]:
    """``{invar index: uses}`` of the ``candidates`` (invar indices) of ``jaxpr`` that are dense kernels."""
    alias, uses, bad = {}, {}, set()
    for i in candidates:
        alias[jaxpr.invars[i]] = i
    get = lambda v: None if isinstance(v, Literal) else alias.get(v)  # noqa: E731
    for k, eqn in enumerate(jaxpr.eqns):
        found = [(j, get(v)) for j, v in enumerate(eqn.invars) if get(v) is not None]
        if not found:
            continue
        name = eqn.primitive.name
        if (name in _TRANSPARENT and len(eqn.invars) == 1 and len(eqn.outvars) == 1
                and eqn.outvars[0].aval.shape == eqn.invars[0].aval.shape):
            alias[eqn.outvars[0]] = found[0][1]
            continue
        if name == "dot_general":
            side = 1 if get(eqn.invars[1]) is not None else 0
            leaf = get(eqn.invars[side])
            other = get(eqn.invars[1 - side])
            if other is not None:
                bad.add(other)
            uses.setdefault(leaf, []).append(_use(k, eqn, side))
            continue
        bad.update(leaf for _, leaf in found)
    bad.update(alias[v] for v in jaxpr.outvars if get(v) is not None)
    out = {}
    for leaf, us in uses.items():
        if leaf not in bad and len({(u.ker_perm, u.sizes[0], u.sizes[2], u.sizes[3]) for u in us}) == 1:
            out[leaf] = us
    return out


def _evaluate(closed, args, eps: dict):
    """Evaluate ``closed`` on ``args`` (as ``jax.core.eval_jaxpr`` does); for ``eps[k] = (operand,
    perturbation)`` add the perturbation to the output of equation ``k`` and record that input operand.
    Returns ``(outputs, {k: operand value})``."""
    jaxpr, env, acts = closed.jaxpr, {}, {}
    read = lambda v: v.val if isinstance(v, Literal) else env[v]  # noqa: E731
    env.update(zip(jaxpr.constvars, closed.consts))
    env.update(zip(jaxpr.invars, args))
    for k, eqn in enumerate(jaxpr.eqns):
        params = eqn.primitive.get_bind_params(eqn.params)
        subfuns, params = params if isinstance(params, tuple) else ((), params)
        invals = [read(v) for v in eqn.invars]
        with eqn.ctx.manager:
            out = eqn.primitive.bind(*subfuns, *invals, **params)
        if k in eps:
            act, perturbation = eps[k]
            acts[k] = invals[act]
            out = out + perturbation
        env.update(zip(eqn.outvars, out if eqn.primitive.multiple_results else [out]))
    return [read(v) for v in jaxpr.outvars], acts


def _f32(x):
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _canonical_act(x, u: _Use):
    gb, n, k, _ = u.sizes
    return _f32(jnp.transpose(x, u.act_perm).reshape(gb, n, k))


def _canonical_cot(g, u: _Use):
    """``g [R, *out]`` -> ``[R, Gb, N, M]``."""
    gb, n, _, m = u.sizes
    return _f32(jnp.transpose(g, (0, *(1 + p for p in u.out_perm))).reshape(g.shape[0], gb, n, m))


def _kernel_gramian(a, g, num: int):
    """``(G, rows)``: the Gramian of the first ``num`` of the rows ``A_gᵀ g_r`` (``a [Gb, N, K]``,
    ``g [R, Gb, N, M]``), by the cheaper form counting the update too. ``rows [R, Gb, K, M]`` when they
    were formed (the update then combines them), else ``None`` (the update is ``Aᵀ Σ_r w_r g_r``)."""
    r, gb, n, m = g.shape
    k = a.shape[-1]
    direct = gb * (r * n * k * m + num * num * k * m + r * k * m)
    via_kernel = gb * (n * n * k + num * n * n * m + num * num * n * m + r * n * m + n * k * m)
    if direct <= via_kernel:
        rows = jnp.einsum("gnk,rgnm->rgkm", a, g)
        flat = rows[:num].reshape(num, -1)
        return flat @ flat.T, rows
    g = g[:num]
    kern = jnp.einsum("gnk,gpk->gnp", a, a)
    return jnp.einsum("sgnm,tgnm->st", g, jnp.einsum("gnp,tgpm->tgnm", kern, g)), None


class _Kernel(NamedTuple):
    leaf: int
    uses: list
    shape: tuple
    dtype: object

    def activation(self, acts):
        return jnp.concatenate([_canonical_act(acts[u.eqn], u) for u in self.uses], axis=1)

    def cotangent(self, eps_rows):
        return jnp.concatenate([_canonical_cot(eps_rows[u.eqn], u) for u in self.uses], axis=2)

    def gradient(self, a, g):
        """``Aᵀ g`` (``g [Gb, N, M]``) in the kernel's own layout and dtype."""
        return self.layout(jnp.einsum("gnk,gnm->gkm", a, g))

    def layout(self, grad):
        """``[Gb, K, M]`` -> the kernel's own layout and dtype."""
        perm = self.uses[0].ker_perm
        grad = grad.reshape([self.shape[d] for d in perm])
        return jnp.transpose(grad, np.argsort(perm)).astype(self.dtype)


def autogram_level(fn, params, part, chunk_size, key, *, build, cotangent):
    """``(TaskGradients, aux)`` at level ``"autogram"`` (see the module docstring); ``build`` is the
    ``TaskGradients`` class and ``cotangent(w, extra)`` the pullback's cotangent (both from
    :mod:`mtljax.optim.task_grads`, which calls this)."""

    shared, specific = part.split(params)

    def flat(s, h):
        return fn.losses(part.merge(s, h))

    closed, out_shape = jax.make_jaxpr(flat, return_shape=True)(shared, specific)
    out_tree = jax.tree.structure(out_shape)
    has_extra = out_shape[1] is not None
    found = dense_kernels(closed.jaxpr, range(len(shared)))
    if not found:
        raise ValueError(NO_KERNEL)
    kernels = [_Kernel(i, us, shared[i].shape, shared[i].dtype) for i, us in sorted(found.items())]
    rest = [i for i in range(len(shared)) if i not in found]
    eqns = closed.jaxpr.eqns
    eps0 = {u.eqn: jnp.zeros(eqns[u.eqn].outvars[0].aval.shape, eqns[u.eqn].outvars[0].aval.dtype)
            for kern in kernels for u in kern.uses}
    act_of = {u.eqn: u.act for kern in kernels for u in kern.uses}

    def vector(s_rest, h, eps):
        s = list(shared)
        for i, x in zip(rest, s_rest):
            s[i] = x
        outs, acts = _evaluate(closed, [*s, *h], {k: (act_of[k], e) for k, e in eps.items()})
        losses, extra, aux = jax.tree.unflatten(out_tree, outs)
        vec = jnp.concatenate([losses, jnp.reshape(extra, (1,)).astype(losses.dtype)]) if has_extra else losses
        return vec, (losses, aux, acts)

    vec, vjp_fn, (losses, aux, acts) = jax.vjp(vector, [shared[i] for i in rest], specific, eps0, has_aux=True)
    num = losses.shape[0]
    a_of = [kern.activation(acts) for kern in kernels]
    cache, formed = {}, {}  # the pulled-back rows; per kernel, its rows A_gᵀ g_r when the Gramian formed them

    def rows():
        if "rows" not in cache:
            r_rest, r_h, r_eps = jacobian_from_vjp(vjp_fn, vec.shape[0], chunk_size=chunk_size, dtype=vec.dtype)
            cache["rows"] = (r_rest, r_h, [kern.cotangent(r_eps) for kern in kernels])
        return cache["rows"]

    def gram():
        r_rest, _, g_of = rows()
        total = gramian_of([x[:num] for x in r_rest]) if r_rest else 0.0
        for kern, a, g in zip(kernels, a_of, g_of):
            block, formed[kern.leaf] = _kernel_gramian(a, g, num)
            total = total + block
        return total

    def pullback(w):
        cot = cotangent(w.astype(vec.dtype), has_extra)
        if "rows" in cache:  # the G_t are there: combine them, no further backward pass
            r_rest, r_h, g_of = cache["rows"]
            g_rest, g_h = combine(r_rest, cot), combine(r_h, cot)
            g_k = [None if formed.get(kern.leaf) is not None else jnp.tensordot(cot.astype(g.dtype), g, axes=1)
                   for kern, g in zip(kernels, g_of)]
        else:
            g_rest, g_h, g_eps = vjp_fn(cot)
            g_k = [kern.cotangent(jax.tree.map(lambda x: x[None], g_eps))[0] for kern in kernels]
        g_s = [None] * len(shared)
        for i, x in zip(rest, g_rest):
            g_s[i] = x
        for kern, a, g in zip(kernels, a_of, g_k):
            rows_k = formed.get(kern.leaf)
            g_s[kern.leaf] = (kern.layout(jnp.tensordot(cot.astype(rows_k.dtype), rows_k, axes=1))
                              if rows_k is not None else kern.gradient(a, g))
        return g_s, list(g_h)

    tg = build(losses, part, key=key, pullback=pullback, gramian=gram, has_extra=has_extra)
    return tg, aux


def count_dense_kernels(fun, params, specific=None) -> int:
    """How many shared leaves of ``params`` ``fun(params)`` reads only as dense kernels (traced, not run)."""
    leaves, treedef = jax.tree.flatten(params)
    mask = [False] * len(leaves) if specific is None else [bool(m) for m in treedef.flatten_up_to(specific)]
    closed = jax.make_jaxpr(lambda *xs: fun(jax.tree.unflatten(treedef, xs)))(*leaves)
    return len(dense_kernels(closed.jaxpr, [i for i, m in enumerate(mask) if not m]))


__all__ = ["NO_KERNEL", "autogram_level", "count_dense_kernels", "dense_kernels"]
