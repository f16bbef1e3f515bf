"""The jit-compiled train and eval steps.

The step computes every task's masked loss, turns the per-task information its multi-task method
needs (losses, the Gramian of task gradients, or the gradients themselves) into one gradient, and
applies the optax update. If the loss or the
gradient is not finite the step returns the *old* state unchanged (and says so in its metrics), so a
bad step can never reach a checkpoint; the loop stops the run and names the step and task.

Both steps are ``jax.jit``-ed with explicit in/out shardings: the state by its logical axes, the batch
over the mesh's batch axes, metrics replicated.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mtljax.models.hps import split_params
from mtljax.optim.base import Method, combine, gramian_of
from mtljax.optim.flat_sam import perturbed_task_gradients
from mtljax.optim.jacobian import gramian_from_vjp, jacobian_from_vjp
from mtljax.optim.rep_mtl import rep_mtl_regularizer, task_saliency
from mtljax.optim.weightings import equal
from mtljax.tasks import Task
from mtljax.train.state import TrainState


def task_losses(model, tasks: Sequence[Task], params, batch, *, train: bool, rng=None):
    """Per-task losses ``[T]``, outputs by task, and the model's aux dict."""
    rngs = {"dropout": rng} if rng is not None else {}
    extra = {"step": batch["step"]} if "step" in batch else {}  # models that schedule on the step
    outputs, aux = model.apply({"params": params}, batch["inputs"], train=train, rngs=rngs, **extra)
    if train and getattr(model, "stacked_train_outputs", False):
        # several sub-network configurations per step (slimmable models): outputs are [K, B, ...];
        # a task's loss is its mean over the K configurations, train metrics use the first (largest).
        losses = jnp.stack([jnp.mean(jax.vmap(lambda o, t=t: t.loss(o, batch["targets"][t.name],
                                                                   batch["masks"][t.name]))(outputs[t.name]))
                            for t in tasks])
        return losses, {k: v[0] for k, v in outputs.items()}, aux
    losses = jnp.stack([t.loss(outputs[t.name], batch["targets"][t.name], batch["masks"][t.name]) for t in tasks])
    return losses, outputs, aux


def rep_mtl_losses(model, tasks: Sequence[Task], params, batch, rng, rep_kwargs: Mapping):
    """Task losses plus the Rep-MTL regulariser (in ``aux["losses"]["rep_mtl"]``).

    The saliency ``S_t = ∂L_t/∂z`` is taken at the pooled shared representation ``z`` (the one every
    classification head reads); it stays differentiable, so the regulariser's gradient reaches the
    encoder and the heads by double backprop, as Rep-MTL (Wang et al., 2025, Eq. 10) specifies.
    """
    rep, aux = model.apply({"params": params}, batch["inputs"], train=True, rngs={"dropout": rng},
                           method=model.encode)

    def dec_losses(z):
        out = model.apply({"params": params}, {**rep, "pooled": z}, method=model.decode)
        return jnp.stack([t.loss(out[t.name], batch["targets"][t.name], batch["masks"][t.name]) for t in tasks]), out

    losses, saliency, outputs = task_saliency(dec_losses, rep["pooled"], has_aux=True)
    reg, metrics = rep_mtl_regularizer(saliency, **rep_kwargs)
    aux = {"losses": {**aux["losses"], "rep_mtl": reg}, "metrics": {**aux["metrics"], **metrics}}
    return losses, outputs, aux


def batch_stats(tasks: Sequence[Task], outputs, batch):
    """Summed metric statistics per task (and the labelled count) for one batch."""
    return {t.name: t.stats(outputs[t.name], batch["targets"][t.name], batch["masks"][t.name]) for t in tasks}


LEVELS = ("param", "gramian", "rep")
HEAD_GRADS = ("task", "weighted")
SAM_MODES = ("none", "sam", "flat")


def make_train_step(model, tasks: Sequence[Task], tx: optax.GradientTransformation,
                    task_weights: Mapping[str, float] | None = None, *, method: Method | None = None,
                    level: str = "param", chunk_size: int | None = None, head_grads: str = "task",
                    has_aux_losses: bool = False, gramian_fn=None, sam: str = "none", sam_rho: float = 0.05,
                    sam_adaptive: bool = False, rep_mtl: Mapping | None = None):
    """The train step for any multi-task method (default: equal weighting).

    * ``method.needs == "losses"``: one VJP of the loss vector with cotangent ``w`` (all parameters).
    * ``level="param"``: per-task gradients of the shared parameters (``J``, stacked) from one pullback;
      Gramian methods get ``G = J Jᵀ`` (``gramian_fn`` may assemble it on a mesh) and the update
      ``Jᵀ w``; Jacobian methods (GradDrop) get ``J``.
    * ``level="gramian"``: only ``G`` is formed (``chunk_size`` rows at a time); the update is one more
      pullback with cotangent ``w``.
    * ``level="rep"``: the Gramian of the gradients w.r.t. the shared representation (MGDA-UB style);
      the update flows back through the encoder with cotangent ``J_Zᵀ w``.

    Heads (``heads_<task>`` parameters) get their own task's gradient (``head_grads="task"``, as in
    MGDA and TorchJD) or the ``w``-weighted one (``"weighted"``). Static ``task_weights`` scale the
    losses before any method sees them. Auxiliary losses (MoE balancing) are added with weight 1.

    ``sam="flat"``: task-based flat-region SAM around the method (``mtljax.optim.flat_sam``; needs
    ``level="param"``). ``sam="sam"``: plain SAM, ``tx`` must then be ``optax.contrib.sam`` in opaque
    mode (``build_optimizer`` does that); the step hands it the multi-task gradient function.

    ``rep_mtl={...}`` (keyword arguments of ``rep_mtl_regularizer``) adds the Rep-MTL regulariser of
    the task saliencies ``∂L_t/∂z`` at the pooled representation as an auxiliary loss (weight 1,
    differentiated by double backprop), so it combines with every method and level but ``rep``.
    """
    method = method or equal()
    if level not in LEVELS:
        raise ValueError(f"config.optim.level: unknown level {level!r}; choose from {LEVELS}")
    if head_grads not in HEAD_GRADS:
        raise ValueError(f"config.optim.head_grads: unknown value {head_grads!r}; choose from {HEAD_GRADS}")
    if sam not in SAM_MODES:
        raise ValueError(f"config.optim.sam: unknown mode {sam!r}; choose from {SAM_MODES}")
    if sam != "none" and not sam_rho > 0:
        raise ValueError(f"config.optim.sam_rho must be > 0 for SAM, got {sam_rho}")
    if sam == "flat" and level != "param":
        raise ValueError(f"config.optim.level={level!r}: flat-region SAM needs per-task gradients; use 'param'")
    if rep_mtl is not None:
        has_aux_losses = True
        if level == "rep" and method.needs != "losses":
            raise ValueError("config.optim.level='rep' cannot be combined with config.optim.rep_mtl; "
                             "use level 'param' or 'gramian'")
    if method.needs == "jacobian" and level != "param":
        raise ValueError(f"config.optim.level={level!r}: method {method.name!r} needs the full per-task "
                         "gradients; use level 'param'")
    num = len(tasks)
    scale = jnp.asarray([float((task_weights or {}).get(t.name, 1.0)) for t in tasks], jnp.float32)

    def with_aux(vec, aux):
        if not has_aux_losses:
            return vec
        return jnp.concatenate([vec, sum(aux["losses"].values(), jnp.zeros((), jnp.float32))[None]])

    def cot(w):
        return jnp.concatenate([w, jnp.ones((1,), w.dtype)]) if has_aux_losses else w

    def loss_vector(params, batch, rng):
        if rep_mtl is not None:
            losses, outputs, aux = rep_mtl_losses(model, tasks, params, batch, rng, rep_mtl)
        else:
            losses, outputs, aux = task_losses(model, tasks, params, batch, train=True, rng=rng)
        return with_aux(scale * losses, aux), (outputs, aux)

    def head_update(jac_heads, w):
        coef = w if head_grads == "weighted" else jnp.ones_like(w)
        return combine(jac_heads, coef)

    def grads_losses(state, batch, k_drop, k_method):
        vec, vjp_fn, (outputs, aux) = jax.vjp(lambda p: loss_vector(p, batch, k_drop), state.params, has_aux=True)
        w, mstate = method.weights(jax.lax.stop_gradient(vec[:num]), state.mtl_state, k_method)
        return vjp_fn(cot(w))[0], vec, w, mstate, outputs, aux

    def grads_param(state, batch, k_drop, k_method):
        shared, heads = split_params(state.params)
        f = lambda s, h: loss_vector({**s, **h}, batch, k_drop)  # noqa: E731
        vec, vjp_fn, (outputs, aux) = jax.vjp(f, shared, heads, has_aux=True)
        losses = vec[:num]
        if level == "gramian":
            gram = gramian_from_vjp(lambda c: (vjp_fn(c)[0],), vec.shape[0], chunk_size=chunk_size)[:num, :num]
            w, mstate = method.weights(losses, state.mtl_state, k_method, gramian=gram)
            g_shared = vjp_fn(cot(w))[0]
            g_heads = vjp_fn(cot(w if head_grads == "weighted" else jnp.ones_like(w)))[1]
            return {**g_shared, **g_heads}, vec, w, mstate, outputs, aux
        jac_s, jac_h = jacobian_from_vjp(vjp_fn, vec.shape[0], chunk_size=chunk_size)
        task_rows = lambda j: jax.tree.map(lambda x: x[:num], j)  # noqa: E731
        js, jh = task_rows(jac_s), task_rows(jac_h)
        g_shared, w, mstate = aggregate_rows(js, losses, state.mtl_state, k_method)
        g_heads = head_update(jh, w)
        if sam == "flat":
            sam_s, sam_h = perturbed_task_gradients(lambda s, h: f(s, h)[0], shared, heads, js, jh,
                                                    rho=sam_rho, adaptive=sam_adaptive)
            if method.needs == "losses":
                g_shared = combine(sam_s, w)
            else:
                diff = jax.tree.map(jnp.subtract, sam_s, js)
                g_flat, _, _ = aggregate_rows(diff, losses, state.mtl_state, jax.random.fold_in(k_method, 1))
                g_shared = jax.tree.map(jnp.add, g_shared, g_flat)
            g_heads = head_update(sam_h, w)
        if has_aux_losses:
            g_shared = jax.tree.map(lambda g, j: g + j[num], g_shared, jac_s)
        return {**g_shared, **g_heads}, vec, w, mstate, outputs, aux

    def aggregate_rows(rows, losses, mstate, key):
        """One update from stacked per-task gradient rows: ``(update, weights, new method state)``."""
        if method.needs == "jacobian":
            update, mstate = method.aggregate(rows, losses, mstate, key)
            return update, jnp.ones((num,), jnp.float32), mstate
        gram = None
        if method.needs == "gramian":
            gram = gramian_fn(rows) if gramian_fn is not None else gramian_of(rows)
        w, mstate = method.weights(losses, mstate, key, gramian=gram)
        return combine(rows, w), w, mstate

    def grads_rep(state, batch, k_drop, k_method):
        shared, heads = split_params(state.params)
        rngs = {"dropout": k_drop}

        def enc(s):
            rep, aux = model.apply({"params": {**s, **heads}}, batch["inputs"], train=True, rngs=rngs,
                                   method=model.encode)
            return (rep, sum(aux["losses"].values(), jnp.zeros((), jnp.float32))), aux

        def dec(rep, h):
            outputs = model.apply({"params": {**shared, **h}}, rep, method=model.decode)
            losses = jnp.stack([t.loss(outputs[t.name], batch["targets"][t.name], batch["masks"][t.name])
                                for t in tasks])
            return scale * losses, outputs

        (rep, aux_total), vjp_enc, aux = jax.vjp(enc, shared, has_aux=True)
        losses, vjp_dec, outputs = jax.vjp(dec, rep, heads, has_aux=True)
        gram = gramian_from_vjp(vjp_dec, num, chunk_size=chunk_size, select=lambda g: g)
        w, mstate = method.weights(losses, state.mtl_state, k_method, gramian=gram)
        d_rep = vjp_dec(w)[0]
        g_shared = vjp_enc((d_rep, jnp.ones_like(aux_total)))[0]
        g_heads = vjp_dec(w if head_grads == "weighted" else jnp.ones_like(w))[1]
        return {**g_shared, **g_heads}, with_aux(losses, aux), w, mstate, outputs, aux

    def train_step(state: TrainState, batch):
        k_drop, k_method = jax.random.split(jax.random.fold_in(state.rng, state.step))
        if getattr(model, "stacked_train_outputs", False):
            batch = {**batch, "step": state.step}  # slimmable models schedule their distillation on it
        if method.needs == "losses" and sam != "flat":
            compute = grads_losses
        else:
            compute = grads_rep if level == "rep" else grads_param
        grads, vec, w, mstate, outputs, aux = compute(state, batch, k_drop, k_method)
        losses = vec[:num] / scale_safe
        total = jnp.dot(scale, losses) + (vec[num] if has_aux_losses else 0.0)
        if sam == "sam":
            grad_fn = lambda p, _: compute(state.replace(params=p), batch, k_drop, k_method)[0]  # noqa: E731
            updates, opt_state = tx.update(grads, state.opt_state, state.params, grad_fn=grad_fn)
        else:
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state, mtl_state=mstate)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(total) & jnp.isfinite(grad_norm) & jnp.all(jnp.isfinite(losses))
        finite = finite & jnp.all(jnp.isfinite(w))
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
        metrics = {
            "loss": total,
            "task_losses": losses,
            "task_weights": w,
            "grad_norm": grad_norm,
            "finite": finite,
            "stats": batch_stats(tasks, outputs, batch),
            "aux": {**aux["metrics"], **{f"aux_loss/{k}": v for k, v in aux["losses"].items()}},
        }
        return new, metrics

    scale_safe = jnp.where(scale > 0, scale, 1.0)
    return train_step


def make_eval_step(model, tasks: Sequence[Task]):
    def eval_step(params, batch):
        losses, outputs, _ = task_losses(model, tasks, params, batch, train=False)
        counts = {t.name: jnp.sum(batch["masks"][t.name]) for t in tasks}
        loss_sums = {t.name: {"sum": losses[i] * counts[t.name], "count": counts[t.name]} for i, t in enumerate(tasks)}
        return {"stats": batch_stats(tasks, outputs, batch), "loss": loss_sums}

    return eval_step


def jit_train_step(train_step, mesh, state_shardings, batch_sharding):
    replicated = NamedSharding(mesh, P())
    return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)


def jit_eval_step(eval_step, mesh, param_shardings, batch_sharding):
    return jax.jit(eval_step, in_shardings=(param_shardings, batch_sharding),
                   out_shardings=NamedSharding(mesh, P()))
