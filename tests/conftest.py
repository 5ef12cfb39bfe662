"""Test set-up: JAX on the CPU with 8 emulated devices, so sharded code paths run for real.

This must run before JAX initialises its backends, which is why it lives in conftest.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 8)

from absl import flags  # noqa: E402

# absltest helpers (create_tempdir, ...) read flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()
