"""DWA: w = T·softmax(r/τ), r = L̄(k−1)/L̄(k−2); equal weights until two averages exist."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.optim import get_method
from mtljax.optim.dwa import dwa


def _ref_dwa(seq, tau, period):
    """The paper's rule on block means of ``period`` calls (a block = an 'epoch')."""
    seq = np.asarray(seq, np.float64)
    t = seq.shape[1]
    out, means = [], []
    for k, _ in enumerate(seq):
        if len(means) >= 2:
            r = means[-1] / means[-2]
            e = np.exp(r / tau)
            out.append(t * e / e.sum())
        else:
            out.append(np.ones(t))
        if (k + 1) % period == 0:
            means.append(seq[k + 1 - period:k + 1].mean(0))
    return np.stack(out)


def _run(m, seq):
    f = jax.jit(m.weights)
    state, ws = m.init(seq.shape[1]), []
    for losses in seq:
        w, state = f(jnp.asarray(losses), state, None)
        ws.append(w)
    return np.stack(ws), state


@pytest.mark.parametrize("period,tau", [(1, 2.0), (3, 2.0), (2, 0.5)])
def test_matches_reference(period, tau):
    seq = np.random.default_rng(period).uniform(0.2, 3.0, (11, 3)).astype(np.float32)
    ws, _ = _run(dwa(temperature=tau, period=period), seq)
    np.testing.assert_allclose(ws, _ref_dwa(seq, tau, period), rtol=1e-5)


def test_first_two_steps_equal_then_sum_to_T_and_favour_slow_task():
    seq = np.asarray([[1.0, 1.0, 1.0], [0.5, 0.9, 1.0], [0.25, 0.8, 1.0], [0.1, 0.7, 1.0]], np.float32)
    ws, _ = _run(dwa(), seq)
    np.testing.assert_array_equal(ws[:2], 1.0)
    np.testing.assert_allclose(ws.sum(1), 3.0, rtol=1e-6)
    # step 2 uses L(1)/L(0) = [0.5, 0.9, 1]: the task whose loss did not fall gets the most weight
    np.testing.assert_allclose(ws[2], 3 * jax.nn.softmax(jnp.asarray([0.5, 0.9, 1.0]) / 2.0), rtol=1e-6)
    assert ws[3][2] > ws[3][1] > ws[3][0]


def test_single_task_and_zero_losses():
    ws, _ = _run(dwa(), np.ones((4, 1), np.float32))
    np.testing.assert_array_equal(ws, 1.0)  # T = 1: the single gradient unchanged
    ws, _ = _run(dwa(), np.zeros((4, 2), np.float32))
    assert np.isfinite(ws).all()


def test_pure_and_fixed_state_structure():
    m = get_method("dwa", temperature=2.0)
    state = m.init(2)
    f = jax.jit(m.weights)
    a = f(jnp.asarray([1.0, 2.0]), state, jax.random.PRNGKey(0))
    b = f(jnp.asarray([1.0, 2.0]), state, jax.random.PRNGKey(1))
    chex.assert_trees_all_equal(a, b)
    chex.assert_trees_all_equal_dtypes(a[1], state)  # structure and dtypes


@pytest.mark.parametrize("kw", [{"temperature": 0.0}, {"temperature": -2.0}, {"period": 0}, {"period": 1.5},
                                {"period": True}])
def test_validation(kw):
    with pytest.raises(ValueError, match="dwa: "):
        dwa(**kw)
