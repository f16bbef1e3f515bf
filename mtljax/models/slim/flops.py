"""FLOPs of every configuration, measured from XLA's cost analysis of compiled sub-networks.

Nothing here counts FLOPs by formula: each component is lowered and compiled at its (static, sliced)
width for one example, and the program's cost analysis is read (:func:`mtljax.cost.compiled_flops`:
``stage='compiled'``, the default, is what the backend will run; ``stage='lowered'`` the program as
written, before XLA optimises it). The
slim model's representation has a width-independent size (:mod:`mtljax.models.slim.conv`, ``.vit``),
so a decoder's cost does not depend on the encoder width and a configuration's FLOPs *compose*::

    FLOPs(w_e, {w_t}) = enc(w_e) + Σ_t dec_t(w_t)

That takes ``|W_e| + T·|W_d|`` compilations instead of one per configuration (``|W_e|·|W_d|^T``:
4·4²⁰ for CIFAR100-MTL). Decoders of tasks with the same structure (kind, output size, hidden width)
compile to the same program, so they are compiled once.

How exact the composition is (``tests/slim/test_flops.py`` checks both against whole-model
compiles): with ``stage='lowered'`` the composed number *equals* the whole model's. With
``stage='compiled'`` it is within about 1-2 % on the tiny test models, not equal: XLA's fusion
recomputes cheap elementwise producers inside each consumer (the encoder's final LayerNorm is
recomputed in the pooled-mean fusion and in a dense decoder's first matmul when both read it) and
rewrites reductions, so the compiled whole model counts the shared representation's last elementwise
ops once per kind of consumer. The difference is a few elementwise ops per token, independent of the
widths, so it never changes which configuration fits a budget by more than that margin. FLOPs are
per example (batch 1), as XLA counts them (a multiply-add is 2 FLOPs; elementwise ops, reductions
and softmax count too).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtljax.cost import compiled_flops
from mtljax.models.slim.export import spec_of
from mtljax.models.slim.model import SlimConfig


def abstract_params(model: nn.Module, input_shape: Sequence[int]):
    """The model's parameter shapes (``jax.ShapeDtypeStruct`` leaves) for inputs ``[1, *input_shape]``; nothing runs."""
    x = jnp.zeros((1, *input_shape), jnp.float32)
    return jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), x))["params"])


@dataclasses.dataclass(frozen=True)
class FlopsTable:
    """Per-example FLOPs of the encoder at each width and of each task decoder at each width."""

    encoder: Mapping[float, float]
    decoders: Mapping[str, Mapping[float, float]]

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.decoders)

    def total(self, config: SlimConfig) -> float:
        return self.encoder[config.encoder] + sum(self.decoders[t][w] for t, w in config.decoders)

    def extreme(self, largest: bool) -> SlimConfig:
        pick = max if largest else min
        return SlimConfig.make(pick(self.encoder), {t: pick(ws) for t, ws in self.decoders.items()})

    @property
    def full(self) -> float:
        return self.total(self.extreme(True))

    @property
    def smallest(self) -> float:
        return self.total(self.extreme(False))

    def to_dict(self) -> dict:
        return {"encoder": {str(k): v for k, v in self.encoder.items()},
                "decoders": {t: {str(k): v for k, v in d.items()} for t, d in self.decoders.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "FlopsTable":
        return cls({float(k): v for k, v in d["encoder"].items()},
                   {t: {float(k): v for k, v in ws.items()} for t, ws in d["decoders"].items()})


def flops_table(model: nn.Module, input_shape: Sequence[int], stage: str = "compiled") -> FlopsTable:
    """Compile the encoder at every width and every task decoder at every width (batch 1)."""
    params = abstract_params(model, input_shape)
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    encoder = {}
    for w in model.encoder_widths:
        widths = {"encoder": w, "decoders": 1.0}
        encoder[w] = compiled_flops(
            lambda p, x, widths=widths: model.apply({"params": p}, x, widths=widths, method=model.encode)[0],
            params, x, stage=stage)
    rep = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method=model.encode)[0], params, x)
    decoders, seen = {}, {}
    for task, hidden in zip(model.tasks, model.decoder_hidden):
        decoders[task.name] = {}
        for w in model.decoder_widths:
            key = (task.kind, task.head_dim, task.is_dense, hidden, w)
            if key not in seen:
                widths = {"encoder": 1.0, "decoders": w}
                seen[key] = compiled_flops(
                    lambda p, r, t=task.name, widths=widths: model.apply({"params": p}, r, task=t, widths=widths,
                                                                         method=model.decode),
                    params, rep, stage=stage)
            decoders[task.name][w] = seen[key]
    return FlopsTable(encoder, decoders)


def cached_flops_table(model: nn.Module, input_shape: Sequence[int], path: str, stage: str = "compiled") -> FlopsTable:
    """:func:`flops_table`, stored in the JSON file ``path`` and reused while the model's spec, the
    stage and the backend are the same (``mtljax slim`` keeps one per run directory)."""
    key = {"spec": spec_of(model, input_shape), "stage": stage, "backend": jax.default_backend(),
           "jax": jax.__version__}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("key") == json.loads(json.dumps(key)):
            return FlopsTable.from_dict(saved["table"])
    table = flops_table(model, input_shape, stage)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"key": key, "table": table.to_dict()}, f, indent=1)
    return table


def model_flops(model: nn.Module, input_shape: Sequence[int], widths=None, stage: str = "compiled") -> float:
    """FLOPs of the whole model compiled at one configuration (the check on :func:`flops_table`)."""
    params = abstract_params(model, input_shape)
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    return compiled_flops(lambda p, x: model.apply({"params": p}, x, widths=widths)[0], params, x, stage=stage)
