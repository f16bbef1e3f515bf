"""Bad configs fail fast with one line naming the key; a failed start touches no existing run."""

import hashlib
import os
import subprocess
import sys

import pytest

from mtljax.config import ConfigError, base_config
from mtljax.commands.train import train


def tiny_config(workdir):
    c = base_config()
    c.workdir = str(workdir)
    c.data.num_train, c.data.num_test, c.data.batch_size, c.data.eval_batch_size = 256, 64, 32, 64
    c.model.vit.update(width=16, depth=1, num_heads=2, mlp_dim=32)
    c.train.update(steps=4, log_every=2, eval_every=4, checkpoint_every=2, progress=False)
    return c


CASES = [
    ("data.name", "imagenet", "config.data.name"),
    ("model.name", "bert", "config.model.name"),
    ("model.backbone", "resnet", "config.model.backbone"),
    ("model.vit.variant", "XXL", "config.model.vit.variant"),
    ("model.vit.patch_size", 5, "config.model.vit.patch_size"),
    ("model.vit.num_heads", 3, "config.model.vit.width"),
    ("model.dtype", "float8", "config.model.dtype"),
    ("optim.name", "lion9", "config.optim.name"),
    ("optim.learning_rate", -1.0, "config.optim.learning_rate"),
    ("data.tasks", ("left", "middle"), "config.data"),
    ("data.batch_size", 0, "config.data.batch_size"),
    ("data.batch_size", 30, "config.data.batch_size"),
    ("train.steps", -5, "config.train.steps"),
    ("train.checkpoint_every", 0, "config.train.checkpoint_every"),
    ("mesh.shape", {"data": 3, "model": 2}, "config.mesh.shape"),
    ("mesh.shape", {"data": -1, "model": 3}, "config.mesh.shape"),
    ("dist.host_allocator", "retian", "config.dist.host_allocator"),
]


def _set(c, key, value):
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
        node = node[p]
    node[leaf] = value


def test_autogram_with_loss_scaling_names_the_level(tmp_path):
    c = tiny_config(tmp_path / "run")
    c.optim.update(method="upgrad", level="autogram")
    c.model.dtype = "float16"  # loss scaling 'auto' -> dynamic
    with pytest.raises(ConfigError) as err:
        train(c)
    assert str(err.value).startswith("config.optim.level: 'autogram' cannot see") and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key,value,named", CASES, ids=[f"{k}={v}" for k, v, _ in CASES])
def test_bad_value_names_its_key(tmp_path, key, value, named):
    c = tiny_config(tmp_path / "run")
    _set(c, key, value)
    with pytest.raises(ConfigError) as err:
        train(c)
    msg = str(err.value)
    assert named in msg and "\n" not in msg
    assert not (tmp_path / "run").exists()  # nothing was written


def test_unknown_task_weight(tmp_path):
    c = tiny_config(tmp_path / "run")
    c.optim.task_weights = {"middle": 2.0}
    with pytest.raises(ConfigError, match="config.optim.task_weights.middle"):
        train(c)


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="config.workdir"):
        train(tiny_config(blocker / "run"))


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            h.update(os.path.join(dirpath, f).encode())
            h.update(open(os.path.join(dirpath, f), "rb").read())
    return h.hexdigest()


def test_failed_restart_keeps_checkpoints(tmp_path):
    c = tiny_config(tmp_path / "run")
    train(c, log=lambda s: None)
    before = _digest(tmp_path / "run" / "checkpoints")
    changed = tiny_config(tmp_path / "run")
    changed.model.vit.width = 32
    with pytest.raises(ConfigError, match="config.model differs"):
        train(changed)
    bad = tiny_config(tmp_path / "run")
    bad.data.batch_size = 12
    with pytest.raises(ConfigError):
        train(bad)
    assert _digest(tmp_path / "run" / "checkpoints") == before


def test_cli_prints_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mtljax", "train", "--config.data.name=nope", f"--workdir={tmp_path / 'w'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        proc.stderr.strip().splitlines()[-1]
    ] and proc.stderr.strip().startswith("error: config.data.name: unknown dataset 'nope'")
    proc = subprocess.run([sys.executable, "-m", "mtljax", "train", "--config.train.stepz=3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "stepz" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


MOE_CASES = [
    ({"model.moe.top_k": 9}, "config.model.moe.top_k"),
    ({"model.moe.capacity_factor": 0.0}, "config.model.moe.capacity_factor"),
    ({"model.moe.num_experts": 6, "mesh.shape": {"data": -1, "expert": 4, "model": 1}}, "config.model.moe.num_experts"),
    ({"model.moe.dispatch": "ragged", "mesh.shape": {"data": -1, "expert": 2, "model": 1}}, "config.model.moe.dispatch"),
    ({"model.moe.router": "hash"}, "config.model.moe.router"),
    ({"model.moe.gate": "shared"}, "config.model.moe.gate"),
    ({"model.moe.layers": (7,)}, "config.model.moe.layers"),
    ({"model.moe.group_size": 3}, "config.model.moe.group_size"),
    ({"model.moe.pack_slots": True, "model.moe.dispatch": "einsum"}, "config.model.moe.pack_slots"),
    ({"train.loss_scale": "dynamc"}, "config.train.loss_scale"),
    ({"model.backbone": "mlp"}, "config.model.backbone"),
    ({"optim.level": "rep"}, "config.optim.level"),
    ({"optim.rep_mtl": True}, "config.optim.rep_mtl"),
    ({"model.name": "mod_squad", "model.moe.attn_experts": 2, "model.moe.attn_top_k": 4}, "config.model.moe.attn_top_k"),
]


@pytest.mark.parametrize("changes,named", MOE_CASES, ids=[named.split(".")[-1] + str(i) for i, (_, named) in enumerate(MOE_CASES)])
def test_bad_moe_setting_names_its_key(tmp_path, changes, named):
    c = tiny_config(tmp_path / "run")
    c.model.name = "m3vit"
    for key, value in changes.items():
        _set(c, key, value)
    with pytest.raises(ConfigError) as err:
        train(c)
    msg = str(err.value)
    assert named in msg and "\n" not in msg
    assert not (tmp_path / "run").exists()


# command-line mistakes: one line, exit status 2, nothing compiled or written (cli.main in-process)
SMALL = ["--config.data.num_train=256", "--config.data.num_test=64", "--config.data.batch_size=32",
         "--config.data.eval_batch_size=64"]
CLI_CASES = [
    (["train", "configs/multitab.py"],
     "error: unexpected argument 'configs/multitab.py' (did you mean --config=configs/multitab.py?)"),
    (["train", "train.steps=3"], "error: unexpected argument 'train.steps=3' (did you mean --config.train.steps=3?)"),
    (["trian"], "error: unknown command 'trian' (did you mean 'train'?)"),
    (["train", "--budget=150%"], "error: --budget is not a flag of mtljax train"),
    (["train", "--config.train.stepz=3"],
     "error: config.train.stepz: unknown config key 'stepz' (did you mean \"steps\" instead of \"stepz\"?)"),
    (["train", "--config.nosuch.x=3"], "error: config.nosuch.x: unknown config key 'nosuch'"),
    (["train", "--config.optim.method_kwargs.c=0.4", *SMALL],
     "error: config.optim.method_kwargs.c: equal has no hyperparameter 'c'; it takes none"),
    (["train", "--config.optim.method=cagrad", "--config.optim.method_kwargs.cc=0.4", *SMALL],
     "error: config.optim.method_kwargs.cc: cagrad has no hyperparameter 'cc'; its hyperparameters are ['c', "),
    (["train", "--config.optim.task_weights.middle=2", *SMALL],
     "error: config.optim.task_weights.middle: no such task; tasks are ['left', 'right']"),
    (["train", "--config=configs/adapt_poly.py:mhz"],  # a config file's own error, not its traceback
     "error: --config=configs/adapt_poly.py:mhz: configs/adapt_poly.py: unknown argument 'mhz'; use one of poly, "),
    (["train", "--config.optim.method_kwargs.a.b=1"],
     "error: config.optim.method_kwargs.a.b: the keys of config.optim.method_kwargs are single names"),
]


@pytest.mark.parametrize("args,expected", CLI_CASES, ids=[" ".join(a[:3]) for a, _ in CLI_CASES])
def test_cli_mistake_is_one_line(tmp_path, capsys, args, expected):
    from mtljax.commands import cli

    rc = cli.main(["mtljax", *args, f"--workdir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(expected), err
    assert err.startswith("error: ") and err.count("error: ") == 1
    assert len(err.strip().splitlines()) == (2 if args[0] == "trian" else 1), err  # trian: + the usage
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_workdir_that_cannot_be_created_is_one_line(capsys):
    from mtljax.commands import cli

    rc = cli.main(["mtljax", "train", "--workdir=/proc/mtljax_x", *SMALL])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: config.workdir: '/proc/mtljax_x' ") and err.count("\n") == 1, err


def test_method_kwargs_from_the_command_line():
    from mtljax.commands import cli
    from mtljax.config import FREE_FORM_KEYS
    from mtljax.optim import get_method

    config = cli._parse(["mtljax", "--config.optim.method=cagrad", "--config.optim.method_kwargs.c=0.4",
                         "--config.optim.method_kwargs.rescale", "1", "--config.optim.task_weights={'left': 2}",
                         "--config.optim.method_kwargs.note=abc"]).config
    assert config.optim.method_kwargs.to_dict() == {"c": 0.4, "rescale": 1, "note": "abc"}
    assert config.optim.task_weights.to_dict() == {"left": 2}
    kwargs = {k: v for k, v in config.optim.method_kwargs.items() if k != "note"}
    assert get_method("cagrad", **kwargs).name == "cagrad"
    # every empty (free-form) section of the base config takes --config.SECTION.KEY=VALUE
    empty = [f"{s}.{k}" for s, node in base_config().items() if hasattr(node, "items")
             for k, v in node.items() if hasattr(v, "items") and not len(v)]
    assert sorted(empty) == sorted(FREE_FORM_KEYS)


def test_help_lists_commands_flags_and_config_keys(capsys):
    from mtljax.commands import cli

    assert cli.main(["mtljax", "--help"]) == 0
    out = capsys.readouterr().out
    for command, (_, description) in cli.COMMANDS.items():
        assert f"  {command}" in out and description in out
    assert "mtljax <command> --help" in out
    assert cli.main(["mtljax", "train", "--help"]) == 0
    out = capsys.readouterr().out
    for key in ("config.train.steps=1500", "config.optim.method='equal'", "config.data.name='multi_digits'",
                "config.mesh.shape={'data': -1, 'expert': 1, 'model': 1}", "config.baselines.train=False",
                "config.init.checkpoint=''", "config.optim.method_kwargs.KEY=VALUE", "--workdir"):
        assert key in out, key
    assert "--budget" not in out
    assert cli.main(["mtljax", "slim", "--help"]) == 0
    assert "--budget" in capsys.readouterr().out
    assert cli.main(["mtljax"]) == 2 and "commands:" in capsys.readouterr().err
