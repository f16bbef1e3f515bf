"""Super-network training: sandwich sampling and Configuration-Invariant Knowledge Distillation.

**Sandwich rule** (Yu & Huang, 2019, "Universally Slimmable Networks"; used by Aich et al., 2023 to
train the multi-task super-network with its sub-networks). Every step trains ``K = 2 + num_random``
configurations on the same batch: the largest (every component at its largest width), the smallest
(every component at its smallest width) and ``num_random`` random ones, in which the encoder width
and *each task decoder's* width are drawn independently and uniformly from their trained sets (task
decoders must work with every encoder width, and with each other at any preference). The widest
and narrowest are run *sliced* (static); the random ones by channel masks, so a new draw each step
compiles once. Each task's loss is the **mean** over the K configurations (the paper sums; the mean
differs by the constant K, which Adam ignores, and keeps losses on the scale of the ordinary trainer,
which matters to loss-scale-sensitive weightings such as GLS or DWA). The multi-task method
(``config.optim.method``) then sees the vector of these per-task losses.

**CI-KD** (Aich et al., 2023): the shared encoder's representation should not depend on the width
configuration, so the full encoder (the teacher, under stop-gradient) supervises every smaller
configuration of the same step::

    L_CIKD = λ(step) · 1/(K−1) · Σ_{k≥1} d(F_k, sg(F_0))

with ``F`` the encoder's output tokens (after its final norm: the shared representation every
decoder reads; with ``pool='cls'`` the class token is added the same way). The paper distils
encoder features of the largest configuration into the sub-networks'; its full text was not
available offline, so the distance, the normalisation and the schedule below are our choices:

* ``d`` is the squared error per teacher-feature variance, ``mean_{b,n,c} (F_k − F_0)² / (Var_{b,n}
  F_0[c] + 1e-4)`` (``cikd_distance='normalized'``); ``'mse'`` is the plain squared error. The
  representation width is fixed (:mod:`mtljax.models.slim.conv`, ``.vit``), so features compare one to
  one; ``d`` is exactly 0 whenever a configuration's encoder is the full one.
* Why normalised: trained **from scratch** (no pre-trained encoder, as on multi-digits), the plain
  MSE with λ = 1 from step 0 collapsed the ViT's representation (measured: after 600 steps every
  width's features were input-independent, batch std of the pooled features 0.004 against 0.18 at
  initialisation, and both tasks at chance accuracy; with λ = 0.1 the losses were still at chance
  after 400 steps): making all widths output the same constant satisfies the distillation
  trivially. The normalised distance is invariant to shrinking the features' input-dependent
  variation, so collapse does not lower it.
* ``λ(step)`` = ``cikd_weight`` × a schedule: 0 for ``cikd_start`` steps, then linear to 1 over
  ``cikd_ramp`` steps (the teacher must know something before it is imitated; with a pre-trained
  encoder ``cikd_start = 0`` is natural, and it is the default). The train step hands the model its
  step (``batch["step"]``).

The loss goes to ``aux["losses"]["cikd"]``; the train step adds it with weight 1 to the objective of
every multi-task method (and to the update of shared parameters for gradient-based methods).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

DISTANCES = ("normalized", "mse")


def sample_configs(key: jax.Array, num_random: int, num_enc: int, num_dec: int,
                   num_tasks: int) -> tuple[jax.Array, jax.Array]:
    """Width indices of the sandwich: ``(encoder int32[K], decoders int32[K, T])``.

    Row 0 is the largest configuration, row 1 the smallest, rows 2.. uniform random draws.
    """
    k_enc, k_dec = jax.random.split(key)
    enc = jnp.concatenate([jnp.array([num_enc - 1, 0], jnp.int32),
                           jax.random.randint(k_enc, (num_random,), 0, num_enc, jnp.int32)])
    dec = jnp.concatenate([jnp.full((1, num_tasks), num_dec - 1, jnp.int32), jnp.zeros((1, num_tasks), jnp.int32),
                           jax.random.randint(k_dec, (num_random, num_tasks), 0, num_dec, jnp.int32)])
    return enc, dec


def cikd_loss(student: dict, teacher: dict, pool: str = "gap", distance: str = "normalized") -> jax.Array:
    """Distance of the student's encoder features to the teacher's (the teacher is not trained).

    ``distance='mse'``: mean squared error of the tokens. ``'normalized'`` (default): the same squared
    error with each channel divided by the teacher's variance of that channel over the batch and
    tokens (teacher statistics under stop-gradient), i.e. the error in units of how much the
    teacher's feature actually varies with the input. Unlike the raw MSE it cannot be lowered by
    shrinking every width's input-dependent variation (feature collapse), which the raw MSE rewards
    when the teacher is trained from scratch together with its students (see the module docstring).
    """
    if distance not in DISTANCES:
        raise ValueError(f"config.model.slim.cikd_distance: unknown {distance!r}; choose from {DISTANCES}")
    keys = ("tokens", "pooled") if pool == "cls" else ("tokens",)
    loss = jnp.zeros((), jnp.float32)
    for key in keys:
        s = student[key].astype(jnp.float32)
        t = jax.lax.stop_gradient(teacher[key]).astype(jnp.float32)
        err = jnp.square(s - t)
        if distance == "normalized":
            flat = t.reshape(-1, t.shape[-1])
            var = jnp.mean(jnp.square(flat - jnp.mean(flat, axis=0)), axis=0)
            err = err / (var + 1e-4)
        loss = loss + jnp.mean(err)
    return loss


def num_configs(model: nn.Module) -> int:
    """K, the configurations a training step runs (1 when the model has a single configuration)."""
    if len(model.encoder_widths) == 1 and len(model.decoder_widths) == 1:
        return 1
    return 2 + model.num_random


def cikd_schedule(step: jax.Array | int | None, start: int, ramp: int) -> jax.Array:
    """Multiplier of the CI-KD weight at training ``step``: 0 before ``start``, then linear to 1 over
    ``ramp`` steps (1 throughout when both are 0, or when the step is unknown)."""
    if step is None or (start == 0 and ramp == 0):
        return jnp.ones((), jnp.float32)
    progress = (jnp.asarray(step, jnp.float32) - start) / max(ramp, 1)
    return jnp.clip(progress + (1.0 if ramp == 0 else 0.0), 0.0, 1.0)


def sandwich_forward(model: nn.Module, inputs: jax.Array, *, task: str | None = None,
                     step: jax.Array | int | None = None) -> tuple[dict, dict]:
    """Training forward of a :class:`~mtljax.models.slim.model.SlimModel` (inside apply).

    Returns outputs ``{task: [K, B, ...]}`` (largest configuration first) and ``aux`` with the
    weighted CI-KD loss in ``aux["losses"]["cikd"]`` and the unweighted one in ``aux["metrics"]``.
    """
    n_enc, n_dec, n_tasks = len(model.encoder_widths), len(model.decoder_widths), len(model.tasks)
    k = num_configs(model)
    full = (n_enc - 1, (n_dec - 1,) * n_tasks)
    outputs, teacher = model.forward_config(inputs, *full, masked=False, task=task, train=True)
    stacked = [outputs]
    losses = []
    if k > 1:
        enc, dec = sample_configs(model.make_rng("dropout"), model.num_random, n_enc, n_dec, n_tasks)
        out, rep = model.forward_config(inputs, 0, (0,) * n_tasks, masked=False, task=task, train=True)
        stacked.append(out)
        losses.append(cikd_loss(rep, teacher, getattr(model.backbone, "pool", "gap"), model.cikd_distance))
        for i in range(2, k):
            out, rep = model.forward_config(inputs, enc[i], dec[i], masked=True, task=task, train=True)
            stacked.append(out)
            losses.append(cikd_loss(rep, teacher, getattr(model.backbone, "pool", "gap"), model.cikd_distance))
    outputs = {name: jnp.stack([o[name] for o in stacked]) for name in stacked[0]}
    cikd = jnp.mean(jnp.stack(losses)) if losses else jnp.zeros((), jnp.float32)
    weight = model.cikd_weight * cikd_schedule(step, model.cikd_start, model.cikd_ramp)
    aux = {"losses": {"cikd": weight * cikd}, "metrics": {"cikd": cikd, "cikd_weight": weight}}
    return outputs, aux
