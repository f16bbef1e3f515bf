"""Controllable multi-task model (Aich et al., ICCV 2023, "Efficient Controllable Multi-Task
Architectures"): a shared slimmable encoder and one slimmable decoder per task, each with its own
width multiplier, so that one trained super-network serves any (compute budget, task preference).

``apply(params, inputs, *, task=None, train=False, widths=None) -> (outputs_by_task, aux)``

* ``widths=None`` is the full network; otherwise a :class:`SlimConfig` (encoder multiplier and one
  multiplier per task decoder), a dict ``{"encoder": w, "decoders": {task: w}}``, or one number for
  every component. Every multiplier must be in the trained set (``encoder_widths``,
  ``decoder_widths``); the kernels are *sliced* (static widths, one compilation per configuration).
* ``train=True`` runs the **sandwich**: the largest configuration, the smallest, and ``num_random``
  random ones (encoder and every decoder drawn independently and uniformly from their width sets,
  from the ``dropout`` rng stream), the random ones by channel *masks* so that a new draw every step
  needs no recompilation. Outputs then carry a leading configuration axis ``[K, B, ...]`` (largest
  first; ``stacked_train_outputs`` tells the train step, which averages each task's loss over the K
  configurations). ``aux["losses"]["cikd"]`` is the Configuration-Invariant KD loss of the smaller
  configurations' encoder features toward the full encoder's (see :mod:`mtljax.slim.sandwich`); it
  is present (zero) outside training too, so the trainer knows to add it.

Decoders (``heads_<task>``, task-specific for the multi-task methods) are MLPs of ``decoder_depth``
slimmable hidden layers (GELU) and a fixed-width output layer; classification decoders read the
pooled representation, dense ones every token (then un-patchify to pixels, as ``DenseHead``).

:func:`export` turns ``(model, params, widths)`` into a standalone smaller model and parameter tree
(fewer heads / channels / hidden units, one width) that computes the same outputs;
:func:`save_subnetwork` / :func:`load_subnetwork` store it with orbax plus a JSON spec.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtljax.models.slim_backbones import SlimConvNet, SlimViT
from mtljax.models.slimmable import SlimDense, check_widths, counts, width_index
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
    def __call__(self, rep, index=-1, masked: bool = False):
        kw = dict(widths=self.widths, dtype=self.dtype, param_dtype=self.param_dtype)
        x = rep["tokens"] if self.task.is_dense else rep["pooled"]
        n_in, axis = self.in_dim, "embed"
        for i in range(self.depth):
            x = SlimDense(features=self.hidden, in_features=n_in, axes=(axis, "mlp"), name=f"hidden{i}", **kw)(
                x, index, masked)
            x = nn.gelu(x)
            n_in, axis = self.hidden, "hidden_in"
        p, c = self.patch_size, self.task.head_dim
        per_token = p * p * c if self.task.is_dense else c
        out = SlimDense(features=per_token, in_features=n_in, slim_out=False, axes=("mlp", "classes"),
                        kernel_init=nn.initializers.zeros, name="out", **kw)(x, index, masked)
        if self.task.is_dense:
            b = out.shape[0]
            gh, gw = self.grid
            out = out.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * p, gw * p, c)
        return out.astype(jnp.float32)


class ControllableModel(nn.Module):
    backbone: nn.Module  # SlimViT or SlimConvNet, built with ``widths=encoder_widths``
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
    def stacked_train_outputs(self) -> bool:
        """In training, outputs are ``[K, B, ...]`` over the sandwich configurations."""
        return True

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
        pooled, tokens = self.backbone(inputs, index, masked, train=train)
        return {"pooled": pooled, "tokens": tokens}

    def _decode(self, rep, dec_index, masked: bool, task: str | None):
        names = self.task_names if task is None else (task,)
        out = {}
        for name in names:
            if name not in self.heads:
                raise ValueError(f"unknown task {name!r}; the model has {list(self.task_names)}")
            out[name] = self.heads[name](rep, dec_index[self.task_names.index(name)], masked)
        return out

    def encode(self, inputs, *, train: bool = False, widths=None):
        """The shared representation at the encoder width of ``widths``: ``(rep, aux)``."""
        enc, _ = self.indices(widths)
        return self._encode(inputs, enc, False, train), {"losses": {}, "metrics": {}}

    def decode(self, rep, *, task: str | None = None, widths=None):
        """Task outputs from a representation, each decoder at its width in ``widths``."""
        _, dec = self.indices(widths)
        return self._decode(rep, dec, False, task)

    def forward_config(self, inputs, enc_index, dec_index, *, masked: bool, task: str | None = None,
                       train: bool = False):
        """``(outputs, rep)`` at width indices (static ints when sliced, traced when ``masked``)."""
        rep = self._encode(inputs, enc_index, masked, train)
        return self._decode(rep, dec_index, masked, task), rep

    def __call__(self, inputs, *, task: str | None = None, train: bool = False, widths=None, step=None):
        zero = {"losses": {"cikd": jnp.zeros((), jnp.float32)}, "metrics": {}}
        if not train or widths is not None:
            enc, dec = self.indices(widths)
            out, _ = self.forward_config(inputs, enc, dec, masked=False, task=task, train=train)
            return out, zero
        from mtljax.slim.sandwich import sandwich_forward

        return sandwich_forward(self, inputs, task=task, step=step)


# ---- building from a config / a spec ----------------------------------------------------------------
def spec_from_config(cfg, tasks, input_shape) -> dict:
    """The constructor description of ``config.model`` (name 'controllable') as a JSON-able dict."""
    from mtljax.models import vit_dims

    s = cfg.slim
    if s.backbone not in BACKBONES:
        raise ValueError(f"config.model.slim.backbone: unknown {s.backbone!r}; choose from {list(BACKBONES)}")
    if len(input_shape) != 3:
        raise ValueError(f"config.model.name='controllable' needs image inputs [H, W, C], got {tuple(input_shape)}")
    spec = dict(backbone=s.backbone, input_shape=list(input_shape), pool=cfg.vit.pool,
                encoder_widths=list(check_widths(s.encoder_widths, "config.model.slim.encoder_widths")),
                decoder_widths=list(check_widths(s.decoder_widths, "config.model.slim.decoder_widths")),
                decoder_hidden={t.name: int(s.decoder_hidden) for t in tasks}, decoder_depth=int(s.decoder_depth),
                switchable_norm=bool(s.switchable_norm), num_random=int(s.num_random),
                cikd_weight=float(s.cikd_weight), cikd_distance=str(s.cikd_distance),
                cikd_start=int(s.cikd_start), cikd_ramp=int(s.cikd_ramp), dropout=float(cfg.dropout),
                dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    if s.backbone == "vit":
        d = vit_dims(cfg.vit)
        spec.update(patch_size=cfg.vit.patch_size, width=d["width"], depth=d["depth"], num_heads=d["num_heads"],
                    head_dim=d["width"] // d["num_heads"], mlp_dim=d["mlp_dim"])
    else:
        spec.update(channels=[int(c) for c in s.conv_channels], width=int(s.conv_dim))
        stride = 2 ** (len(s.conv_channels) - 1)
        if input_shape[0] % stride or input_shape[1] % stride:
            raise ValueError(f"config.model.slim.conv_channels: {len(s.conv_channels)} stages downsample by "
                             f"{stride}, which does not divide the {input_shape[0]}x{input_shape[1]} images")
    return spec


def build_from_spec(spec: Mapping, tasks) -> ControllableModel:
    from mtljax.models import DTYPES

    kw = dict(dtype=DTYPES[spec["dtype"]], param_dtype=DTYPES[spec["param_dtype"]])
    enc_w = tuple(spec["encoder_widths"])
    common = dict(widths=enc_w, switchable_norm=spec["switchable_norm"], dropout=spec["dropout"], **kw)
    if spec["backbone"] == "vit":
        backbone = SlimViT(patch_size=spec["patch_size"], width=spec["width"], depth=spec["depth"],
                           num_heads=spec["num_heads"], head_dim=spec["head_dim"], mlp_dim=spec["mlp_dim"],
                           pool=spec["pool"], **common)
    else:
        backbone = SlimConvNet(channels=tuple(spec["channels"]), width=spec["width"], **common)
    h, w, _ = spec["input_shape"]
    grid = (h // backbone.stride, w // backbone.stride)
    return ControllableModel(backbone, tuple(tasks), enc_w, tuple(spec["decoder_widths"]),
                             tuple(int(spec["decoder_hidden"][t.name]) for t in tasks), spec["decoder_depth"],
                             spec["width"], grid, spec["num_random"], spec["cikd_weight"],
                             spec.get("cikd_distance", "normalized"), spec.get("cikd_start", 0),
                             spec.get("cikd_ramp", 0), **kw)


def build_controllable(cfg, tasks, input_shape) -> ControllableModel:
    return build_from_spec(spec_from_config(cfg, tasks, input_shape), tasks)


def spec_of(model: ControllableModel, input_shape) -> dict:
    """The spec a model was built from (inverse of :func:`build_from_spec`)."""
    from mtljax.models import DTYPES

    names = {v: k for k, v in DTYPES.items()}
    b = model.backbone
    spec = dict(input_shape=list(input_shape), pool=getattr(b, "pool", "gap"),
                encoder_widths=list(model.encoder_widths), decoder_widths=list(model.decoder_widths),
                decoder_hidden=dict(zip(model.task_names, model.decoder_hidden)), decoder_depth=model.decoder_depth,
                switchable_norm=b.switchable_norm, num_random=model.num_random, cikd_weight=model.cikd_weight,
                cikd_distance=model.cikd_distance, cikd_start=model.cikd_start, cikd_ramp=model.cikd_ramp,
                dropout=b.dropout, dtype=names[model.dtype], param_dtype=names[model.param_dtype], width=b.width)
    if isinstance(b, SlimViT):
        spec.update(backbone="vit", patch_size=b.patch_size, depth=b.depth, num_heads=b.num_heads,
                    head_dim=b.head_dim, mlp_dim=b.mlp_dim)
    else:
        spec.update(backbone="conv", channels=list(b.channels))
    return spec


# ---- export -----------------------------------------------------------------------------------------
def subnet_spec(spec: Mapping, model: ControllableModel, widths) -> dict:
    """The spec of the standalone sub-network at ``widths`` (one width everywhere: 1.0)."""
    enc, dec = model.indices(widths)
    ew, dw = model.encoder_widths, model.decoder_widths
    out = dict(spec, encoder_widths=[1.0], decoder_widths=[1.0], num_random=0)
    if spec["backbone"] == "vit":
        out.update(num_heads=counts(spec["num_heads"], ew)[enc], mlp_dim=counts(spec["mlp_dim"], ew)[enc])
    else:
        out.update(channels=[counts(c, ew)[enc] for c in spec["channels"]])
    out["decoder_hidden"] = {n: counts(spec["decoder_hidden"][n], dw)[i] for n, i in zip(model.task_names, dec)}
    return out


def export(model: ControllableModel, params, widths, input_shape):
    """``(small_model, small_params, small_spec)``: the sub-network at ``widths`` as a standalone model.

    Slimmable layers keep channel *prefixes*, so every kernel and bias of the sub-network is the
    leading block of the super-network's; switchable norm parameters keep their width's row.
    """
    enc, dec = model.indices(widths)
    spec = subnet_spec(spec_of(model, input_shape), model, widths)
    small = build_from_spec(spec, model.tasks)
    shapes = jax.eval_shape(lambda: nn.unbox(small.init(jax.random.PRNGKey(0),
                                                        jnp.zeros((1, *input_shape), jnp.float32)))["params"])
    dec_of = {f"heads_{n}": i for n, i in zip(model.task_names, dec)}

    def cut(path, leaf, target):
        keys = [getattr(k, "key", str(k)) for k in path]
        if keys[-1].startswith("switch_"):
            leaf = leaf[dec_of.get(keys[0], enc)][None]
        return leaf[tuple(slice(0, n) for n in target.shape)]

    small_params = jax.tree_util.tree_map_with_path(cut, nn.unbox(params), shapes)
    return small, small_params, spec


def save_subnetwork(directory: str, spec: Mapping, tasks, params, info: Mapping | None = None) -> str:
    """Write ``params`` (orbax) and ``subnet.json`` (spec, tasks, ``info``) to ``directory``."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "params")
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, jax.device_get(params), force=True)
    meta = dict(spec=dict(spec), tasks=[dataclasses.asdict(t) for t in tasks], info=dict(info or {}))
    with open(os.path.join(directory, "subnet.json"), "w") as f:
        json.dump(meta, f, indent=1, default=_jsonable)
    return directory


def load_subnetwork(directory: str):
    """``(model, params, meta)`` of a sub-network written by :func:`save_subnetwork`."""
    import orbax.checkpoint as ocp

    with open(os.path.join(directory, "subnet.json")) as f:
        meta = json.load(f)
    tasks = tuple(Task(**{**t, "metrics": tuple(t["metrics"])}) for t in meta["tasks"])
    model = build_from_spec(meta["spec"], tasks)
    shape = tuple(meta["spec"]["input_shape"])
    abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape))))["params"])
    with ocp.StandardCheckpointer() as ckpt:
        params = ckpt.restore(os.path.join(os.path.abspath(directory), "params"), abstract)
    return model, params, meta


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON-serialisable: {type(x)}")


# ---- training objective ------------------------------------------------------------------------------
# The sandwich forward gives outputs [K, B, ...] over K configurations: a task's loss is its mean over
# them, and the CI-KD loss arrives in aux["losses"] (added with weight 1).
from mtljax.models.objective import objective as _objective, stacked_objective  # noqa: E402

_objective.register(ControllableModel)(stacked_objective)
