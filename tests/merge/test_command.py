"""``mtljax merge`` end to end on synthetic runs (a tiny ViT's checkpoints written directly, nothing
trained): the merged checkpoint is what the method says and ``mtljax eval`` reads it; the sweep writes
its table and chart; every bad argument is one line with exit status 2 and writes nothing."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from mtljax.commands import cli
from mtljax.commands.merge import run_merge
from mtljax.config import base_config
from mtljax.merge import MergeError, flatten, unflatten
from mtljax.trainer.checkpoint import Checkpointer
from mtljax.trainer.experiment import Experiment
from mtljax.trainer.loop import STATE_FORMAT, restore_params


def _config(workdir, tasks, width=16):
    c = base_config()
    c.workdir = str(workdir)
    c.data.update(name="multi_digits", num_train=128, num_test=64, image_size=16, channels=3, tasks=tuple(tasks))
    c.data.batch_size, c.data.eval_batch_size = 32, 32
    c.model.vit.update(width=width, depth=1, num_heads=2, mlp_dim=32, patch_size=4)
    c.train.update(steps=4, progress=False)
    return c


def _write_run(workdir, tasks, *, init_from=None, shift=0.0, seed=0, width=16, claims=None, lora=False):
    """A run directory as ``mtljax train`` leaves it: config.json, (init.json), one checkpoint."""
    c = _config(workdir, tasks, width)
    c.seed = seed
    if lora:  # a LoRA expert: the pretrained backbone unchanged, random factors (B != 0)
        c.model.peft.update(method="lora", rank=2, alpha=4.0)
        c.optim.trainable = ("lora", "^heads_")
    exp = Experiment(c)
    with jax.set_mesh(exp.mesh):
        state, _ = exp.init_state()
        if init_from is not None:  # fine-tuned: the pretrained backbone moved by a random step
            with jax.set_mesh(init_from.mesh):
                _, base, _ = restore_params(init_from)
            base = flatten(jax.device_get(base))
            rng = np.random.default_rng(seed + 100)
            params = flatten(jax.device_get(state.params))
            for p, x in params.items():
                if p in base and not p.startswith("heads_"):
                    params[p] = base[p] + shift * rng.normal(size=x.shape).astype(x.dtype)
                elif p.endswith("/b") and "lora_" in p:
                    params[p] = 0.3 * rng.normal(size=x.shape).astype(x.dtype)
            shardings = jax.tree.map(lambda x: x.sharding, state.params)
            state = state.replace(params=jax.device_put(unflatten(params), shardings))
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=1, async_save=False)
        ckpt.save(4, state, exp.train_iterator(prefetch=0), force=True)
        ckpt.close()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({**json.loads(c.to_json_best_effort()), "state_format": STATE_FORMAT}, f)
    start = claims or init_from  # the run init.json says it started from
    if start is not None:
        with open(os.path.join(workdir, "init.json"), "w") as f:
            json.dump({"state_dir": os.path.join(start.config.workdir, "checkpoints", "4", "state")}, f)
    return exp


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge_runs")
    pre = _write_run(str(root / "pre"), ["left", "right"])
    _write_run(str(root / "left"), ["left"], init_from=pre, shift=0.05, seed=1)
    _write_run(str(root / "right"), ["right"], init_from=pre, shift=0.05, seed=2)
    shutil.copytree(root / "right", root / "stranger")  # the same expert, but started from another run
    (root / "stranger" / "init.json").write_text(json.dumps({"state_dir": str(root / "left" / "checkpoints" / "4" /
                                                                              "state")}))
    _write_run(str(root / "wide"), ["right"], claims=pre, seed=4, width=32)  # says it started from pre: other shapes
    _write_run(str(root / "lora_left"), ["left"], init_from=pre, seed=5, lora=True)
    _write_run(str(root / "lora_right"), ["right"], init_from=pre, seed=6, lora=True)
    return root


def _merge_config(workdir, **merge):
    c = base_config()
    c.workdir = str(workdir)
    c.merge.update({"steps": 3, "batch_size": 16, "shots": 4, **merge})
    return c


def _backbone(workdir):
    from mtljax.commands.saved_config import get_config

    exp = Experiment(get_config(os.path.join(workdir, "config.json")))
    with jax.set_mesh(exp.mesh):
        _, params, _ = restore_params(exp)
    return flatten(jax.device_get(params["backbone"])), exp


def test_task_arithmetic_endpoints_and_eval_reads_the_merged_run(runs, tmp_path, capsys):
    out = tmp_path / "ta0"
    report = run_merge(_merge_config(out, scale=0.0), pretrained=str(runs / "pre"),
                       experts=f"{runs / 'left'},{runs / 'right'}", method="task_arithmetic", log=lambda s: None)
    merged, exp = _backbone(str(out))
    pre, _ = _backbone(str(runs / "pre"))
    for p in pre:  # λ = 0: the pretrained backbone exactly
        np.testing.assert_array_equal(merged[p], pre[p])
    assert [t.name for t in exp.tasks] == ["left", "right"]
    # mtljax eval --workdir reads the merged run's saved config.json and gives the report's numbers
    assert cli.main(["mtljax", "eval", f"--workdir={out}"]) == 0
    printed = capsys.readouterr().out
    assert f"{report['rows']['task_arithmetic']['left']['accuracy']:.4f}" in printed
    one = tmp_path / "ta1"  # one expert, λ = 1: that expert's backbone
    run_merge(_merge_config(one, scale=1.0), pretrained=str(runs / "pre"), experts=str(runs / "left"),
              method="task_arithmetic", log=lambda s: None)
    merged, _ = _backbone(str(one))
    expert, _ = _backbone(str(runs / "left"))
    for p in expert:
        np.testing.assert_allclose(merged[p], expert[p], rtol=1e-6, atol=1e-6)


def test_sweep_writes_table_and_chart(runs, tmp_path):
    out = tmp_path / "sweep"
    report = run_merge(_merge_config(out), pretrained=str(runs / "pre"), experts=f"{runs / 'left'},{runs / 'right'}",
                       sweep=True, log=lambda s: None)
    assert (out / "sweep.png").stat().st_size > 1000 and (out / "sweep.json").exists()
    assert not (out / "checkpoints").exists()
    assert set(report["methods"]) <= set(report["rows"]) and "individual experts" in report["rows"]
    for name in ("adamerging_task", "adamerging_layer", "atlas", "self_positioning"):
        assert np.isfinite(report["info"][name]["loss_last"])
    coeffs = report["info"]["adamerging_task"]["coefficients"]
    assert len(coeffs) == 2 and all(0.0 <= c <= 1.0 for c in coeffs)


BAD = [
    (["--method=tie"], "did you mean 'ties'"),
    (["--method=ties", "--config.merge.density=1.5"], "config.merge.density: must be in (0, 1]"),
    (["--method=dare", "--config.merge.drop=1.0"], "config.merge.drop: must be in [0, 1)"),
    (["--method=ties", "--experts={r}/left,{r}/stranger"], "not from --pretrained"),
    (["--method=ties", "--experts={r}/left,{r}/wide"], "'backbone/"),
    (["--method=ties", "--experts={r}/left,{r}/left"], "task 'left' is already"),
    (["--method=ties", "--experts={r}/left,{r}/nope"], "--experts[1]"),
    (["--method=ties", "--pretrained={r}/left"], "not from --pretrained"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m for _, m in BAD])
def test_bad_arguments_are_one_line(runs, tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    argv = ["mtljax", "merge", f"--pretrained={runs}/pre", f"--experts={runs}/left,{runs}/right",
            f"--workdir={out}"] + [a.format(r=runs) for a in args]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and message in err, err
    assert not out.exists()


def test_refuses_a_workdir_with_checkpoints(runs):
    with pytest.raises(MergeError, match="already holds checkpoints"):
        run_merge(_merge_config(runs / "left"), pretrained=str(runs / "pre"), experts=str(runs / "right"),
                  method="ties", log=lambda s: None)


def test_lora_experts_merge_as_dense_updates_and_route_with_phatgoose(runs, tmp_path):
    experts = f"{runs / 'lora_left'},{runs / 'lora_right'}"
    out = tmp_path / "lora_ta"  # λ = 1 on one LoRA expert: its LoRA folded into the kernels (ΔW = (α/r)·A·B)
    run_merge(_merge_config(out, scale=1.0), pretrained=str(runs / "pre"), experts=str(runs / "lora_left"),
              method="task_arithmetic", log=lambda s: None)
    merged, _ = _backbone(str(out))
    from mtljax.commands.saved_config import get_config
    from mtljax.models.peft.lora import merge as fold

    exp = Experiment(get_config(str(runs / "lora_left" / "config.json")))
    with jax.set_mesh(exp.mesh):
        _, params, _ = restore_params(exp)
    folded = flatten(fold(jax.device_get(params), 0, 4.0)["backbone"])
    for p in merged:
        np.testing.assert_allclose(merged[p], folded[p], rtol=1e-5, atol=1e-6)
    routed = tmp_path / "phatgoose"
    report = run_merge(_merge_config(routed, steps=2, top_k=1), pretrained=str(runs / "pre"), experts=experts,
                       method="phatgoose", log=lambda s: None)
    shares = report["info"]["phatgoose"]["routing_by_dataset"]["multi_digits"]
    assert set(shares) == {"left", "right"} and abs(sum(shares.values()) - 1) < 1e-3
    saved = json.loads((routed / "config.json").read_text())
    assert saved["model"]["peft"]["routing"] == "phatgoose"
    with pytest.raises(MergeError, match="not a LoRA expert"):
        run_merge(_merge_config(tmp_path / "p2"), pretrained=str(runs / "pre"),
                  experts=f"{runs / 'left'},{runs / 'lora_right'}", method="phatgoose", log=lambda s: None)
