"""Test set-up: JAX on the CPU with 8 emulated devices, so sharded code paths run for real.

This must run before JAX initialises its backends, which is why it lives in conftest.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session, shared with the subprocesses tests start:
# the same :smoke steps are compiled by many tests, and compiling is most of their time.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="alenn_jax_test_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 8)

from absl import flags  # noqa: E402

# absltest helpers (create_tempdir, ...) read flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()
