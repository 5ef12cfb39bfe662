"""Two JAX processes on localhost (CPU, 4 devices each, JAX's CPU collectives) run the :smoke
pipeline end to end, stopped by SIGTERM during classifier training and resumed, and end with what
one process with 8 devices computes: the stage 1 generator, the LE maps and the classifiers'
predictions. Processes started with different configs, and a coordinator that never answers, stop
with one line."""

import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
from absl.testing import absltest

from alenn_jax import le_maps, pipeline, predictions
from configs import pipeline as pipeline_config
from tests import helpers

REPO = helpers.REPO
BACKBONE = "resnet50"
TIMEOUT_S = 900


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


def start(args: list[str], port: int, processes: int = 2) -> list[subprocess.Popen]:
  """`python launch.py ARGS` as `processes` processes of 4 CPU devices; stderr piped."""
  return [
    subprocess.Popen(
      [
        sys.executable,
        "launch.py",
        *args,
        "--multihost",
        f"--coordinator_address=localhost:{port}",
        f"--num_processes={processes}",
        f"--process_id={i}",
      ],
      cwd=REPO,
      env=env(4),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(processes)
  ]


def finish(procs) -> list[str]:
  return [p.communicate(timeout=TIMEOUT_S)[1] for p in procs]


class MultiHostPipelineTest(helpers.PhantomsTestCase):
  def config(self):
    config = pipeline_config.get_config("smoke")
    config.data.data_dir = self.data_dir
    config.backbones = (BACKBONE,)
    return config

  def args(self, workdir: str) -> list[str]:
    return [
      "--config=configs/pipeline.py:smoke",
      f"--workdir={workdir}",
      f"--config.data.data_dir={self.data_dir}",
      f"--config.backbones=('{BACKBONE}',)",
      "--alsologtostderr",
    ]

  def test_two_processes_stopped_and_resumed_end_as_one_process_with_8_devices(self):
    single = os.path.join(self.tmp, "single")
    pipeline.run(self.config(), single)  # This process: 8 CPU devices (conftest).

    multi = os.path.join(self.tmp, "multi")
    procs = start(self.args(multi), free_port())
    # SIGTERM to both processes once the first classifier has taken a step.
    classifier_started, log = False, []
    for line in procs[0].stderr:
      log.append(line)
      classifier_started |= "stage 2b" in line and "starting" in line
      if classifier_started and "] [1] train/" in line:
        for p in procs:
          p.send_signal(signal.SIGTERM)
        break
    errors = finish(procs)
    errors[0] = "".join(log) + errors[0]
    self.assertIn("JAX process 1/2, 4 local / 8 global devices", errors[1])
    for p, err in zip(procs, errors, strict=True):
      self.assertEqual(p.returncode, 128 + signal.SIGTERM, err[-3000:])
      # Both stop at the step JAX's preemption sync point agreed on.
      self.assertIn("preempted: stopped by SIGTERM at step", err)
    stopped = {e.split("stopped by SIGTERM at step ")[1].split(";")[0] for e in errors}
    self.assertLen(stopped, 1)

    procs = start(self.args(multi), free_port())
    errors = finish(procs)
    for p, err in zip(procs, errors, strict=True):
      self.assertEqual(p.returncode, 0, err[-3000:])
    self.assertIn("stage 2a: LE maps: already done, skipped", errors[0])
    self.assertIn(f"resumed from step {stopped.pop()}", errors[0])

    # Stage 1: the same batches and masks; Adam turns rounding noise in near-zero gradients
    # (biases before instance norm) into steps of about the learning rate, so the parameters
    # agree to the learning rate per step, not to rounding.
    stage1 = self.config().stage1
    gen_s, gen_t, step = helpers.stage1_generator(os.path.join(multi, "stage1"))
    ref_s, ref_t, ref_step = helpers.stage1_generator(os.path.join(single, "stage1"))
    self.assertEqual(step, ref_step)
    bound = 2 * stage1.optimizer.learning_rate * step
    for a, b in zip(jax.tree.leaves((gen_s, gen_t)), jax.tree.leaves((ref_s, ref_t)), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=bound)

    # The LE maps: every image of every split once, equal within 1e-3 (stored as float16).
    for split in ("train", "validation", "test"):
      got = le_maps.read_difference_maps(os.path.join(multi, "localize"), split)
      want = le_maps.read_difference_maps(os.path.join(single, "localize"), split)
      self.assertEqual(sorted(got), sorted(want))
      for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-3, err_msg=f"{split} {key}")
    self.assertAlmostEqual(
      le_maps.read_scale(os.path.join(multi, "localize")),
      le_maps.read_scale(os.path.join(single, "localize")),
      delta=1e-3,
    )

    # The classifiers, one of them stopped and resumed: the same predictions within 1e-4.
    for fusion in self.config().fusions:
      name = os.path.join("classifiers", f"{BACKBONE}_{fusion}")
      got = predictions.read_predictions(predictions.predictions_path(f"{multi}/{name}", "test"))
      want = predictions.read_predictions(predictions.predictions_path(f"{single}/{name}", "test"))
      self.assertEqual(list(got["ids"]), list(want["ids"]))
      np.testing.assert_allclose(got["probs"], want["probs"], rtol=0, atol=1e-4, err_msg=fusion)

    # Process 0 wrote the markers and the report.
    for stage in ("stage1", "localize", f"classifiers/{BACKBONE}_none", "report"):
      self.assertIsNotNone(pipeline.read_done(os.path.join(multi, stage)), stage)
    self.assertTrue(os.path.exists(os.path.join(multi, "report", "report.md")))

  def test_processes_started_with_different_configs_stop_naming_the_field(self):
    workdir = os.path.join(self.tmp, "differ")
    port = free_port()
    resamples = self.config().bootstrap_resamples
    procs = []  # Process 1 has one override more than process 0.
    for i, extra in enumerate(([], [f"--config.bootstrap_resamples={resamples // 2}"])):
      procs.append(
        subprocess.Popen(
          [
            sys.executable,
            "launch.py",
            *self.args(workdir),
            *extra,
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
      )
    errors = finish(procs)
    for p, err in zip(procs, errors, strict=True):
      self.assertEqual(p.returncode, 2, err[-3000:])
      self.assertRegex(
        err,
        r"error: --multihost: the processes were started with different jobs: "
        rf"config.bootstrap_resamples={resamples // 2} on process 1, {resamples} on process 0; "
        "start every process",
      )
    self.assertFalse(os.path.exists(workdir))  # Nothing written.

  def test_a_coordinator_that_never_answers_is_named(self):
    port = free_port()  # Nobody listens there.
    workdir = os.path.join(self.tmp, "alone")
    result = subprocess.run(
      [
        sys.executable,
        "launch.py",
        *self.args(workdir),
        "--multihost",
        f"--coordinator_address=localhost:{port}",
        "--num_processes=2",
        "--process_id=1",
        "--multihost_timeout=2",
      ],
      cwd=REPO,
      env=env(4),
      capture_output=True,
      text=True,
      check=False,
      timeout=120,
    )
    self.assertEqual(result.returncode, 2, result.stderr[-3000:])
    self.assertIn(
      f"error: --coordinator_address=localhost:{port}: no coordinator answered there within 2 s",
      result.stderr,
    )
    self.assertFalse(os.path.exists(workdir))


if __name__ == "__main__":
  absltest.main()
