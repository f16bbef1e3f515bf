"""Test set-up: 8 simulated CPU devices before any JAX computation, so sharding is tested every run."""

import os

os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
