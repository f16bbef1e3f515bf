"""The slim model: controllable multi-task architectures (Aich et al., ICCV 2023, "Efficient Controllable
Multi-Task Architectures"), a shared slimmable encoder and one slimmable decoder per task, each with its
own width multiplier, so that one trained super-network serves any (compute budget, task preference).

``apply(params, inputs, *, task=None, train=False, widths=None) -> (outputs_by_task, aux)``

* ``widths=None`` is the full network; otherwise a :class:`SlimConfig` (encoder multiplier and one
  multiplier per task decoder), a dict ``{"encoder": w, "decoders": {task: w}}``, or one number for
  every component. Every multiplier must be in the trained set (``encoder_widths``,
  ``decoder_widths``); the kernels are *sliced* (static widths, one compilation per configuration).
* ``train=True`` runs the **sandwich**: the largest configuration, the smallest, and ``num_random``
  random ones (encoder and every decoder drawn independently and uniformly from their width sets,
  from the ``dropout`` rng stream), the random ones by channel *masks* so that a new draw every step
  needs no recompilation. Outputs then carry a leading configuration axis ``[K, B, ...]`` (largest
  first; its objective (registered below) averages each task's loss over the K
  configurations). ``aux["losses"]["cikd"]`` is the Configuration-Invariant KD loss of the smaller
  configurations' encoder features toward the full encoder's (see :mod:`.sandwich`); it
  is present (zero) outside training too, so the trainer knows to add it.

Decoders (``heads_<task>``, task-specific for the multi-task methods) are MLPs of ``decoder_depth``
slimmable hidden layers (GELU) and a fixed-width output layer; classification decoders read the
pooled representation, dense ones every token (then un-patchify to pixels, as ``DenseHead``).

:mod:`.export` builds the model from ``config.model`` or a JSON spec and turns ``(model, params,
widths)`` into a standalone smaller model (fewer heads / channels / hidden units, one width) that
computes the same outputs, stored with orbax plus that spec.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.models.objective import objective, stacked_objective
from mtljax.models.plugs import Context
from mtljax.models.slim.layers import SlimDense, check_widths, width_index
from mtljax.models.slim.sandwich import sandwich_forward
from mtljax.tasks import Task

Dtype = Any
BACKBONES = ("vit", "conv")


@dataclasses.dataclass(frozen=True)
class SlimConfig:
    """One sub-network: the encoder's width multiplier and each task decoder's."""

    encoder: float
    decoders: tuple[tuple[str, float], ...]

    @classmethod
    def make(cls, encoder: float, decoders: Mapping[str, float]) -> "SlimConfig":
        return cls(float(encoder), tuple((k, float(v)) for k, v in decoders.items()))

    def decoder(self, task: str) -> float:
        return dict(self.decoders)[task]

    def to_dict(self) -> dict:
        return {"encoder": self.encoder, "decoders": dict(self.decoders)}

    def __str__(self) -> str:
        return f"encoder {self.encoder:g} | " + ", ".join(f"{k} {v:g}" for k, v in self.decoders)


class SlimDecoder(nn.Module):
    """A task's slimmable decoder: ``rep -> [B, head_dim]`` (reads ``pooled [B, D]``) or, for a dense task,
    ``[B, H, W, head_dim]`` (reads ``tokens [B, N, D]`` of a ``grid`` of ``patch_size``-pixel tokens)."""

    task: Task
    in_dim: int
    hidden: int
    depth: int
    widths: tuple[float, ...]
    grid: tuple[int, int] | None = None
    patch_size: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, rep: dict, ctx: Context = Context()) -> jax.Array:
        kw = dict(widths=self.widths, dtype=self.dtype, param_dtype=self.param_dtype)
        x = rep["tokens"] if self.task.is_dense else rep["pooled"]
        n_in, axis = self.in_dim, "embed"
        for i in range(self.depth):
            x = SlimDense(features=self.hidden, in_features=n_in, axes=(axis, "mlp"), name=f"hidden{i}", **kw)(x, ctx)
            x = nn.gelu(x)
            n_in, axis = self.hidden, "hidden_in"
        p, c = self.patch_size, self.task.head_dim
        per_token = p * p * c if self.task.is_dense else c
        out = SlimDense(features=per_token, in_features=n_in, slim_out=False, axes=("mlp", "classes"),
                        kernel_init=nn.initializers.zeros, name="out", **kw)(x, ctx)
        if self.task.is_dense:
            b = out.shape[0]
            gh, gw = self.grid
            out = out.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * p, gw * p, c)
        return out.astype(jnp.float32)


class SlimModel(nn.Module):
    """Slimmable encoder ``backbone`` and one :class:`SlimDecoder` per task (module docstring).

    ``spec_json``: the JSON spec the model was built from (:mod:`.export`), kept for export and saving.
    """

    backbone: nn.Module  # the slim ViT or SlimConvNet, built with ``widths=encoder_widths``
    tasks: tuple[Task, ...]
    encoder_widths: tuple[float, ...]
    decoder_widths: tuple[float, ...]
    decoder_hidden: tuple[int, ...]  # full hidden width of each task's decoder
    decoder_depth: int = 2
    rep_dim: int = 64
    dense_grid: tuple[int, int] | None = None
    num_random: int = 2
    cikd_weight: float = 1.0
    cikd_distance: str = "normalized"
    cikd_start: int = 0
    cikd_ramp: int = 0
    spec_json: str = ""
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        check_widths(self.encoder_widths, "config.model.slim.encoder_widths")
        check_widths(self.decoder_widths, "config.model.slim.decoder_widths")
        self.heads = {
            t.name: SlimDecoder(t, self.rep_dim, h, self.decoder_depth, self.decoder_widths, self.dense_grid,
                                self.backbone.stride, self.dtype, self.param_dtype)
            for t, h in zip(self.tasks, self.decoder_hidden)
        }

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    # ---- configurations -------------------------------------------------------------------------
    def resolve(self, widths) -> SlimConfig:
        """A :class:`SlimConfig` from ``None`` (full), a number, a dict or a SlimConfig; checked."""
        names = self.task_names
        if widths is None:
            widths = 1.0
        if isinstance(widths, (int, float)) and not isinstance(widths, bool):
            return SlimConfig.make(widths, {n: widths for n in names})
        if isinstance(widths, SlimConfig):
            widths = widths.to_dict()
        if not isinstance(widths, Mapping) or set(widths) - {"encoder", "decoders"} or "encoder" not in widths:
            raise ValueError(f"widths must be a number, a SlimConfig or {{'encoder': w, 'decoders': {{task: w}}}}, "
                             f"got {widths!r}")
        decoders = widths.get("decoders", {})
        if isinstance(decoders, (int, float)):
            decoders = {n: decoders for n in names}
        unknown = [k for k in decoders if k not in names]
        missing = [n for n in names if n not in decoders]
        if unknown or missing:
            raise ValueError(f"widths.decoders: unknown task(s) {unknown}, missing task(s) {missing}; "
                             f"tasks are {list(names)}")
        return SlimConfig.make(widths["encoder"], {n: decoders[n] for n in names})

    def indices(self, widths) -> tuple[int, tuple[int, ...]]:
        """Static width indices ``(encoder, (decoder per task))`` of a configuration."""
        cfg = self.resolve(widths)
        enc = width_index(cfg.encoder, self.encoder_widths, "widths.encoder")
        dec = tuple(width_index(w, self.decoder_widths, f"widths.decoders.{n}") for n, w in cfg.decoders)
        return enc, dec

    # ---- forward ----------------------------------------------------------------------------------
    def _encode(self, inputs, index, masked: bool, train: bool):
        enc = self.backbone(inputs, Context(train=train, width_index=index, masked=masked))
        return {"pooled": enc.pooled, "tokens": enc.tokens}

    def _decode(self, rep, dec_index, masked: bool, task: str | None):
        names = self.task_names if task is None else (task,)
        out = {}
        for name in names:
            if name not in self.heads:
                raise ValueError(f"unknown task {name!r}; the model has {list(self.task_names)}")
            out[name] = self.heads[name](rep, Context(width_index=dec_index[self.task_names.index(name)],
                                                      masked=masked))
        return out

    def encode(self, inputs: jax.Array, *, train: bool = False, widths=None) -> tuple[dict, dict]:
        """``({"pooled": [B, D], "tokens": [B, N, D]}, aux)`` at the encoder width of ``widths``."""
        enc, _ = self.indices(widths)
        return self._encode(inputs, enc, False, train), {"losses": {}, "metrics": {}}

    def decode(self, rep: dict, *, task: str | None = None, widths=None) -> dict:
        """Task outputs from a representation, each decoder at its width in ``widths``."""
        _, dec = self.indices(widths)
        return self._decode(rep, dec, False, task)

    def forward_config(self, inputs, enc_index, dec_index, *, masked: bool, task: str | None = None,
                       train: bool = False):
        """``(outputs, rep)`` at width indices (static ints when sliced, traced when ``masked``)."""
        rep = self._encode(inputs, enc_index, masked, train)
        return self._decode(rep, dec_index, masked, task), rep

    def __call__(self, inputs: jax.Array, *, task: str | None = None, train: bool = False, widths=None,
                 step=None) -> tuple[dict, dict]:
        """``(outputs by task, aux)`` at ``widths`` (full by default); with ``train=True`` and no ``widths``
        the sandwich: outputs ``[K, B, ...]`` over K configurations and the CI-KD loss in ``aux``."""
        zero = {"losses": {"cikd": jnp.zeros((), jnp.float32)}, "metrics": {}}
        if not train or widths is not None:
            enc, dec = self.indices(widths)
            out, _ = self.forward_config(inputs, enc, dec, masked=False, task=task, train=train)
            return out, zero
        return sandwich_forward(self, inputs, task=task, step=step)


# ---- training objective ------------------------------------------------------------------------------
# The sandwich forward gives outputs [K, B, ...] over K configurations: a task's loss is its mean over
# them; the CI-KD loss arrives in aux["losses"] (added with weight 1). No shared representation: its
# width differs per sampled configuration, so the representation level and Rep-MTL do not apply.
objective.register(SlimModel)(stacked_objective)
