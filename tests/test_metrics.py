"""Δm: sign convention, averaging over metrics then tasks, and a hand-computed value."""

import pytest

from mtljax.metrics import delta_m, format_table
from mtljax.tasks import Task

TASKS = (Task("cls", "multiclass", num_classes=10), Task("reg", "regression"))


def test_delta_m_hand_computed():
    base = {"cls": {"accuracy": 0.80}, "reg": {"mse": 2.0, "mae": 1.0}}
    new = {"cls": {"accuracy": 0.88}, "reg": {"mse": 1.0, "mae": 1.5}}
    # cls: +0.10; reg: mean(+0.5 (lower mse is better), -0.5) = 0 -> Δm = 100 * (0.10 + 0) / 2 = 5
    assert delta_m(TASKS, new, base) == pytest.approx(5.0)
    assert delta_m(TASKS, base, base) == 0.0
    assert "Δm = +5.00 %" in format_table(TASKS, new, base)


def test_delta_m_needs_baselines():
    with pytest.raises(KeyError, match="reg"):
        delta_m(TASKS, {"cls": {"accuracy": 1}, "reg": {"mse": 1, "mae": 1}}, {"cls": {"accuracy": 1}})
    with pytest.raises(ValueError, match="baseline"):
        delta_m(TASKS[:1], {"cls": {"accuracy": 1}}, {"cls": {"accuracy": 0.0}})
