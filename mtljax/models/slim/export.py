"""Build the slim model from ``config.model`` or a JSON spec, and export sub-networks.

A *spec* is the JSON-able constructor description of a :class:`~mtljax.models.slim.model.SlimModel`
(:func:`spec_from_config`, :func:`spec_of`); :func:`build_from_spec` is its inverse. :func:`export`
turns ``(model, params, widths)`` into a standalone smaller model and parameter tree (fewer heads /
channels / hidden units, one width) computing the same outputs, and :func:`save_subnetwork` /
:func:`load_subnetwork` store it with orbax plus a JSON file holding the spec.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtljax.models.layers import DTYPES
from mtljax.models.layers import check_attention_impl
from mtljax.models.slim.conv import SlimConvNet
from mtljax.models.slim.layers import check_widths, counts
from mtljax.models.slim.model import BACKBONES, SlimModel
from mtljax.models.slim.vit import slim_vit
from mtljax.models.vit import vit_dims
from mtljax.tasks import Task


# ---- building from a config / a spec ----------------------------------------------------------------
def spec_from_config(cfg, tasks, input_shape) -> dict:
    """The constructor description of ``config.model`` (name 'slim') as a JSON-able dict."""
    s = cfg.slim
    if s.backbone not in BACKBONES:
        raise ValueError(f"config.model.slim.backbone: unknown {s.backbone!r}; choose from {list(BACKBONES)}")
    if len(input_shape) != 3:
        raise ValueError(f"config.model.name='slim' needs image inputs [H, W, C], got {tuple(input_shape)}")
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
                    head_dim=d["width"] // d["num_heads"], mlp_dim=d["mlp_dim"],
                    attention_impl=check_attention_impl(cfg.vit.get("attention_impl")))
    else:
        spec.update(channels=[int(c) for c in s.conv_channels], width=int(s.conv_dim))
        stride = 2 ** (len(s.conv_channels) - 1)
        if input_shape[0] % stride or input_shape[1] % stride:
            raise ValueError(f"config.model.slim.conv_channels: {len(s.conv_channels)} stages downsample by "
                             f"{stride}, which does not divide the {input_shape[0]}x{input_shape[1]} images")
    return spec


def build_from_spec(spec: Mapping, tasks) -> SlimModel:
    """The :class:`SlimModel` a spec describes, for ``tasks`` (whose names key ``decoder_hidden``)."""
    kw = dict(dtype=DTYPES[spec["dtype"]], param_dtype=DTYPES[spec["param_dtype"]])
    enc_w = tuple(spec["encoder_widths"])
    common = dict(widths=enc_w, switchable_norm=spec["switchable_norm"], dropout=spec["dropout"], **kw)
    if spec["backbone"] == "vit":
        backbone = slim_vit(patch_size=spec["patch_size"], width=spec["width"], depth=spec["depth"],
                            num_heads=spec["num_heads"], head_dim=spec["head_dim"], mlp_dim=spec["mlp_dim"],
                            pool=spec["pool"], attention_impl=spec.get("attention_impl"), **common)
    else:
        backbone = SlimConvNet(channels=tuple(spec["channels"]), width=spec["width"], **common)
    h, w, _ = spec["input_shape"]
    grid = (h // backbone.stride, w // backbone.stride)
    return SlimModel(backbone, tuple(tasks), enc_w, tuple(spec["decoder_widths"]),
                     tuple(int(spec["decoder_hidden"][t.name]) for t in tasks), spec["decoder_depth"],
                     spec["width"], grid, spec["num_random"], spec["cikd_weight"],
                     spec.get("cikd_distance", "normalized"), spec.get("cikd_start", 0), spec.get("cikd_ramp", 0),
                     spec_json=json.dumps(dict(spec), sort_keys=True, default=_jsonable), **kw)


def build_slim(cfg, tasks, input_shape) -> SlimModel:
    """The slim model of ``config.model`` (name 'slim') for ``tasks`` and inputs of ``input_shape``."""
    return build_from_spec(spec_from_config(cfg, tasks, input_shape), tasks)


def spec_of(model: SlimModel, input_shape) -> dict:
    """The spec a model was built from (inverse of :func:`build_from_spec`), for inputs of ``input_shape``."""
    if not model.spec_json:
        raise ValueError("spec_of: this SlimModel was not built from a spec (use build_slim or build_from_spec)")
    return dict(json.loads(model.spec_json), input_shape=list(input_shape))


# ---- export -----------------------------------------------------------------------------------------
def subnet_spec(spec: Mapping, model: SlimModel, widths) -> dict:
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


def export(model: SlimModel, params, widths, input_shape):
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
