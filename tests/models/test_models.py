"""Models: shapes per task kind, single-task apply, logical axis names, mixed precision."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from mtljax.config import base_config
from mtljax.models import build_model, vit_dims
from mtljax.tasks import Task

TASKS = (Task("cls", "multiclass", num_classes=7), Task("attr", "multilabel", num_classes=3),
         Task("b", "binary"), Task("reg", "regression", out_dim=2), Task("seg", "dense", num_classes=4),
         Task("depth", "dense"))


def _model_cfg(**kw):
    c = base_config().model
    c.vit.update(width=32, depth=2, num_heads=4, mlp_dim=64)
    c.update(kw)
    return c


@pytest.mark.parametrize("pool", ["gap", "cls"])
def test_vit_outputs_per_task(pool):
    cfg = _model_cfg()
    cfg.vit.pool = pool
    model = build_model(cfg, TASKS, (16, 16, 3))
    x = jnp.ones((2, 16, 16, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    out, aux = model.apply(variables, x)
    shapes = {k: v.shape for k, v in out.items()}
    assert shapes == {"cls": (2, 7), "attr": (2, 3), "b": (2, 1), "reg": (2, 2), "seg": (2, 16, 16, 4),
                      "depth": (2, 16, 16, 1)}
    assert set(aux) == {"losses", "metrics"}
    single, _ = model.apply(variables, x, task="seg")
    assert list(single) == ["seg"]
    np.testing.assert_allclose(single["seg"], out["seg"], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown task"):
        model.apply(variables, x, task="nope")


@pytest.mark.parametrize("changes", [
    dict(head_hidden=8), dict(dense_head="upsample"), dict(name="m3vit"), dict(name="mod_squad"),
    dict(name="task_expert"), dict(backbone="moe_vit"),
], ids=["hps", "upsample", "m3vit", "mod_squad", "task_expert", "moe_vit"])
def test_every_param_has_logical_axes(changes):
    cfg = _model_cfg(**changes)
    cfg.moe.update(attn_experts=4 if cfg.name == "mod_squad" else 0, every=1)
    model = build_model(cfg, TASKS, (16, 16, 3))
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, 16, 16, 3)))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    specs = nn.get_partition_spec(boxed)
    block = specs["backbone"]["block0"]
    if cfg.name in ("m3vit", "mod_squad") or cfg.backbone == "moe_vit":
        assert tuple(block["mlp"]["wi"]) == ("exp", "embed", "mlp")  # experts shard over `expert`
        if cfg.name == "mod_squad":
            assert tuple(block["attn"]["wq"]) == ("attn_exp", "embed", "kv")
    else:
        assert tuple(block["mlp"]["fc1"]["kernel"]) == ("embed", "mlp")
        assert tuple(block["attn"]["query"]["kernel"]) == ("embed", "heads", "kv")
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), jnp.ones((2, 16, 16, 3)))[0][0])
    assert out["seg"].shape == (2, 16, 16, 4) and out["depth"].shape == (2, 16, 16, 1) and out["cls"].shape == (2, 7)


def test_named_variants_and_mlp_backbone():
    assert vit_dims(mlc.ConfigDict(dict(variant="S"))) == dict(width=384, depth=12, num_heads=6, mlp_dim=1536)
    assert vit_dims(mlc.ConfigDict(dict(variant="Ti")))["width"] == 192
    model = build_model(_model_cfg(backbone="mlp"), TASKS[:4], (10,))
    out, _ = model.apply(model.init(jax.random.PRNGKey(0), jnp.ones((3, 10))), jnp.ones((3, 10)))
    assert out["reg"].shape == (3, 2)
    with pytest.raises(ValueError, match="dense"):
        m = build_model(_model_cfg(backbone="mlp"), TASKS, (10,))
        m.init(jax.random.PRNGKey(0), jnp.ones((1, 10)))


def test_bfloat16_compute_keeps_float32_params():
    model = build_model(_model_cfg(dtype="bfloat16"), TASKS[:1], (16, 16, 1))
    x = jnp.ones((2, 16, 16, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    keys = iter(jax.random.split(jax.random.PRNGKey(1), len(jax.tree.leaves(variables))))
    variables = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(next(keys), v.shape), variables)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
    out, _ = model.apply(variables, x)
    assert out["cls"].dtype == jnp.float32  # heads return f32 logits for a stable loss
    ref = build_model(_model_cfg(), TASKS[:1], (16, 16, 1)).apply(variables, x)[0]["cls"]
    assert float(jnp.abs(ref).max()) > 0.1
    np.testing.assert_allclose(out["cls"], ref, atol=0.05 * float(jnp.abs(ref).max()))
