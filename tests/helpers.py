"""What several test files share: a class-wide temporary folder with the phantoms built in it,
running launch.py in a subprocess, and comparing parameter trees."""

import os
import shutil
import subprocess
import sys
import tempfile

import jax
import numpy as np
from absl.testing import parameterized

from alenn_jax import checkpointing, datasets

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


class PhantomsTestCase(parameterized.TestCase):
  """`cls.tmp`, a folder removed after the class, and `cls.data_dir`, with phantoms/px64 built."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.data_dir = os.path.join(cls.tmp, "data")
    datasets.build("phantoms/px64", cls.data_dir)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()


def launch(*args, env=None):
  """`python launch.py ARGS` in the repository, on the CPU; returns the CompletedProcess."""
  return subprocess.run(
    [sys.executable, "launch.py", *args],
    capture_output=True,
    text=True,
    cwd=REPO,
    env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
    check=False,
  )


def leaves_equal(a, b) -> bool:
  """Whether two pytrees hold bit-identical arrays."""
  return all(
    np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def stage1_generator(workdir: str):
  """(gen_s params, gen_t params, step) of the stage 1 run in `workdir`, loaded from its stored
  config as later stages load it."""
  generator = checkpointing.load_generator(workdir)
  return generator.params["gen_s"], generator.params["gen_t"], generator.step
