"""MultiTab-Bench (Sinodinos et al., 2025): 7 synthetic regression tasks, MLP backbone.

Run:

    mtljax train --config=configs/multitab.py                      # the paper's default: ρ = 0.4
    mtljax train --config=configs/multitab.py:conflict             # ρ = -0.15, mixed complexities
    mtljax train --config=configs/multitab.py --config.baselines.train=True   # + single-task Δm

The argument picks a preset: ``default`` (T=7, D=32, ρ=0.4, degrees [1,3,2,3,4,2,3], σ=0.01) or
``conflict`` (negatively correlated tasks, ρ=-0.15 ≥ -1/(T-1)). Metrics are per-task MSE and MAE on a
freshly drawn test set (lower is better). Targets of degree-4 tasks have a large variance, so their
MSE is the largest.
"""

from mtljax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.workdir = f"runs/multitab_{arg or 'default'}"
    c.data.name = "multitab"
    # num_tasks 7, num_features 32, rho 0.4, degrees (1, 3, 2, 3, 4, 2, 3), noise 0.01: base_config's
    c.data.num_train = 20_000
    c.data.num_test = 5_000
    c.data.batch_size = 256
    if arg == "conflict":
        c.data.rho = -0.15
    elif arg not in (None, "", "default"):
        raise ValueError(f"configs/multitab.py: unknown preset {arg!r}; use 'default' or 'conflict'")
    c.model.backbone = "mlp"
    c.model.mlp.hidden = (256, 256, 256)
    c.optim.learning_rate = 1e-3
    c.train.steps = 3000
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    return c
