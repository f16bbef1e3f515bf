"""The slim model: outputs per configuration, masked training forward equals the sliced one,
the exported sub-network equals the slimmed super-network, sandwich outputs and CI-KD."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from slim_helpers import SHAPE, TASKS, images, random_params, tiny_model

from mtljax.models.slim import SlimConfig, export, load_subnetwork, save_subnetwork
from mtljax.models.slim.sandwich import cikd_loss, cikd_schedule, sample_configs

CONFIGS = [None, {"encoder": 0.25, "decoders": {"cls": 1.0, "seg": 0.5}}]


@pytest.mark.parametrize("backbone", ["vit", "conv"])
def test_exported_subnetwork_equals_the_slimmed_network_and_masked_equals_sliced(backbone, tmp_path):
    model = tiny_model(backbone)
    params = random_params(model)
    x = images()
    sliced = jax.jit(lambda p, x, w: model.apply({"params": p}, x, widths=w)[0], static_argnums=2)
    masked = jax.jit(lambda p, x, e, d: model.apply({"params": p}, x, e, d, masked=True,
                                                    method=model.forward_config)[0])
    sizes = {}
    for widths in CONFIGS:
        key = None if widths is None else SlimConfig.make(**model.resolve(widths).to_dict())
        want = sliced(params, x, key)
        assert {k: v.shape for k, v in want.items()} == {"cls": (3, 5), "seg": (3, 8, 8, 3)}
        enc, dec = model.indices(widths)
        got = masked(params, x, jnp.int32(enc), jnp.asarray(dec, jnp.int32))  # traced widths: one compile
        small, small_params, spec = export(model, params, widths, SHAPE)
        out = jax.jit(lambda p: small.apply({"params": p}, x)[0])(small_params)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(out[name], want[name], rtol=1e-5, atol=1e-6)
        sizes[str(widths)] = sum(np.size(a) for a in jax.tree.leaves(small_params))
    assert all(n < sizes["None"] for k, n in sizes.items() if k != "None")  # slimmed = fewer parameters
    directory = save_subnetwork(str(tmp_path / "sub"), spec, TASKS, small_params, {"config": "last"})
    loaded, loaded_params, meta = load_subnetwork(directory)
    again = jax.jit(lambda p: loaded.apply({"params": p}, x)[0])(loaded_params)
    for name in out:
        np.testing.assert_array_equal(again[name], out[name])
    assert meta["info"] == {"config": "last"} and [t["name"] for t in meta["tasks"]] == ["cls", "seg"]


def test_every_parameter_has_logical_axes_and_decoders_are_task_specific():
    model = tiny_model("conv")
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *SHAPE)))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    assert {k for k in boxed if k.startswith("heads_")} == {"heads_cls", "heads_seg"}
    spec = nn.get_partition_spec(boxed)["backbone"]["stem_conv"]["kernel"]
    assert tuple(spec) == (None, None, "conv_in", "conv_out")


def test_sandwich_outputs_largest_first_and_cikd_is_zero_at_full_width():
    x = images(2)
    model = tiny_model("vit")
    params = random_params(model)
    train = jax.jit(lambda p, k: model.apply({"params": p}, x, train=True, rngs={"dropout": k}))
    out, aux = train(params, jax.random.PRNGKey(0))
    evaluate = jax.jit(lambda p, w: model.apply({"params": p}, x, widths=w), static_argnums=1)
    full, eval_aux = evaluate(params, None)
    assert out["cls"].shape == (4, 2, 5) and out["seg"].shape == (4, 2, 8, 8, 3)  # K = 2 + num_random
    np.testing.assert_allclose(out["cls"][0], full["cls"], rtol=1e-5, atol=1e-6)
    smallest = evaluate(params, 0.25)[0]
    np.testing.assert_allclose(out["seg"][1], smallest["seg"], rtol=1e-5, atol=1e-6)
    assert float(aux["losses"]["cikd"]) > 0 and float(eval_aux["losses"]["cikd"]) == 0.0
    # only the decoders slim: every configuration has the full encoder, so CI-KD is exactly 0
    enc_fixed = tiny_model("vit", encoder_widths=(1.0,), num_random=0)
    _, aux = jax.jit(lambda p: enc_fixed.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)}))(
        random_params(enc_fixed))
    assert float(aux["losses"]["cikd"]) == 0.0
    rep = {"tokens": jnp.ones((2, 4, 16)), "pooled": jnp.ones((2, 16))}
    assert float(cikd_loss(rep, rep, "cls")) == 0.0


def test_cikd_distances_and_schedule():
    rng = np.random.default_rng(0)
    s, t = (jnp.asarray(rng.standard_normal((4, 6, 8)), jnp.float32) for _ in range(2))
    mse = lambda a, b: cikd_loss({"tokens": a}, {"tokens": b}, distance="mse")  # noqa: E731
    norm = lambda a, b: cikd_loss({"tokens": a}, {"tokens": b}, distance="normalized")  # noqa: E731
    assert float(mse(s, t)) == pytest.approx(float(jnp.mean((s - t) ** 2)))
    # shrinking every width's features (collapse) lowers the raw MSE but not the normalised distance
    assert float(mse(0.1 * s, 0.1 * t)) == pytest.approx(0.01 * float(mse(s, t)), rel=1e-5)
    assert float(norm(0.3 * s, 0.3 * t)) == pytest.approx(float(norm(s, t)), rel=1e-2)
    g = jax.grad(lambda a: mse(a, 2 * a))(s)  # the teacher is not differentiated
    np.testing.assert_allclose(g, -2 * s / s.size, rtol=1e-5)
    assert float(cikd_schedule(None, 100, 50)) == 1.0 and float(cikd_schedule(7, 0, 0)) == 1.0
    assert [float(cikd_schedule(k, 100, 50)) for k in (0, 100, 125, 150, 900)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert [float(cikd_schedule(k, 100, 0)) for k in (99, 100)] == [0.0, 1.0]


def test_sample_configs_has_the_largest_then_the_smallest_then_random_ones():
    enc, dec = sample_configs(jax.random.PRNGKey(3), 5, 4, 3, 2)
    assert enc.shape == (7,) and dec.shape == (7, 2)
    assert enc[0] == 3 and np.all(dec[0] == 2) and enc[1] == 0 and np.all(dec[1] == 0)
    assert np.all((enc >= 0) & (enc < 4)) and np.all((dec >= 0) & (dec < 3))


def test_bad_widths_name_the_argument():
    model = tiny_model("vit")
    params = random_params(model)
    x = images(1)
    for widths, match in ((1.5, "widths.encoder: width multiplier 1.5 is outside"),
                          ({"encoder": 0.3, "decoders": 1.0}, "widths.encoder: .* 0.3 is not in the trained set"),
                          ({"encoder": 1.0, "decoders": {"cls": 0.5, "seg": 0.0}}, "widths.decoders.seg: .* outside"),
                          ({"encoder": 1.0, "decoders": {"cls": 0.5}},
                           "widths.decoders: .*missing task\\(s\\) \\['seg'\\]"),
                          ({"decoders": 1.0}, "widths must be")):
        with pytest.raises(ValueError, match=match) as err:
            model.apply({"params": params}, x, widths=widths)
        assert "\n" not in str(err.value)
