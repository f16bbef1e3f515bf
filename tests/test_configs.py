"""Every config in configs/ loads and validates (no data is built here)."""

import importlib.util
import pathlib

import pytest

from mtljax.config import validate

CONFIGS = sorted(pathlib.Path(__file__).parents[1].joinpath("configs").glob("*.py"))


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_validates_and_documents_its_command(path, tmp_path):
    module = _load(path)
    assert "mtljax train" in module.__doc__
    config = module.get_config(None)
    config.workdir = str(tmp_path / "run")
    validate(config, num_devices=8)


def test_config_args():
    assert _load(CONFIGS[0].parent / "multitab.py").get_config("conflict").data.rho < 0
    assert _load(CONFIGS[0].parent / "cifar100_mtl.py").get_config("S").model.vit.variant == "S"
    with pytest.raises(ValueError, match="preset"):
        _load(CONFIGS[0].parent / "multitab.py").get_config("nope")


def test_renamed_model_and_attention_impl_are_one_line_errors(tmp_path):
    from mtljax.config import ConfigError, base_config
    from mtljax.models import build_model

    config = base_config()
    config.workdir = str(tmp_path / "run")
    config.model.name = "controllable"
    with pytest.raises(ConfigError, match="config.model.name='controllable' was renamed to 'slim'"):
        validate(config, num_devices=8)
    with pytest.raises(ValueError, match="renamed to 'slim'"):
        build_model(config.model, (), (8, 8, 1))
    config.model.name = "hps"
    config.model.vit.attention_impl = "flash"
    with pytest.raises(ConfigError, match="config.model.vit.attention_impl: unknown 'flash'"):
        validate(config, num_devices=8)
    config.model.vit.attention_impl = "cudnn"
    with pytest.raises(ConfigError, match="needs config.model.dtype 'bfloat16' or 'float16'"):
        validate(config, num_devices=8)
    config.model.update(dtype="bfloat16")
    validate(config, num_devices=8)
    config.model.vit.attention_impl = None
    validate(config, num_devices=8)
