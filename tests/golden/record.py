"""Record the golden parameters of ``cases.py`` with the train step of commit fd90ec3 (before the
spine redesign). The configs must come from that commit too (today's configs take keys the old package
lacks), so run it inside a worktree of fd90ec3, with today's ``cases.py`` and this file copied in:

    git worktree add /tmp/old fd90ec3 && mkdir -p /tmp/old/tests/golden
    cp tests/golden/cases.py tests/golden/record.py /tmp/old/tests/golden/
    (cd /tmp/old && PYTHONPATH=/tmp/old python tests/golden/record.py OUT.npz)

``OUT.npz`` is one file per kind of CPU (``steps5.npz``: AMD AVX2, ``steps5_avx512.npz``: AMD AVX-512);
``GOLDENS`` in ``tests/trainer/test_golden.py`` maps the CPU kind to its file (add a line for a new
kind; on a kind it does not list, the test skips). It holds, for every case,
the final parameters (flattened by path, ``<case>/final/<path>``), a fingerprint of the initial ones
(``<case>/init/<path>`` = [sum, sum of squares] per leaf, to tell an initialisation change from an update
change) and the per-step task losses (``<case>/losses``). This script uses the *old* trainer internals
(``Experiment``, ``_make_step``); it is kept to document how the goldens were made, not to be run against
the new code.
"""

from __future__ import annotations

import os
import pathlib
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from cases import CASES, STEPS, build_config  # noqa: E402


def flatten(tree, prefix):
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[prefix + "/" + "/".join(str(getattr(k, "key", k)) for k in path)] = np.asarray(leaf)
    return out


def run_old(config):
    from mtljax.data import base as data_base
    from mtljax.train import loop
    from mtljax.train import step as st
    from mtljax.train.state import create_state

    exp = loop.Experiment(config)
    with jax.set_mesh(exp.mesh):
        state, shardings, _ = create_state(exp.model, exp.tx, exp.dataset.input_shape, config.seed, exp.mesh,
                                           exp.rules, exp.mtl_init)
        init = jax.device_get(state.params)
        step = st.jit_train_step(loop._make_step(exp, shardings), exp.mesh, shardings, exp.batch_sharding)
        ds = data_base.train_dataset(exp.dataset.splits["train"], exp.tasks, config.data.batch_size, config.seed,
                                     indices=exp.dataset.info.get("train_indices"))
        it = data_base.train_iterator(ds, prefetch=0)
        losses = []
        for _ in range(STEPS):
            state, metrics = step(state, loop._to_global(next(it), exp.batch_sharding))
            assert bool(metrics["finite"])
            losses.append(np.asarray(metrics["task_losses"]))
        return init, jax.device_get(state.params), np.stack(losses)


def main():
    import mtljax

    print("recording with", mtljax.__file__)
    out = {}
    for name in CASES:
        init, final, losses = run_old(build_config(name))
        out.update({k: np.asarray([v.sum(dtype=np.float64), np.square(v, dtype=np.float64).sum()])
                    for k, v in flatten(init, f"{name}/init").items()})
        out.update(flatten(final, f"{name}/final"))
        out[f"{name}/losses"] = losses
        print(f"{name}: losses {losses[0].round(4)} -> {losses[-1].round(4)}")
    path = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent / "steps5.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
