"""The two inference-time methods of ``mtljax merge``: dynamic logit fusion and PHATGOOSE.

**Dynamic logit fusion** (``--method=logit_fusion``; :mod:`mtljax.merge.logit_fusion`). No merged
weights: per test example and task ``k``, the base logits ``z_0 = head_k(backbone(θ_0, x))`` and every
expert's ``z_s = head_k(backbone(θ_s, x))`` (``S`` backbones, each with task ``k``'s head) are fused as
``z = z_0 + Σ_s α_s (z_s − z_0)``, ``α`` solved per example under the KL budget. The budget is the
largest of the experts' own shifts (``budget="max"``): one expert per task carries the useful shift
here, and the paper's premise (the fused model moves from the base as far as an expert moved from its
base) is kept for it. Regression tasks have no distribution to constrain; they are not scored
(``-`` in the table). The cost is ``S + 1`` forward passes per example.

**PHATGOOSE** (``--method=phatgoose``; :mod:`mtljax.models.peft.phatgoose`). The experts must be LoRA
experts (``configs/merge/experts.py:lora_<task>``). Their factors are stacked into one LoRA model on
``θ_0``; a gate per expert and projection is trained (``config.merge.steps`` Adam steps, learning rate
10 × ``config.merge.learning_rate``, batches of the training split) with everything else frozen, each
task's loss reaching only its own expert's gates (``routing="gate"``); then every token is routed among
all experts by the gates (``routing="phatgoose"``, top ``config.merge.top_k``), with no task ids. The
written checkpoint is that routed model. Reported with it: for the test images of each dataset, the
mean routing weight on every expert (which experts the router picks for which inputs).
"""

from __future__ import annotations

import copy
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtljax.merge import vectors as vec
from mtljax.merge.logit_fusion import dynamic_logit_fusion
from mtljax.merge.vectors import MergeError


def logit_fusion(setup, log: Callable[[str], None]) -> tuple[dict, dict]:
    """``(results by task, info)`` of dynamic logit fusion over ``setup``'s experts."""
    from mtljax.metrics import add_stats, finalize
    from mtljax.trainer.step import batch_stats

    exp = setup.exp
    tasks = [t for t in exp.tasks if t.name in setup.classification]
    objective = exp.objective
    stacked = vec.stack([setup.full(setup.theta0)] + [setup.full(f) for f in setup.finetuned])

    @jax.jit
    def step(stacked, batch):
        outs = jax.vmap(lambda p: objective.forward(p, batch, train=False)[1])(stacked)  # {task: [S+1, B, C]}
        fused, alpha = {}, {}
        for t in tasks:
            z = outs[t.name].astype(jnp.float32)
            fused[t.name], a = dynamic_logit_fusion(z[0], z[1:], budget="max")
            m = batch["masks"][t.name].reshape(-1, 1).astype(jnp.float32)
            alpha[t.name] = jnp.sum(a * m, axis=0)  # summed over the task's examples
        return batch_stats(tasks, fused, batch), alpha

    total, alpha_sum = None, None
    for batch in exp.eval_batches():
        stats, alpha = step(stacked, jax.device_get(batch))
        total = add_stats(total, stats)
        alpha_sum = add_stats(alpha_sum, alpha)
    results = finalize(tasks, total)
    owners = [e.path for e in setup.experts]
    mean_alpha = {t.name: (np.asarray(alpha_sum[t.name]) / max(1.0, float(total[t.name]["accuracy"]["count"]))
                           ).round(3).tolist() for t in tasks if "accuracy" in total[t.name]}
    log("logit fusion: mean α per task over the experts " + "; ".join(f"{k} {v}" for k, v in mean_alpha.items()))
    return results, {"mean_alpha": mean_alpha, "experts": owners}


def _routed_config(setup, routing: str, top_k: int):
    peft = [copy.deepcopy(e.config["model"].get("peft", {})) for e in setup.experts]
    if any("lora" not in str(p.get("method", "")).split("+") for p in peft):
        bad = next(i for i, p in enumerate(peft) if "lora" not in str(p.get("method", "")).split("+"))
        raise MergeError(f"--method=phatgoose: --experts[{bad}] ({setup.experts[bad].path}) is not a LoRA expert "
                         "(config.model.peft.method has no 'lora'); PHATGOOSE routes among LoRA experts")
    if any(str(p.get("method")) != "lora" for p in peft):
        raise MergeError("--method=phatgoose: every expert must be a LoRA-only expert (config.model.peft.method='lora')")
    for key in ("rank", "alpha", "targets"):
        values = {json_key(p.get(key)) for p in peft}
        if len(values) > 1:
            raise MergeError(f"--method=phatgoose: the experts differ in config.model.peft.{key} ({sorted(values)})")
    c = copy.deepcopy(setup.config)
    with c.unlocked():
        c.model.peft.update({k: peft[0][k] for k in ("rank", "alpha", "targets") if k in peft[0]})
        c.model.peft.method = "lora"
        c.model.peft.routing = routing
        c.model.peft.top_k = int(top_k)
    return c


def json_key(v):
    return str(list(v)) if isinstance(v, (list, tuple)) else str(v)


def phatgoose(setup, m, log: Callable[[str], None]):
    """``(experiment, params, info)`` of the routed model (see the module docstring)."""
    from mtljax.trainer.experiment import Experiment
    from mtljax.trainer.warm_start import restore_arrays, source_shapes

    gate_cfg = _routed_config(setup, "gate", int(m.top_k))
    if int(m.top_k) > len(setup.tasks):
        raise MergeError(f"config.merge.top_k: {m.top_k} is more than the {len(setup.tasks)} experts")
    route_cfg = _routed_config(setup, "phatgoose", int(m.top_k))
    gate_exp, route_exp = Experiment(gate_cfg), Experiment(route_cfg)
    loras: dict[str, list] = {}
    for run in setup.experts:
        shapes = source_shapes(run.state_dir)
        wanted = {p: jax.ShapeDtypeStruct(*s) for p, s in shapes.items() if "lora_" in p}
        for p, x in restore_arrays(run.state_dir, wanted).items():
            loras.setdefault(p, []).append(np.asarray(x))
    theta0, heads = vec.flatten(setup.theta0), vec.flatten(setup.heads)
    params = {}
    for p, s in vec.flatten(gate_exp.param_shapes).items():
        if p in theta0:
            params[p] = jnp.asarray(theta0[p])
        elif p in heads:
            params[p] = jnp.asarray(heads[p])
        elif p.endswith("/gate"):
            params[p] = jnp.zeros(s.shape, s.dtype)
        elif p in loras:
            params[p] = jnp.concatenate([jnp.asarray(x) for x in loras[p]], axis=0)
            if params[p].shape != s.shape:
                raise MergeError(f"--method=phatgoose: {p!r} stacks to {params[p].shape}, the routed model "
                                 f"wants {s.shape}")
        else:
            raise MergeError(f"--method=phatgoose: no expert has {p!r}")
    gates = {p: v for p, v in params.items() if p.endswith("/gate")}
    frozen = {p: v for p, v in params.items() if not p.endswith("/gate")}
    objective = gate_exp.objective

    def loss(g, batch, frozen):
        full = vec.unflatten({**frozen, **g})
        return jnp.sum(objective.forward(full, batch, train=False)[0])

    tx = optax.adam(10 * float(m.learning_rate))

    @jax.jit
    def step(g, opt_state, batch, frozen):  # the frozen parameters are an argument, not constants
        value, grads = jax.value_and_grad(loss)(g, batch, frozen)
        updates, opt_state = tx.update(grads, opt_state, g)
        return optax.apply_updates(g, updates), opt_state, value

    opt_state = tx.init(gates)
    batches = setup.unlabelled_batches(int(m.batch_size), int(m.seed) + 1, split="train")
    losses = []
    for i in range(int(m.steps)):
        gates, opt_state, value = step(gates, opt_state, next(batches), frozen)
        losses.append(float(value))
    log(f"phatgoose: gates trained for {m.steps} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    routed = vec.unflatten({**frozen, **gates})
    return route_exp, routed, {"gate_loss_first": losses[0], "gate_loss_last": losses[-1],
                               "routing_by_dataset": routing_by_dataset(route_exp, routed, setup)}


def routing_by_dataset(exp, params, setup) -> dict:
    """Mean routing weight on every expert, per dataset of the test images (all routed projections and
    tokens averaged)."""
    model = exp.model
    num = len(setup.tasks)

    @jax.jit
    def weights(params, inputs):
        _, state = model.apply({"params": params}, inputs, train=False, mutable=["intermediates"])
        found = [w.reshape(w.shape[0], -1, num).mean(axis=1) for path, w in
                 jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
                 if "routing" in vec.path_string(path)]
        return jnp.mean(jnp.stack(found), axis=0)  # [B, T]

    groups = {}
    for e in setup.experts:
        groups.setdefault(e.config["data"]["name"], []).extend(e.tasks)
    sums = {name: np.zeros(num) for name in groups}
    counts = dict.fromkeys(groups, 0)
    for batch in exp.eval_batches():
        b = jax.device_get(batch)
        w = np.asarray(weights(params, b["inputs"]))
        for name, tasks in groups.items():
            rows = np.asarray(b["masks"][tasks[0]]).reshape(len(w), -1).max(axis=1) > 0
            sums[name] += w[rows].sum(axis=0)
            counts[name] += int(rows.sum())
    return {name: dict(zip(setup.tasks, (sums[name] / max(counts[name], 1)).round(3).tolist())) for name in groups}
