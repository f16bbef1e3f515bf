"""Static merging methods (mtljax.merge): task arithmetic, weight averaging, TIES, DARE and LoRA task
vectors, on tiny hand-made trees. Expected values are worked out by hand in the comments."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.merge import (
    MergeError,
    dare,
    dare_merge,
    disjoint_mean,
    elect_sign,
    lora_experts,
    lora_task_vector,
    negate,
    task_arithmetic,
    task_vector,
    ties,
    trim,
    weight_average,
)
from mtljax.models.peft.lora import merge as lora_merge


def tree(a, b):
    """Two leaves: ``a [2]`` and ``b [2, 2]`` (six entries), float32."""
    return {"a": jnp.asarray(a, jnp.float32), "blk": {"b": jnp.asarray(b, jnp.float32).reshape(2, 2)}}


def assert_trees_close(x, y, **kw):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), **kw), x, y)


def assert_trees_equal(x, y):
    jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), x, y)


PRE = tree([1.0, -2.0], [0.5, 3.0, -1.0, 2.0])
EXPERTS = [tree([2.0, -2.5], [1.0, 2.0, 0.0, 2.5]), tree([0.0, -1.0], [0.5, 4.0, -3.0, 2.0])]


# ----- task arithmetic / averaging

def test_task_arithmetic_zero_scale_is_pretrained():
    assert_trees_equal(task_arithmetic(PRE, EXPERTS, scale=0.0), PRE)


def test_task_arithmetic_one_task_unit_scale_is_expert():
    assert_trees_close(task_arithmetic(PRE, EXPERTS[:1], scale=1.0), EXPERTS[0], rtol=1e-6)


def test_task_arithmetic_values_and_per_task_scale():
    # tau_0 = a [1, -0.5], b [0.5, -1, 1, 0.5]; tau_1 = a [-1, 1], b [0, 1, -2, 0]
    out = task_arithmetic(PRE, EXPERTS, scale=0.5)  # PRE + 0.5 (tau_0 + tau_1) = PRE + 0.5 a[0, .5] b[.5, 0, -1, .5]
    assert_trees_close(out, tree([1.0, -1.75], [0.75, 3.0, -1.5, 2.25]))
    out = task_arithmetic(PRE, EXPERTS, scale=[1.0, 0.0])
    assert_trees_close(out, EXPERTS[0])
    out = task_arithmetic(PRE, EXPERTS, scale=jnp.asarray([0.0, 1.0]))
    assert_trees_close(out, EXPERTS[1])


def test_negate_moves_against_task_vector():
    tau = task_vector(PRE, EXPERTS[0])
    out = negate(PRE, EXPERTS[0], scale=1.0)  # PRE - tau
    assert_trees_close(out, tree([0.0, -1.5], [0.0, 4.0, -2.0, 1.5]))
    # moving along -tau: the inner product with tau decreases by lambda |tau|^2
    dot = lambda x: sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(tau)))
    assert float(dot(out)) == pytest.approx(float(dot(PRE)) - float(dot(tau)))
    assert float(dot(tau)) > 0


def test_weight_average():
    out = weight_average(PRE, EXPERTS)
    assert_trees_close(out, tree([1.0, -1.75], [0.75, 3.0, -1.5, 2.25]))
    bf = jax.tree.map(lambda x: x.astype(jnp.bfloat16), PRE)
    out = weight_average(bf, [jax.tree.map(lambda x: x.astype(jnp.bfloat16), e) for e in EXPERTS])
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(out))


# ----- TIES, worked by hand (pretrained = 0, so theta_t = tau_t)

ZERO = tree([0.0] * 2, [0.0] * 4)
TAU = [
    tree([4.0, -1.0], [0.5, -3.0, 2.0, 0.0]),   # |.| 4 1 .5 3 2 0: top 3 = 4, 3, 2
    tree([-2.0, 3.0], [1.0, -1.0, -4.0, 0.5]),  # |.| 2 3 1 1 4 .5: top 3 = 4, 3, 2 (per leaf would drop a's -2)
    tree([2.0, -2.0], [-5.0, 2.0, 1.0, 0.5]),   # |.| 2 2 5 2 1 .5: 3rd largest = 2, tied x3 -> keep 4 entries
]
TRIMMED = [
    tree([4.0, 0.0], [0.0, -3.0, 2.0, 0.0]),
    tree([-2.0, 3.0], [0.0, 0.0, -4.0, 0.0]),
    tree([2.0, -2.0], [-5.0, 2.0, 0.0, 0.0]),
]
# sums: a [4, 1], b [-5, -1, -2, 0] -> signs a [+, +], b [-, -, -, 0]
SIGN = tree([1.0, 1.0], [-1.0, -1.0, -1.0, 0.0])
# agreeing entries: a0 {4, 2} -> 3; a1 {3} -> 3; b0 {-5}; b1 {-3}; b2 {-4}; b3 none -> 0
MERGED = tree([3.0, 3.0], [-5.0, -3.0, -4.0, 0.0])


def test_trim_global_top_k_with_ties_kept():
    for tau, want in zip(TAU, TRIMMED):
        assert_trees_equal(trim(tau, 0.5), want)
    assert_trees_equal(trim(TAU[0], 1.0), TAU[0])
    # density 1/6 -> k = 1: only the largest magnitude over both leaves survives
    assert_trees_equal(trim(TAU[2], 1 / 6), tree([0.0, 0.0], [-5.0, 0.0, 0.0, 0.0]))


def test_elect_sign_and_disjoint_mean():
    assert_trees_equal(jax.jit(elect_sign)(TRIMMED), SIGN)
    assert_trees_equal(jax.jit(disjoint_mean)(TRIMMED, SIGN), MERGED)
    # exact cancellation: sign 0, merged 0
    x, y = tree([1.0, 0.0], [0.0] * 4), tree([-1.0, 0.0], [0.0] * 4)
    s = elect_sign([x, y])
    assert_trees_equal(s, ZERO)
    assert_trees_equal(disjoint_mean([x, y], s), ZERO)


def test_ties_end_to_end():
    assert_trees_equal(ties(ZERO, TAU, density=0.5, scale=1.0), MERGED)
    # with a non-zero pretrained model and lambda = 0.5: PRE + 0.5 MERGED
    experts = [jax.tree.map(jnp.add, PRE, t) for t in TAU]
    assert_trees_close(ties(PRE, experts, density=0.5, scale=0.5), tree([2.5, -0.5], [-2.0, 1.5, -3.0, 2.0]), atol=1e-6)


# ----- DARE

def test_dare_p0_identity():
    assert_trees_equal(dare(TAU[0], 0.0, jax.random.key(0)), TAU[0])
    assert_trees_close(dare_merge(PRE, EXPERTS, p=0.0, key=jax.random.key(1), scale=0.5),
          task_arithmetic(PRE, EXPERTS, scale=0.5), atol=1e-6)


def test_dare_unbiased_and_drop_rate():
    p, n = 0.5, 4000
    vec = {"w": np.linspace(-2.0, 2.0, 64, dtype=np.float32) + 0.01, "v": np.full((3, 5), 0.7, np.float32)}

    @jax.jit
    def draws(key):
        samples = jax.vmap(lambda k: dare(vec, p, k))(jax.random.split(key, n))
        big = {"x": jnp.ones((100, 100))}
        dropped = [jnp.mean(dare(big, q, jax.random.fold_in(key, i))["x"] == 0) for i, q in enumerate((0.1, 0.5, 0.9))]
        return jax.tree.map(lambda s: s.mean(0), samples), samples["w"], dropped

    mean, w, dropped = jax.tree.map(np.asarray, draws(jax.random.key(0)))
    # Var(dare(x)) = x^2 p / (1 - p) per entry, so the mean of n draws has sd |x| sqrt(p / ((1 - p) n))
    for name, x in vec.items():
        np.testing.assert_array_less(np.abs(mean[name] - x), 5 * np.abs(x) * math.sqrt(p / ((1 - p) * n)) + 1e-6)
    # survivors are exactly x / (1 - p)
    assert np.all((w == 0) | np.isclose(w, vec["w"] / (1 - p)))
    # drop fraction over 10,000 entries ~ q within 5 binomial sd
    for q, got in zip((0.1, 0.5, 0.9), dropped):
        assert abs(float(got) - q) < 5 * math.sqrt(q * (1 - q) / 10_000)


def test_dare_independent_keys_per_task_and_leaf():
    vec = {"x": jnp.ones(256), "y": jnp.ones(256)}
    out = dare(vec, 0.5, jax.random.key(3))
    assert not bool(jnp.all((out["x"] == 0) == (out["y"] == 0)))
    # two identical experts: with independent masks, dare+TA (scale 1) is in {0, 2, 4} per entry and not
    # always 0 or 4 (which a shared mask would give)
    big_pre = {"x": jnp.zeros(256)}
    big = [{"x": jnp.ones(256)}] * 2
    merged = dare_merge(big_pre, big, p=0.5, key=jax.random.key(4), scale=1.0)["x"]
    assert set(np.unique(np.asarray(merged)).tolist()) <= {0.0, 2.0, 4.0}
    assert bool(jnp.any(merged == 2.0))


def test_dare_merge_ties_base():
    out = dare_merge(ZERO, TAU, p=0.0, key=jax.random.key(0), base="ties", density=0.5)
    assert_trees_close(out, MERGED)


# ----- LoRA

ALPHA = 4.0


def lora_tree():
    rng = np.random.default_rng(0)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    return {
        "proj": {"kernel": normal(4, 3), "bias": normal(3)},
        "lora_proj": {"a": normal(2, 4, 2), "b": normal(2, 2, 3)},
        "norm": {"scale": normal(3)},
    }


def test_lora_task_vector_is_scaled_product():
    params = lora_tree()
    a, b = params["lora_proj"]["a"], params["lora_proj"]["b"]
    for t in range(2):
        vec = lora_task_vector(params, t, ALPHA)
        assert jax.tree.structure(vec) == jax.tree.structure({"proj": {"kernel": 0, "bias": 0}, "norm": {"scale": 0}})
        assert_trees_close(vec["proj"]["kernel"], (ALPHA / 2) * np.asarray(a[t]) @ np.asarray(b[t]), rtol=1e-5)
        assert_trees_equal(vec["proj"]["bias"], jnp.zeros(3))
        assert_trees_equal(vec["norm"]["scale"], jnp.zeros(3))
        # agrees with the model's own fold: merge(params, t) - base
        base = {k: v for k, v in params.items() if not k.startswith("lora_")}
        assert_trees_close(vec, jax.tree.map(jnp.subtract, lora_merge(params, t, ALPHA), base), atol=1e-5)


def test_lora_merged_forward_and_factor_averaging_pitfall():
    params = lora_tree()
    w, a, b = params["proj"]["kernel"], params["lora_proj"]["a"], params["lora_proj"]["b"]
    w, a, b = (np.asarray(v, np.float64) for v in (w, a, b))
    x = np.random.default_rng(9).standard_normal((5, 4))
    s = ALPHA / 2
    want = x @ w + sum(s * (x @ a[t]) @ b[t] for t in range(2))
    base, experts = lora_experts(params, ALPHA)
    merged = task_arithmetic(base, experts, scale=1.0)  # W + dW_0 + dW_1
    assert_trees_close(x @ np.asarray(merged["proj"]["kernel"]), want, rtol=1e-4, atol=1e-4)
    dw = [np.asarray(lora_task_vector(params, t, ALPHA)["proj"]["kernel"]) for t in range(2)]
    assert_trees_close(x @ (w + dw[0] + dw[1]), want, rtol=1e-4, atol=1e-4)
    # the pitfall: averaging A's and B's separately (times T to match the sum) has cross terms
    wrong = x @ (w + 2 * s * a.mean(0) @ b.mean(0))
    assert not np.allclose(wrong, want, rtol=1e-2, atol=1e-2)


# ----- validation

BAD = [
    (lambda: ties(PRE, EXPERTS, density=1.5), "density"),
    (lambda: ties(PRE, EXPERTS, density=0.0), "density"),
    (lambda: trim(TAU[0], -0.1), "density"),
    (lambda: dare(TAU[0], 1.0, jax.random.key(0)), "p"),
    (lambda: dare(TAU[0], -0.1, jax.random.key(0)), "p"),
    (lambda: dare_merge(PRE, EXPERTS, p=1.2, key=jax.random.key(0)), "p"),
    (lambda: dare_merge(PRE, EXPERTS, p=0.5), "key"),
    (lambda: dare_merge(PRE, EXPERTS, p=0.5, key=jax.random.key(0), base="mean"), "base"),
    (lambda: dare_merge(PRE, EXPERTS, key=jax.random.key(0), base="ties", density=2.0), "density"),
    (lambda: task_arithmetic(PRE, []), "finetuned"),
    (lambda: weight_average(PRE, []), "finetuned"),
    (lambda: ties(PRE, []), "finetuned"),
    (lambda: task_arithmetic(PRE, EXPERTS, scale=[0.3]), "scale"),
    (lambda: task_arithmetic(PRE, [EXPERTS[0], {"a": PRE["a"]}]), "finetuned[1]"),
    (lambda: ties(PRE, [tree([1.0, 2.0, 3.0, 4.0], [0.0] * 4)], density=0.5), "finetuned[0]"),
    (lambda: weight_average(PRE, [jax.tree.map(lambda x: x.astype(jnp.bfloat16), PRE)]), "finetuned[0]"),
    (lambda: negate(PRE, {"a": PRE["a"]}), "finetuned_one"),
    (lambda: lora_task_vector(lora_tree(), 2, ALPHA), "task"),
    (lambda: lora_task_vector(PRE, 0, ALPHA), "lora_params"),
]


@pytest.mark.parametrize("call,name", BAD, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD)])
def test_bad_inputs_raise(call, name):
    with pytest.raises(MergeError) as err:
        call()
    msg = str(err.value)
    assert msg.startswith(name + ":") and "\n" not in msg, msg


def test_bad_input_raises_at_trace_time_under_jit():
    with pytest.raises(MergeError, match=r"^finetuned\[0\]:"):
        jax.jit(task_arithmetic)(PRE, [{"a": PRE["a"]}])


# ----- jit

def test_under_jit_same_results():
    scale = jnp.asarray([0.3, 0.7])
    assert_trees_close(jax.jit(task_arithmetic)(PRE, EXPERTS, scale), task_arithmetic(PRE, EXPERTS, scale), atol=1e-6)
    assert_trees_close(jax.jit(negate)(PRE, EXPERTS[0], 0.5), negate(PRE, EXPERTS[0], 0.5), atol=1e-6)
    assert_trees_close(jax.jit(weight_average)(PRE, EXPERTS), weight_average(PRE, EXPERTS), atol=1e-6)
    jties = jax.jit(functools.partial(ties, density=0.5))
    assert_trees_equal(jties(ZERO, TAU, scale=jnp.asarray(1.0)), MERGED)
    key = jax.random.key(5)
    assert_trees_equal(jax.jit(dare, static_argnums=1)(TAU[0], 0.5, key), dare(TAU[0], 0.5, key))
    jd = jax.jit(functools.partial(dare_merge, p=0.5, base="ties", density=0.5))
    assert_trees_close(jd(ZERO, TAU, key=key), dare_merge(ZERO, TAU, p=0.5, key=key, base="ties", density=0.5), atol=1e-6)
    params = lora_tree()
    assert_trees_close(jax.jit(lora_task_vector, static_argnums=2)(params, jnp.asarray(1), ALPHA),
          lora_task_vector(params, 1, ALPHA), atol=1e-6)
