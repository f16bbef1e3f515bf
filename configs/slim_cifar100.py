"""Slim model (a controllable multi-task architecture) on CIFAR100-MTL: 20 five-way tasks (one per
CIFAR-100 superclass), a slimmable encoder and 20 slimmable decoders, each with its own width at run time.

Needs the tfds ``cifar100`` dataset prepared once (``tfds build cifar100 --data_dir=DIR``), then

    mtljax train --config=configs/slim_cifar100.py --config.data.data_dir=DIR
    mtljax slim  --config=configs/slim_cifar100.py --config.data.data_dir=DIR --budget=40% \\
        --preference=$(python -c "print(','.join(['1']*19 + ['4']))")    # favour 'vehicles_2'
    mtljax slim  --config=configs/slim_cifar100.py --config.data.data_dir=DIR --sweep
    mtljax train --config=configs/slim_cifar100.py:conv --config.data.data_dir=DIR   # conv-net encoder

Encoder (``vit``, default): a custom ViT with 4×4 patches, width 256, depth 8, 8 heads, MLP 1024,
slimmed to 2/4/6/8 heads and MLP 256/512/768/1024 at widths 0.25/0.5/0.75/1; ``conv``: channels
(64, 128, 256), representation 256. Decoders: 2 hidden layers of 128 (32..128). Every image is
labelled for one task only (its superclass), so each task's loss and metrics use its own images.
Controllability and hypervolume over 20 tasks use Spearman's ρ and the Monte-Carlo hypervolume
(:mod:`mtljax.models.slim.hypervolume`). Not run here (no prepared data on the development machine); the
configuration is exercised end to end with tfds mock data in ``tests/slim/test_cifar100_slim.py``.
"""

from mtljax.config import base_config


def get_config(arg=None):
    backbone = arg or "vit"
    c = base_config()
    c.workdir = f"runs/slim_cifar100_{backbone}"
    c.data.name = "cifar100_mtl"
    c.data.normalize = True
    c.data.batch_size = 256
    c.data.eval_batch_size = 512
    c.model.name = "slim"
    c.model.vit.update(variant="custom", patch_size=4, width=256, depth=8, num_heads=8, mlp_dim=1024)
    c.model.dropout = 0.1
    c.model.slim.update(backbone=backbone, decoder_hidden=128, conv_channels=(64, 128, 256), conv_dim=256)
    c.optim.learning_rate = 1e-3
    c.optim.weight_decay = 0.05
    c.optim.warmup_steps = 1000
    c.train.steps = 30_000
    c.train.eval_every = 2000
    c.train.checkpoint_every = 2000
    return c
