"""Model merging: pure, jit-able functions ``method(pretrained, finetuned, **kwargs) -> params`` over
parameter pytrees of one structure (see :mod:`mtljax.merge.vectors`)."""

from mtljax.merge.adamerging import adamerging
from mtljax.merge.atlas import atlas
from mtljax.merge.averaging import weight_average
from mtljax.merge.coefficients import combine, init_coefficients
from mtljax.merge.dare import dare, dare_merge
from mtljax.merge.lora import (
    base_params,
    lora_experts,
    lora_task_vector,
    lora_task_vectors,
)
from mtljax.merge.self_positioning import self_positioning
from mtljax.merge.task_arithmetic import negate, task_arithmetic
from mtljax.merge.ties import disjoint_mean, elect_sign, ties, trim
from mtljax.merge.vectors import (
    MergeError,
    apply,
    check_compatible,
    check_finetuned,
    flatten,
    global_norm,
    path_string,
    stack,
    task_vector,
    task_vectors,
    unflatten,
)

__all__ = [
    "MergeError",
    "adamerging",
    "atlas",
    "combine",
    "init_coefficients",
    "self_positioning",
    "apply",
    "base_params",
    "check_compatible",
    "check_finetuned",
    "dare",
    "dare_merge",
    "disjoint_mean",
    "elect_sign",
    "flatten",
    "global_norm",
    "lora_experts",
    "lora_task_vector",
    "lora_task_vectors",
    "negate",
    "path_string",
    "stack",
    "task_arithmetic",
    "task_vector",
    "task_vectors",
    "ties",
    "trim",
    "unflatten",
    "weight_average",
]
