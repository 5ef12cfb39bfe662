"""Two JAX processes on localhost (CPU, 4 devices each, JAX's CPU collectives) train the :smoke
stage 1 and end with the parameters one process with 8 devices reaches; their checkpoint restores
in a single-process run."""

import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
from absl.testing import absltest

from configs import stage1
from tests import helpers

REPO = helpers.REPO
STEPS = (2, 2)
STOP = 3


def losses(log: str) -> dict[int, float]:
  """step -> g_loss of phase 1 or 2, from the logged scalars."""
  out = {}
  for step, value in re.findall(r"\] \[(\d+)\] train/.*?g_loss_[st]=([-0-9.e]+)", log):
    out[int(step)] = float(value)
  return out


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def env(devices: int) -> dict:
  return {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
  }


class MultiHostTest(helpers.PhantomsTestCase):
  def args(self, workdir: str) -> list[str]:
    return [
      sys.executable,
      "launch.py",
      "--config=configs/stage1.py:smoke",
      f"--workdir={workdir}",
      f"--config.data.data_dir={self.data_dir}",
      f"--config.phase1_steps={STEPS[0]}",
      f"--config.phase2_steps={STEPS[1]}",
      f"--config.stop_at_step={STOP}",
    ]

  def config(self):
    config = stage1.get_config("smoke")
    config.data.data_dir = self.data_dir
    config.phase1_steps, config.phase2_steps = STEPS
    return config

  def test_two_processes_match_one_process_with_8_devices(self):
    single = os.path.join(self.tmp, "single")
    one = subprocess.run(
      self.args(single), cwd=REPO, env=env(8), capture_output=True, text=True, check=False
    )
    self.assertEqual(one.returncode, 0, one.stderr[-3000:])

    multi = os.path.join(self.tmp, "multi")
    port = free_port()
    procs = [
      subprocess.Popen(
        [
          *self.args(multi),
          "--multihost",
          f"--coordinator_address=localhost:{port}",
          "--num_processes=2",
          f"--process_id={i}",
        ],
        cwd=REPO,
        env=env(4),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
      )
      for i in range(2)
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    for p, err in zip(procs, errors, strict=True):
      self.assertEqual(p.returncode, 0, err[-3000:])
    self.assertIn("JAX process 1/2, 4 local / 8 global devices", errors[1])

    # Same batches, masks and losses at every step (up to float reduction order)...
    want, got = losses(one.stderr), losses(errors[0])
    self.assertEqual(sorted(got), list(range(1, STOP + 1)))
    self.assertEqual(sorted(want), list(range(1, STOP + 1)))
    for step in want:
      self.assertAlmostEqual(got[step], want[step], delta=1e-5 * abs(want[step]) + 1e-6)
    # ... and the two-process checkpoint restores here (one process, 8 devices) with the same
    # parameters. Adam turns rounding noise in near-zero gradients (biases before instance norm)
    # into steps of about the learning rate, so parameters agree to lr per step, not to rounding.
    gen_s, gen_t, step = helpers.stage1_generator(multi)
    ref_s, ref_t, ref_step = helpers.stage1_generator(single)
    self.assertEqual(step, STOP)
    self.assertEqual(ref_step, STOP)
    bound = 2 * self.config().optimizer.learning_rate * STOP
    for a, b in zip(jax.tree.leaves((gen_s, gen_t)), jax.tree.leaves((ref_s, ref_t)), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=bound)
    # Only process 0 writes images and text.
    self.assertTrue(os.listdir(os.path.join(multi, "images")))


if __name__ == "__main__":
  absltest.main()
