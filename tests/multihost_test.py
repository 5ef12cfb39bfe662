"""`--multihost` start-up on localhost (CPU, JAX's CPU collectives): processes started with
different jobs, and a coordinator that never answers, stop with one line and write nothing. The
smoke pipeline as two processes is tested in pipeline_test."""

import os
import subprocess
import sys

from absl.testing import absltest

from alenn_jax import multihost
from alenn_jax.errors import UserInputError
from configs import pipeline as pipeline_config
from tests import helpers


class FirstDifferenceTest(absltest.TestCase):
  def test_names_the_first_differing_dotted_field_in_sorted_order(self):
    a = {"config": {"data": {"name": "x", "batch_size": 8}, "seed": 0}, "mode": "train"}
    b = {"config": {"data": {"name": "y", "batch_size": 16}, "seed": 0}, "mode": "train"}
    self.assertEqual(multihost.first_difference(a, b), "config.data.batch_size")
    self.assertIsNone(multihost.first_difference(a, a))

  def test_a_field_only_one_side_has_is_a_difference(self):
    a = {"config": {"seed": 0}}
    b = {"config": {"seed": 0, "extra": None}}
    self.assertEqual(multihost.first_difference(a, b), "config.extra")
    self.assertEqual(multihost.first_difference(b, a), "config.extra")

  def test_on_one_process_agreement_and_barriers_are_no_ops(self):
    self.assertEqual(multihost.agreed(3), 3)
    multihost.barrier("nothing to wait for")
    multihost.check_same_job({"config": {}})


# Process 0 waits at a barrier that process 1 never reaches (it sleeps, then ends).
_BARRIER_JOB = """
import sys, time
import jax
port, pid = sys.argv[1], int(sys.argv[2])
jax.config.update("jax_num_cpu_devices", 1)
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
from alenn_jax import multihost
from alenn_jax.errors import UserInputError
multihost.set_barrier_timeout(2)
multihost.barrier("both start")
if pid == 0:
  try:
    multihost.barrier("pipeline: stage 2a: LE maps finished")
  except multihost.BarrierTimeout as e:
    print(f"error: {e}", flush=True)
    sys.exit(2)
time.sleep(8)
"""


class BarrierTimeoutTest(absltest.TestCase):
  def test_a_process_left_waiting_names_the_barrier_and_its_stage(self):
    port = helpers.free_port()
    procs = [
      subprocess.Popen(
        [sys.executable, "-c", _BARRIER_JOB, str(port), str(k)],
        cwd=helpers.REPO,
        env=helpers.cpu_env(1),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
      )
      for k in (0, 1)
    ]
    out = [p.communicate(timeout=120)[0] for p in procs]
    self.assertEqual([p.returncode for p in procs], [2, 0], out)
    self.assertRegex(
      out[0],
      r"error: --multihost: process 0 waited [23] s at barrier 'pipeline: stage 2a: LE maps "
      r"finished' and not every process reached it \(DEADLINE_EXCEEDED.*raise --barrier_timeout "
      r"\(now 2 s\)",
    )

  def test_the_timeout_must_be_a_second_or_more(self):
    with self.assertRaisesRegex(UserInputError, r"--barrier_timeout=0.5: use a number of seconds"):
      multihost.set_barrier_timeout(0.5)


class MultiHostStartTest(helpers.PhantomsTestCase):
  def args(self, workdir: str) -> list[str]:
    return [
      "--config=configs/pipeline.py:smoke",
      f"--workdir={workdir}",
      f"--config.data.data_dir={self.data_dir}",
    ]

  def test_processes_started_with_different_configs_stop_naming_the_field(self):
    workdir = os.path.join(self.tmp, "differ")
    resamples = pipeline_config.get_config("smoke").bootstrap_resamples
    # Process 1 has one override more than process 0.
    procs = helpers.start_processes(
      [self.args(workdir), [*self.args(workdir), f"--config.bootstrap_resamples={resamples // 2}"]],
      helpers.free_port(),
    )
    errors = [p.communicate(timeout=300)[1] for p in procs]
    for p, err in zip(procs, errors, strict=True):
      self.assertEqual(p.returncode, 2, err[-3000:])
      self.assertIn(
        "error: --multihost: the processes were started with different jobs: "
        f"config.bootstrap_resamples={resamples // 2} on process 1, {resamples} on process 0; "
        "start every process with the same --config, overrides, --workdir and --mode.",
        err,
      )
    self.assertFalse(os.path.exists(workdir))  # Nothing written.

  def test_a_coordinator_that_never_answers_is_named(self):
    port = helpers.free_port()  # Nobody listens there.
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
      cwd=helpers.REPO,
      env=helpers.cpu_env(4),
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
