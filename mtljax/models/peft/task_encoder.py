"""A task embedding from a few labelled examples: the support-set encoder of FM3-style hypernetwork
adaptation (after FM3's task-specific hypernetworks, and the set encoders of Neural Processes /
Deep Sets: Zaheer et al., 2017, "Deep Sets"; Garnelo et al., 2018, "Conditional Neural Processes").

Given a support set ``{(x_k, y_k)}_{k<K}`` of one task, its features ``f_k = f(x_k) ∈ R^D`` (the frozen
base ViT's pooled output) and labels ``y_k``, the embedding is a Deep-Sets sum decomposition::

    u_k = [f_k − f̄ ; d_k ; c_k]                     one (feature, label) pair, label-encoded
    z   = ρ(mean_k φ(u_k)) ∈ R^E                     φ, ρ: two-layer GELU MLPs

so ``z`` is invariant to the order of the support set (a mean over examples; ``f̄``, the class
prototypes and the label statistics below are means too) and defined for any ``K ≥ 1``.

**Label encoding** (one scheme for classification with any number of classes and for regression):
the label is encoded by the *direction in feature space it points to*, ``d_k ∈ R^D``, plus three
scalars ``c_k``:

* classification (``C`` classes; class ids carry no meaning across tasks, so no one-hot):
  ``d_k = μ_{y_k} − f̄``, the centred prototype (mean feature) of the example's class in the support
  set; ``c_k = [1, 0, log C / log 100]``. Relabelling the classes changes nothing; a class absent
  from the support set simply has no prototype.
* regression: with ``ỹ_k = (y_k − ȳ) / (σ_y + ε)`` the standardised target, ``d_k = ỹ_k (f_k − f̄)``,
  whose mean over the support set is the feature-target covariance ``Cov(f, ỹ)`` — the regression
  analogue of the prototypes' spread; ``c_k = [0, 1, ỹ_k]``.

Everything is computed with masks (``mask [K]``: padded support sets of one static size).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

KINDS = ("classification", "regression")
_EPS = 1e-6


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``x [K, ...]`` over the rows where ``mask [K]`` is 1."""
    w = mask / jnp.maximum(mask.sum(), 1.0)
    return jnp.tensordot(w, x, axes=1)


def encode_pairs(features: jax.Array, labels: jax.Array, kind: str, num_classes: int = 0,
                 mask: jax.Array | None = None) -> jax.Array:
    """The label-encoded pairs ``u [K, 2·D + 3]`` of a support set (module docstring): ``features
    [K, D]``, ``labels [K]`` (class ids for ``kind='classification'`` with ``num_classes`` classes,
    values for ``'regression'``), ``mask [K]`` (1 = a real example; default all)."""
    if kind not in KINDS:
        raise ValueError(f"encode_pairs: kind must be one of {KINDS}, got {kind!r}")
    f = features.astype(jnp.float32)
    k = f.shape[0]
    mask = jnp.ones((k,), jnp.float32) if mask is None else mask.astype(jnp.float32)
    centred = f - _masked_mean(f, mask)
    if kind == "classification":
        if num_classes < 1:
            raise ValueError(f"encode_pairs: classification needs num_classes >= 1, got {num_classes}")
        onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * mask[:, None]  # [K, C]
        protos = (onehot.T @ centred) / jnp.maximum(onehot.sum(0), 1.0)[:, None]  # [C, D], centred prototypes
        direction = onehot @ protos
        scalars = jnp.broadcast_to(jnp.array([1.0, 0.0, jnp.log(num_classes) / jnp.log(100.0)]), (k, 3))
    else:
        y = labels.astype(jnp.float32)
        mean = _masked_mean(y, mask)
        std = jnp.sqrt(_masked_mean(jnp.square(y - mean), mask))
        yt = (y - mean) / (std + _EPS)
        direction = yt[:, None] * centred
        scalars = jnp.stack([jnp.zeros_like(yt), jnp.ones_like(yt), yt], axis=1)
    return jnp.concatenate([centred, direction, scalars], axis=1) * mask[:, None]


class SupportEncoder(nn.Module):
    """``(features [K, D], labels [K], mask) -> task embedding [E]``, permutation-invariant over the
    support set (module docstring). ``kind`` / ``num_classes`` are static (one encoder serves every
    task: its parameters do not depend on them)."""

    task_dim: int = 64
    hidden_dim: int = 128

    @nn.compact
    def __call__(self, features: jax.Array, labels: jax.Array, kind: str, num_classes: int = 0,
                 mask: jax.Array | None = None) -> jax.Array:
        u = encode_pairs(features, labels, kind, num_classes, mask)
        k = u.shape[0]
        mask = jnp.ones((k,), jnp.float32) if mask is None else mask.astype(jnp.float32)

        def dense(n, name):
            init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("hyper_in", "hyper_hidden"))
            return nn.Dense(n, kernel_init=init, name=name,
                            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("hyper_hidden",)))

        h = dense(self.hidden_dim, "phi2")(nn.gelu(dense(self.hidden_dim, "phi1")(u)))  # φ(u_k)
        pooled = _masked_mean(h, mask)
        return dense(self.task_dim, "rho2")(nn.gelu(dense(self.hidden_dim, "rho1")(pooled)))  # ρ(mean φ)
