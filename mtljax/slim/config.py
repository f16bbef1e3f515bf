"""The ``config.model.slim`` section of the slim model and its validation.

``config.model.name = 'slim'`` builds :class:`mtljax.models.slim.SlimModel`;
``config.model.vit`` gives the ViT encoder's full size (as for HPS), ``config.model.slim`` the rest:

=================  ============================================================================
key                meaning
=================  ============================================================================
backbone           'vit' (slimmable ViT: heads and MLP width) or 'conv' (slimmable conv net)
encoder_widths     trained width multipliers of the shared encoder, ascending, in (0, 1], ending at 1
decoder_widths     trained width multipliers of every task decoder (same rules)
decoder_hidden     full hidden width of each task decoder
decoder_depth      slimmable hidden layers per decoder (0 = a linear decoder, nothing to slim)
switchable_norm    private LayerNorm scale/bias per encoder width (switchable normalisation)
num_random         random configurations per step besides the largest and the smallest (sandwich)
cikd_weight        weight λ of the Configuration-Invariant KD loss (0 disables it)
cikd_distance      'normalized' (squared error per teacher-feature variance, default) or 'mse'
cikd_start         training steps before CI-KD starts (the teacher learns first; 0 = from the start)
cikd_ramp          steps over which its weight then grows linearly to cikd_weight
conv_channels      conv backbone: full channels per stage (stage i > 0 halves the resolution)
conv_dim           conv backbone: width D of the shared representation (the neck's output)
=================  ============================================================================

``config.model.backbone`` is not used by this model (the encoder is ``slim.backbone``).
"""

from __future__ import annotations

import ml_collections as mlc


def slim_defaults() -> mlc.ConfigDict:
    return mlc.ConfigDict(dict(
        backbone="vit", encoder_widths=(0.25, 0.5, 0.75, 1.0), decoder_widths=(0.25, 0.5, 0.75, 1.0),
        decoder_hidden=64, decoder_depth=2, switchable_norm=True, num_random=2, cikd_weight=1.0,
        cikd_distance="normalized", cikd_start=0, cikd_ramp=0,
        conv_channels=(32, 64, 128), conv_dim=128,
    ))


def _int(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def validate_slim(config) -> None:
    """Raise :class:`~mtljax.config.ConfigError` (one line naming the key) for a bad slim section."""
    from mtljax.config import ConfigError
    from mtljax.models.slim.layers import check_widths
    from mtljax.models.slim.model import BACKBONES

    if "slim" not in config.model:
        raise ConfigError("config.model.slim is missing: config.model.name='slim' needs it "
                          "(start from mtljax.slim.config.slim_defaults())")
    s = config.model.slim
    if s.backbone not in BACKBONES:
        raise ConfigError(f"config.model.slim.backbone: unknown {s.backbone!r}; choose from {list(BACKBONES)}")
    for key in ("encoder_widths", "decoder_widths"):
        try:
            widths = check_widths(s[key], f"config.model.slim.{key}")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if widths[-1] != 1.0:
            raise ConfigError(f"config.model.slim.{key}={widths} must end at 1.0 (the full network, "
                              "the CI-KD teacher)")
    for key, low in (("decoder_hidden", 1), ("decoder_depth", 0), ("num_random", 0), ("conv_dim", 1),
                     ("cikd_start", 0), ("cikd_ramp", 0)):
        if not _int(s[key], low):
            raise ConfigError(f"config.model.slim.{key} must be an integer >= {low}, got {s[key]!r}")
    if not s.cikd_weight >= 0:
        raise ConfigError(f"config.model.slim.cikd_weight must be >= 0, got {s.cikd_weight}")
    from mtljax.models.slim.sandwich import DISTANCES

    if s.cikd_distance not in DISTANCES:
        raise ConfigError(f"config.model.slim.cikd_distance: unknown {s.cikd_distance!r}; "
                          f"choose from {list(DISTANCES)}")
    if not s.conv_channels or not all(_int(c, 1) for c in s.conv_channels):
        raise ConfigError(f"config.model.slim.conv_channels must be positive integers, got {tuple(s.conv_channels)}")
    if not isinstance(s.switchable_norm, bool):
        raise ConfigError(f"config.model.slim.switchable_norm must be True or False, got {s.switchable_norm!r}")
    if config.optim.level == "rep":
        raise ConfigError("config.optim.level='rep' is not available for config.model.name='slim' "
                          "(its representation differs per sampled configuration); use 'param' or 'gramian'")
    if config.optim.rep_mtl:
        raise ConfigError("config.optim.rep_mtl is not available for config.model.name='slim'")
