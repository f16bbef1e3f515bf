"""Test set-up, before any JAX computation: 8 simulated CPU devices, so sharding is tested every run,
and XLA's backend optimisation off (``--xla_backend_optimization_level=0``): the tests use tiny models
whose time is almost all compilation, which this halves; they check values, never speed."""

import os

flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
