"""Checks of the ``config.model.slim`` section (keys relative to it). Its defaults live in
:func:`mtljax.config.base_config` (``config.model.slim``); what each key means: :mod:`mtljax.models.slim`."""

from __future__ import annotations

from mtljax.config import ConfigError, require
from mtljax.models.slim.layers import check_widths
from mtljax.models.slim.model import BACKBONES
from mtljax.models.slim.sandwich import DISTANCES


def _int(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def check_slim(s) -> None:
    require(s.backbone in BACKBONES, "backbone", f"unknown {s.backbone!r}; choose from {list(BACKBONES)}")
    for key in ("encoder_widths", "decoder_widths"):
        try:
            widths = check_widths(s[key], key)
        except ValueError as e:
            raise ConfigError(str(e).removeprefix(key).lstrip(": "), key) from None
        require(widths[-1] == 1.0, key, f"{widths} must end at 1.0 (the full network, the CI-KD teacher)")
    for key, low in (("decoder_hidden", 1), ("decoder_depth", 0), ("num_random", 0), ("conv_dim", 1),
                     ("cikd_start", 0), ("cikd_ramp", 0)):
        require(_int(s[key], low), key, f"must be an integer >= {low}, got {s[key]!r}")
    require(s.cikd_weight >= 0, "cikd_weight", f"must be >= 0, got {s.cikd_weight}")
    require(s.cikd_distance in DISTANCES, "cikd_distance",
            f"unknown {s.cikd_distance!r}; choose from {list(DISTANCES)}")
    require(bool(s.conv_channels) and all(_int(c, 1) for c in s.conv_channels), "conv_channels",
            f"must be positive integers, got {tuple(s.conv_channels)}")
    require(isinstance(s.switchable_norm, bool), "switchable_norm", f"must be True or False, got {s.switchable_norm!r}")
