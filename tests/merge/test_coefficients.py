"""Learned merging coefficients (AdaMerging, aTLAS, Self Positioning) on a linear toy model: the merged
parameters are θ_0 + Σ c_t τ_t at every granularity, the search lowers its objective, and AdaMerging's
coefficients stay in [0, 1]."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from mtljax.merge import coefficients as co
from mtljax.merge.adamerging import adamerging
from mtljax.merge.atlas import atlas
from mtljax.merge.self_positioning import self_positioning
from mtljax.merge.vectors import MergeError, stack, task_vectors

RNG = np.random.default_rng(0)
D, C, T = 6, 3, 2
THETA0 = {"w": jnp.asarray(RNG.normal(size=(D, C)) * 0.1, jnp.float32), "b": jnp.zeros((C,), jnp.float32)}
EXPERTS = [{"w": THETA0["w"] + jnp.asarray(RNG.normal(size=(D, C)), jnp.float32),
            "b": jnp.asarray(RNG.normal(size=(C,)), jnp.float32)} for _ in range(T)]
STACKED = stack(task_vectors(THETA0, EXPERTS))
X = jnp.asarray(RNG.normal(size=(32, D)), jnp.float32)
Y = jnp.asarray(RNG.integers(0, C, size=32))
MASKS = {"a": jnp.asarray(np.arange(32) < 16, jnp.float32), "b": jnp.asarray(np.arange(32) >= 16, jnp.float32)}


def _forward(params, batch):
    logits = batch["x"] @ params["w"] + params["b"]
    return {"a": logits, "b": logits}, batch["masks"]


def _loss(params, batch):
    logits = batch["x"] @ params["w"] + params["b"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], 1))


BATCHES = lambda: itertools.repeat({"x": X, "y": Y, "masks": MASKS})  # noqa: E731


def test_combine_every_granularity():
    one_hot = jnp.asarray([0.0, 1.0])
    merged = co.combine(THETA0, STACKED, one_hot)  # c = e_1: the second expert exactly
    for k in THETA0:
        np.testing.assert_allclose(merged[k], EXPERTS[1][k], rtol=1e-6, atol=1e-6)
    layer = {"w": jnp.asarray([0.5, 0.0]), "b": jnp.asarray([0.0, 2.0])}
    merged = co.combine(THETA0, STACKED, layer)
    np.testing.assert_allclose(merged["w"], THETA0["w"] + 0.5 * (EXPERTS[0]["w"] - THETA0["w"]), rtol=1e-6)
    np.testing.assert_allclose(merged["b"], 2.0 * EXPERTS[1]["b"], rtol=1e-6)
    with pytest.raises(MergeError, match="granularity"):
        co.init_coefficients(THETA0, T, "block", 0.3)


def test_entropy_matches_scipy():
    logits = np.asarray(RNG.normal(size=(5, 4)), np.float32)
    mask = np.array([1, 0, 1, 1, 0], np.float32)
    p = scipy.special.softmax(logits, axis=-1)
    want = np.mean(-np.sum(p * np.log(p), axis=-1)[mask > 0])
    np.testing.assert_allclose(co.entropy(jnp.asarray(logits), jnp.asarray(mask)), want, rtol=1e-5)


@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_adamerging_lowers_entropy_within_bounds(granularity):
    merged, c, losses = adamerging(THETA0, STACKED, _forward, BATCHES(), ["a", "b"], granularity=granularity,
                                      steps=60, learning_rate=0.05)
    assert losses[-1] < losses[0] - 1e-3
    leaves = jax.tree.leaves(c)
    assert all(bool(jnp.all((x >= 0) & (x <= 1))) for x in leaves)
    np.testing.assert_allclose(merged["w"], co.combine(THETA0, STACKED, c)["w"], rtol=1e-6)


def test_supervised_searches_lower_the_task_loss():
    _, c, losses = atlas(THETA0, STACKED, _loss, BATCHES(), steps=60, learning_rate=0.05)
    assert losses[-1] < losses[0] and set(c) == {"w", "b"} and c["w"].shape == (T,)
    _, a, losses = self_positioning(THETA0, STACKED, _loss, BATCHES(), steps=60, learning_rate=0.05)
    assert losses[-1] < losses[0] and a.shape == (T,)
