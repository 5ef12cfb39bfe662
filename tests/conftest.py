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
# The tests compile far more than they compute (tiny :smoke networks, a few steps each): at LLVM's
# lowest optimisation level XLA:CPU compiles them 2-3x faster (Inception-v3's reduced forward test
# 29 s -> 13 s). Every comparison in the suite is between runs under the same flags or within a
# tolerance; `make demo` and every launched job keep XLA's default. Subprocesses inherit it.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"])
  )

import jax

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 8)

from absl import flags  # noqa: E402

# absltest helpers (create_tempdir, ...) read flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()


# The files that take longest (BENCHMARKS.md, the test suite), run first: the test processes take
# files (`make test`: --dist loadfile) in collection order, so a long file collected last would
# keep one process busy after the other has finished.
_LONGEST_FIRST = (
  "pipeline_test.py",
  "localize_test.py",
  "models_test.py",
  "train_inpainting_test.py",
  "train_classifier_test.py",
  "rtv_test.py",
  "bad_input_test.py",
  "multihost_test.py",
)


def pytest_collection_modifyitems(config, items):
  def rank(item):
    name = os.path.basename(str(item.path))
    return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)

  items.sort(key=rank)  # Stable: each file's tests keep their order.
