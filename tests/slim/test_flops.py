"""FLOPs from compiled cost analysis: per-component tables compose to the whole model's count."""

import pytest
from slim_helpers import SHAPE, tiny_model

from mtljax.models.slim.flops import flops_table, model_flops

CONFIGS = [0.25, {"encoder": 1.0, "decoders": {"cls": 1.0, "seg": 0.25}}]


def test_composed_flops_equal_the_whole_model_compiled_at_each_configuration():
    model = tiny_model("conv", encoder_widths=(0.25, 1.0), decoder_widths=(0.25, 1.0))
    lowered = flops_table(model, SHAPE, stage="lowered")
    compiled = flops_table(model, SHAPE)
    for widths in CONFIGS:
        config = model.resolve(widths)
        # the program as written: exactly additive
        assert lowered.total(config) == model_flops(model, SHAPE, widths, stage="lowered")
        # after XLA's fusion (which may recompute cheap producers per consumer): within 2 %
        assert compiled.total(config) == pytest.approx(model_flops(model, SHAPE, widths), rel=0.02)
    enc = [compiled.encoder[w] for w in model.encoder_widths]
    assert enc[0] < enc[1]  # wider encoders cost more
    assert compiled.decoders["cls"][0.25] < compiled.decoders["cls"][1.0] < compiled.decoders["seg"][1.0]
    assert compiled.smallest == compiled.total(model.resolve({"encoder": 0.25, "decoders": 0.25}))
    assert compiled.full == compiled.total(model.resolve(None))
