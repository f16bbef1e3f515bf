"""Per-task gradients and their Gramian, at parameter or representation level.

Let ``L(θ) ∈ R^T`` be the vector of task losses and ``J = ∂L/∂θ`` (``T × #params``) its Jacobian.

* :func:`task_jacobian` — all rows of ``J`` from **one** forward/VJP: the VJP is linearised once and
  applied to the ``T`` unit cotangents with ``vmap`` (``chunk_size`` cotangents at a time with
  ``lax.map``: less memory, more sequential work).
* :func:`task_gramian` — only ``G = J Jᵀ`` (``T × T``). With ``chunk_size = c < T`` at most ``2c``
  gradient rows are alive at once (block ``G[a, b] = J_a J_bᵀ`` over chunk pairs), so memory is
  ``O(c · #params + T²)`` instead of ``O(T · #params)``; the final update ``Jᵀ w`` is one more VJP.
* Representation level ("-UB" variants, Sener & Koltun 2018): the same functions applied to the
  losses as a function of the shared representation ``Z`` (``J_Z`` is ``T × (B · d)``, usually far
  smaller than ``J``); the update of the shared parameters is then ``(∂Z/∂θ)ᵀ J_Zᵀ w``.
* :func:`sharded_gramian` — ``G`` of a Jacobian whose parameter axes are sharded over a mesh: each
  device computes the Gramian of its own parameter shards and one ``psum`` over the mesh adds the
  blocks (replicated leaves are counted once), inside ``jax.shard_map``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def gramian_of(rows) -> jax.Array:
    """``G = J Jᵀ`` of stacked per-task gradients (every leaf ``[T, ...]``), in at least float32."""
    leaves = jax.tree.leaves(rows)
    t = leaves[0].shape[0]
    dtype = jnp.promote_types(leaves[0].dtype, jnp.float32)
    return sum(x.reshape(t, -1).astype(dtype) @ x.reshape(t, -1).astype(dtype).T for x in leaves)


def combine(rows, w: jax.Array):
    """``Jᵀ w = Σ_t w_t rows_t``: the weighted sum of stacked per-task gradients (leading task axis)."""
    return jax.tree.map(lambda j: jnp.tensordot(w.astype(j.dtype), j, axes=1), rows)


def _unit_cotangents(num_tasks: int, dtype=jnp.float32) -> jax.Array:
    return jnp.eye(num_tasks, dtype=dtype)


def _apply_rows(fn: Callable, rows: jax.Array, chunk_size: int | None):
    """Stack ``fn(row)`` for every row (leading axis), ``chunk_size`` rows at a time."""
    if chunk_size is None or chunk_size >= rows.shape[0]:
        return jax.vmap(fn)(rows)
    return jax.lax.map(fn, rows, batch_size=chunk_size)


def check_chunk_size(chunk_size: int | None, key: str = "chunk_size") -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"{key} must be a positive integer or None, got {chunk_size!r}")


def jacobian_from_vjp(vjp_fn: Callable, num_rows: int, *, chunk_size: int | None = None, dtype=jnp.float32):
    """Stack ``vjp_fn(e_t)`` for the ``num_rows`` unit cotangents (one pullback, vmapped).

    Returns what ``vjp_fn`` returns (a tuple, one entry per primal input), each leaf with a leading
    task axis.
    """
    check_chunk_size(chunk_size)
    return _apply_rows(vjp_fn, _unit_cotangents(num_rows, dtype), chunk_size)


def gramian_from_vjp(vjp_fn: Callable, num_rows: int, *, chunk_size: int | None = None,
                     select: Callable = lambda g: g, dtype=jnp.float32) -> jax.Array:
    """``G = J Jᵀ`` over ``select(vjp_fn(e_t))`` with at most ``2·chunk_size`` rows alive at once."""
    check_chunk_size(chunk_size)
    t = num_rows
    pull = lambda r: select(vjp_fn(r)[0])  # noqa: E731
    eye = _unit_cotangents(t, dtype)
    if chunk_size is None or chunk_size >= t:
        return gramian_of(jax.vmap(pull)(eye))
    c = chunk_size
    n = -(-t // c)
    rows = jnp.zeros((n * c, t), dtype).at[:t].set(eye).reshape(n, c, t)  # padded rows are zero

    def block_row(rows_a):
        ja = jax.tree.leaves(jax.vmap(pull)(rows_a))

        def block(rows_b):
            jb = jax.tree.leaves(jax.vmap(pull)(rows_b))
            return sum(a.reshape(c, -1).astype(jnp.float32) @ b.reshape(c, -1).astype(jnp.float32).T
                       for a, b in zip(ja, jb))

        return jax.lax.map(block, rows)  # [n, c, c]

    blocks = jax.lax.map(block_row, rows)  # [n, n, c, c]
    return blocks.transpose(0, 2, 1, 3).reshape(n * c, n * c)[:t, :t]


def task_jacobian(loss_fn: Callable, x, *, chunk_size: int | None = None, has_aux: bool = False):
    """``(losses, J, vjp_fn[, aux])``: the per-task gradients of ``loss_fn(x) -> [T]`` w.r.t. ``x``.

    ``J`` is a pytree shaped like ``x`` with a leading task axis; ``vjp_fn(w)`` gives ``Jᵀ w``.
    """
    out = jax.vjp(loss_fn, x, has_aux=has_aux)
    losses, vjp_fn = out[0], out[1]
    jac = jacobian_from_vjp(vjp_fn, losses.shape[0], chunk_size=chunk_size, dtype=losses.dtype)[0]
    return (losses, jac, vjp_fn) + ((out[2],) if has_aux else ())


def task_gramian(loss_fn: Callable, x, *, chunk_size: int | None = None, has_aux: bool = False):
    """``(losses, G, vjp_fn[, aux])`` without materialising more than ``2·chunk_size`` gradients."""
    out = jax.vjp(loss_fn, x, has_aux=has_aux)
    losses, vjp_fn = out[0], out[1]
    gram = gramian_from_vjp(vjp_fn, losses.shape[0], chunk_size=chunk_size, dtype=losses.dtype)
    return (losses, gram, vjp_fn) + ((out[2],) if has_aux else ())


def sharded_gramian(jacobian, mesh: jax.sharding.Mesh, specs) -> jax.Array:
    """``J Jᵀ`` of a Jacobian sharded like the parameters, with a single all-reduce.

    ``specs`` is the pytree of parameter ``PartitionSpec``s (without the task axis). Each device sums
    ``J_local J_localᵀ`` over its shards, divided by how many devices hold a copy of that shard, and
    one ``psum`` over all mesh axes assembles ``G``.
    """
    axes = tuple(mesh.axis_names)
    leaves, treedef = jax.tree.flatten(jacobian)
    spec_leaves = treedef.flatten_up_to(specs)

    def replicas(spec) -> int:
        used = set()
        for entry in spec:
            used.update((entry,) if isinstance(entry, str) else (entry or ()))
        n = 1
        for a in axes:
            if a not in used:
                n *= mesh.shape[a]
        return n

    copies = [replicas(s) for s in spec_leaves]
    in_specs = tuple(P(None, *s) for s in spec_leaves)

    def local(*blocks):
        t = blocks[0].shape[0]
        g = sum(b.reshape(t, -1).astype(jnp.float32) @ b.reshape(t, -1).astype(jnp.float32).T / k
                for b, k in zip(blocks, copies))
        return jax.lax.psum(g, axes)

    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=P(), check_vma=False)(*leaves)
