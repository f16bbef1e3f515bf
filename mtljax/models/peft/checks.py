"""Checks of the ``config.model.peft`` section (keys relative to it; :func:`mtljax.config.section`
prefixes ``model.peft``). Only the keys of the chosen methods are read."""

from __future__ import annotations

import math

from mtljax.config import positive_int, require, section
from mtljax.models.peft.adapter import POSITIONS
from mtljax.models.peft.lora import TARGETS
from mtljax.models.peft.phatgoose import ROUTINGS
from mtljax.models.peft.scalearn import VARIANTS

METHODS = ("lora", "adapter", "prefix", "vpt", "task_tokens", "inject", "poly", "scalearn", "hyperformer")


def methods_of(method) -> tuple[str, ...]:
    """The methods named by ``config.model.peft.method``: ``""`` -> ``()``, ``"lora+vpt"`` -> ``("lora", "vpt")``."""
    return tuple(m.strip() for m in str(method).split("+") if m.strip())


def _length(value, key: str) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, key,
            f"must be an integer >= 0, got {value!r}")


def _names(value, choices, key: str, what: str) -> None:
    require(isinstance(value, (tuple, list)) and len(value) > 0, key,
            f"must be a non-empty list of {what}s from {list(choices)}, got {value!r}")
    for v in value:
        require(v in choices, key, f"unknown {what} {v!r}; choose from {list(choices)}")
    require(len(set(value)) == len(value), key, f"names a {what} twice: {tuple(value)}")


def projection_dims(target: str, width: int, num_heads: int, mlp_dim: int,
                    head_dim: int | None = None) -> tuple[int, int]:
    """``(d_in, d_out)`` of a LoRA target projection of the ViT."""
    inner = num_heads * (head_dim or width // num_heads)
    return {"query": (width, inner), "key": (width, inner), "value": (width, inner), "out": (inner, width),
            "fc1": (width, mlp_dim), "fc2": (mlp_dim, width)}[target]


def check_peft(p, model_name: str, backbone: str, dims: dict | None, num_tasks: int | None = None) -> None:
    """``p`` is ``config.model.peft``; ``dims`` the ViT's ``width``/``num_heads``/``mlp_dim`` (``None``:
    not a ViT); ``num_tasks`` the number of tasks (LoRA experts under PHATGOOSE routing; ``None``:
    unknown, then :func:`~mtljax.models.peft.peft_plugs` checks ``top_k`` against it)."""
    require(isinstance(p.method, str), "method", f"must be a string, got {p.method!r}")
    methods = methods_of(p.method)
    for m in methods:
        require(m in METHODS, "method", f"unknown method {m!r}; choose from {list(METHODS)}, several joined by "
                                        "'+' (e.g. 'lora+vpt'), or '' for none")
    require(len(set(methods)) == len(methods), "method", f"names a method twice: {p.method!r}")
    routing = p.get("routing", "")
    require(routing in ROUTINGS, "routing", f"unknown routing {routing!r}; choose from {list(ROUTINGS)} ('' = each "
                                            "example its own task's LoRA)")
    require(not routing or "lora" in methods, "routing",
            f"{routing!r} routes among LoRA experts: it needs 'lora' in config.model.peft.method, got {p.method!r}")
    if not methods:
        return
    require(model_name == "hps" and backbone == "vit" and dims is not None, "method",
            f"per-task modules plug into the ViT of config.model.name='hps' with backbone 'vit', got "
            f"name={model_name!r}, backbone={backbone!r}")
    if "lora" in methods:
        positive_int(p.rank, "rank")
        require(isinstance(p.alpha, (int, float)) and not isinstance(p.alpha, bool) and p.alpha > 0, "alpha",
                f"must be a number > 0, got {p.alpha!r}")
        _names(p.targets, TARGETS, "targets", "target")
        for t in p.targets:
            d_in, d_out = projection_dims(t, dims["width"], dims["num_heads"], dims["mlp_dim"])
            require(p.rank <= min(d_in, d_out), "rank",
                    f"{p.rank} is larger than the {t!r} projection ({d_in} -> {d_out}); use at most {min(d_in, d_out)}")
        if routing == "phatgoose":
            top_k = p.get("top_k", 2)
            positive_int(top_k, "top_k")
            require(num_tasks is None or top_k <= num_tasks, "top_k",
                    f"{top_k} is more than the {num_tasks} LoRA experts (one per task)")
    if "poly" in methods:
        require("poly" in p, "poly", "is missing: method 'poly' needs config.model.peft.poly (see mtljax.config)")
        with section("poly"):
            _check_poly(p.poly, dims)
    if "adapter" in methods or "scalearn" in methods:
        positive_int(p.adapter_dim, "adapter_dim")
        _names(p.adapter_positions, POSITIONS, "adapter_positions", "position")
    if "scalearn" in methods:
        _check_scalearn(p, methods)
    if "prefix" in methods:
        _length(p.prefix_length, "prefix_length")
    if "vpt" in methods:
        _length(p.prompt_length, "prompt_length")
        require(isinstance(p.deep, bool), "deep", f"must be True or False, got {p.deep!r}")
    if "task_tokens" in methods:
        _length(p.task_tokens, "task_tokens")
        require("vpt" not in methods, "method",
                "'task_tokens' and 'vpt' both insert tokens through the ViT's prompt plug; use one of them")
    if "hyperformer" in methods:
        check_hyper(p)
    if "inject" in methods:
        value = p.inject_logit_init
        require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                "inject_logit_init", f"must be a finite number (the gate logit θ_0, α = σ(θ_0)), got {value!r}")


def _check_poly(q, dims: dict) -> None:
    """``q = config.model.peft.poly`` (Polytropon / MHR, :mod:`mtljax.models.peft.poly`)."""
    positive_int(q.skills, "skills")
    positive_int(q.heads, "heads")
    positive_int(q.rank, "rank")
    for key in ("alpha", "temperature"):
        v = q[key]
        require(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0, key,
                f"must be a number > 0, got {v!r}")
    _names(q.targets, TARGETS, "targets", "target")
    for t in q.targets:
        d_in, d_out = projection_dims(t, dims["width"], dims["num_heads"], dims["mlp_dim"])
        require(d_in % q.heads == 0 and d_out % q.heads == 0, "heads",
                f"{q.heads} heads do not divide the {t!r} projection ({d_in} -> {d_out}); use a divisor of both")
        require(q.rank <= min(d_in, d_out), "rank",
                f"{q.rank} is larger than the {t!r} projection ({d_in} -> {d_out}); use at most {min(d_in, d_out)}")


def _check_scalearn(p, methods) -> None:
    """``config.model.peft.scalearn`` (its keys named from ``config.model.peft``); the source run itself
    is checked where it is read (:mod:`mtljax.trainer.scalearn_source`)."""
    require("adapter" not in methods, "method", "'scalearn' and 'adapter' both fill the adapter plugs; use one of them")
    require("task_tokens" not in methods, "method", "'scalearn' with 'task_tokens' is not supported")
    require("scalearn" in p, "scalearn", "is missing: method 'scalearn' needs it (see mtljax.config.base_config)")
    s = p.scalearn
    require(s.variant in VARIANTS, "scalearn.variant", f"unknown variant {s.variant!r}; choose from {list(VARIANTS)}")
    require(isinstance(s.source, str) and bool(s.source), "scalearn.source",
            "is empty; name the source adapter run's directory (a run of configs/adapt_adapter.py)")
    tasks = s.source_tasks
    require(isinstance(tasks, (tuple, list)) and all(isinstance(t, str) and t for t in tasks), "scalearn.source_tasks",
            f"must be a list of task names (empty: all of the source run's), got {tasks!r}")
    require(len(set(tasks)) == len(tasks), "scalearn.source_tasks", f"names a task twice: {tuple(tasks)}")


def check_hyper(p) -> None:
    """``config.model.peft.hyper`` (HyperFormer++, :mod:`~mtljax.models.peft.hyper`; a reduction factor
    above the ViT width gives a bottleneck of 1)."""
    require(not {"adapter", "scalearn", "task_tokens"} & set(methods_of(p.method)), "method",
            f"'hyperformer' generates the adapters itself: it cannot be combined with 'adapter', 'scalearn' or "
            f"'task_tokens' "
            f"(both replace the plugs or the ViT it wraps), got {p.method!r}")
    require("hyper" in p, "hyper", "missing: 'hyperformer' reads config.model.peft.hyper (see mtljax.config)")
    with section("hyper"):
        h = p.hyper
        for key in ("task_dim", "hidden_dim", "projected_dim", "reduction_factor"):
            positive_int(h[key], key)
        _names(h.positions, POSITIONS, "positions", "position")
        require(isinstance(h.layer_norm, bool), "layer_norm", f"must be True or False, got {h.layer_norm!r}")
