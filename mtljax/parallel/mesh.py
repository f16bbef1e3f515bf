"""Device meshes from the config.

``config.mesh.shape`` maps axis names to sizes in order, e.g. ``{'data': -1, 'expert': 1, 'model': 1}``;
one size may be ``-1`` and takes the devices the others leave. Meshes are built with
``jax.make_mesh(..., axis_types=Auto)`` and spread over every process's devices, so the same config
runs on one CPU, 8 simulated devices, a GPU and a multi-host TPU pod.
"""

from __future__ import annotations

from typing import Mapping

import jax
from jax.sharding import AxisType

from mtljax.config import ConfigError


def resolve_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Fill the ``-1`` entry and check that the sizes multiply to ``num_devices``.

    Raises :class:`~mtljax.config.ConfigError` keyed ``shape`` (relative to ``config.mesh``).
    """
    sizes = dict(shape)
    if not sizes:
        raise ConfigError("is empty; give e.g. {'data': -1}", "shape")
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ConfigError(f"only one axis may be -1, got {free}", "shape")
    bad = {k: v for k, v in sizes.items() if v != -1 and (not isinstance(v, int) or v < 1)}
    if bad:
        raise ConfigError(f"axis sizes must be positive integers or -1, got {bad}", "shape")
    fixed = 1
    for k, v in sizes.items():
        if v != -1:
            fixed *= v
    if free:
        if num_devices % fixed:
            raise ConfigError(f"{dict(shape)}: {num_devices} devices are not divisible by {fixed}", "shape")
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ConfigError(f"{dict(shape)} needs {fixed} devices but {num_devices} are available", "shape")
    return sizes


def make_mesh(shape: Mapping[str, int], devices=None) -> jax.sharding.Mesh:
    devices = jax.devices() if devices is None else devices
    sizes = resolve_shape(shape, len(devices))
    names = tuple(sizes)
    return jax.make_mesh(
        tuple(sizes.values()), names, axis_types=(AxisType.Auto,) * len(names), devices=devices
    )
