"""Test set-up, before any JAX computation: 8 simulated CPU devices, so sharding is tested every run,
and XLA's backend optimisation off (``--xla_backend_optimization_level=0``): the tests use tiny models
whose time is almost all compilation, which this halves; they check values, never speed. XLA:CPU's
newer fusion emitters are off too (``--xla_cpu_use_fusion_emitters=false``): the older emitters
compile the same step in 40-60 % of the time (measured: the HyperFormer++ test step 5.4 s -> 2.2 s,
the slim step 5.9 s -> 3.6 s; the whole suite 998 s -> 767 s) and differ from them only in rounding:
of the tests, only tests/trainer/test_golden.py (recorded with them on) sees it, one of 4,096 entries
moved by 7e-6 after five Adam steps, so that test compiles its step with them on.

Compilations are also shared within the run: a persistent compilation cache in a fresh temporary
directory, one per ``pytest`` invocation (the xdist workers, the notebooks' kernels and the training
subprocesses inherit it through the environment), removed at the end. Many tests build the same tiny
model in a new ``Experiment`` (a new jitted function, which JAX's in-memory cache cannot match); XLA
gives the same executable for the same program, so loading it instead of compiling it again changes no
value. A cache the user set (``JAX_COMPILATION_CACHE_DIR``) is used as it is and kept."""

import atexit
import os
import shutil
import tempfile

flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in flags:
    flags += " --xla_backend_optimization_level=0"
if "xla_cpu_use_fusion_emitters" not in flags:
    flags += " --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = flags.strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the first process of this run (the xdist controller)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mtljax-tests-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
# cache what takes a tenth of a second or more to compile (JAX's default, 1 s, misses most of the suite)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

# The longest test files (measured: notebooks, subprocess runs, whole trainings) are handed to the two
# xdist workers first, so that neither is left with a long file while the other has finished.
LONGEST_FIRST = (
    "test_notebook_merge.py", "commands/test_train_e2e.py", "parallel/test_multiprocess.py",
    "parallel/test_sharded_step.py", "commands/test_config_errors.py", "test_notebook_adapt.py",
    "merge/test_command.py", "trainer/test_corrupt_checkpoint.py", "test_readme.py", "trainer/test_resume.py",
    "models/test_peft.py", "test_notebook.py", "slim/test_slim_cli.py",
)


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        path = item.nodeid.split("::")[0]
        return next((i for i, name in enumerate(LONGEST_FIRST) if path.endswith(name)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the other files keep their order
