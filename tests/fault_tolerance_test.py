"""Preemption and crashes: SIGTERM saves and resumes to the same params; a process killed while a
checkpoint is being written never replaces the last good one."""

import os
import signal
import subprocess
import sys
import textwrap

from absl.testing import absltest

from configs import stage1
from tests import helpers

REPO = helpers.REPO
ENV = {
  **os.environ,
  "JAX_PLATFORMS": "cpu",
  "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
}
STEPS = (3, 3)  # phase 1, phase 2
STOP = 5  # Runs stop here (checkpointed), before Table 1, which the test does not need.


def stage1_args(workdir: str, data_dir: str) -> list[str]:
  return [
    "launch.py",
    "--config=configs/stage1.py:smoke",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    f"--config.phase1_steps={STEPS[0]}",
    f"--config.phase2_steps={STEPS[1]}",
    f"--config.stop_at_step={STOP}",
    "--config.checkpoint_every=100",  # Only the phase end, the last step and the preemption.
    "--config.eval_every=100",
    "--alsologtostderr",
  ]


def run_stage1(workdir: str, data_dir: str):
  """The stage 1 run of `stage1_args` to its end, as a subprocess."""
  return helpers.launch(*stage1_args(workdir, data_dir)[1:], env=ENV)


def smoke_config(data_dir: str):
  config = stage1.get_config("smoke")
  config.data.data_dir = data_dir
  config.phase1_steps, config.phase2_steps = STEPS
  return config


def steps_in(workdir: str) -> list[int]:
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


@helpers.slow  # Processes killed and signalled mid-run.
class FaultToleranceTest(helpers.PhantomsTestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.reference = os.path.join(cls.tmp, "reference")
    done = run_stage1(cls.reference, cls.data_dir)
    assert done.returncode == 0, done.stderr[-3000:]

  def final_generator(self, workdir):
    return helpers.stage1_generator(workdir)

  def test_sigterm_saves_stops_and_the_resumed_run_matches(self):
    workdir = os.path.join(self.tmp, "preempted")
    proc = subprocess.Popen(
      [sys.executable, *stage1_args(workdir, self.data_dir)],
      cwd=REPO,
      env=ENV,
      stderr=subprocess.PIPE,
      stdout=subprocess.DEVNULL,
      text=True,
    )
    log = []
    for line in proc.stderr:  # Wait until training is under way (per-step scalars, log_every=1).
      log.append(line)
      if "] [2] train/" in line:
        proc.send_signal(signal.SIGTERM)
        break
    _, rest = proc.communicate(timeout=300)
    log.append(rest)
    text = "".join(log)
    self.assertEqual(proc.returncode, 128 + signal.SIGTERM, text[-3000:])
    self.assertIn("preempted: stopped by SIGTERM at step", text)
    stopped = steps_in(workdir)[-1]
    self.assertBetween(stopped, 2, STOP - 1)

    resumed = run_stage1(workdir, self.data_dir)
    self.assertEqual(resumed.returncode, 0, resumed.stderr[-3000:])
    self.assertIn(f"resumed from step {stopped}", resumed.stderr)
    gen_s, gen_t, step = self.final_generator(workdir)
    ref_s, ref_t, ref_step = self.final_generator(self.reference)
    self.assertEqual(step, ref_step)
    self.assertTrue(helpers.leaves_equal(gen_s, ref_s))
    self.assertTrue(helpers.leaves_equal(gen_t, ref_t))

  def test_kill_during_a_save_keeps_the_last_good_checkpoint(self):
    workdir = os.path.join(self.tmp, "killed")
    # The process dies (SIGKILL, no clean-up) when orbax is about to commit the checkpoint of the
    # last step, after its files are written to a temporary folder.
    script = textwrap.dedent(
      f"""
      import os, signal, sys
      from orbax.checkpoint._src.path import atomicity
      original = atomicity.AtomicRenameTemporaryPath.finalize
      async def finalize(self, *args, **kwargs):
        if os.path.basename(str(self.get_final())) == "{STOP}":
          os.kill(os.getpid(), signal.SIGKILL)
        return await original(self, *args, **kwargs)
      atomicity.AtomicRenameTemporaryPath.finalize = finalize
      sys.argv = {stage1_args(workdir, self.data_dir)!r}
      sys.path.insert(0, {REPO!r})
      import runpy
      runpy.run_path("launch.py", run_name="__main__")
      """
    )
    killed = subprocess.run(
      [sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True
    )
    self.assertEqual(killed.returncode, -signal.SIGKILL, killed.stderr[-3000:])
    self.assertEqual(steps_in(workdir)[-1], STEPS[0])  # The half-written one is not a step.
    _, _, step = self.final_generator(workdir)
    self.assertEqual(step, STEPS[0])
    resumed = run_stage1(workdir, self.data_dir)
    self.assertEqual(resumed.returncode, 0, resumed.stderr[-3000:])
    gen_s, gen_t, step = self.final_generator(workdir)
    ref_s, ref_t, _ = self.final_generator(self.reference)
    self.assertEqual(step, STOP)
    self.assertTrue(helpers.leaves_equal(gen_s, ref_s))
    self.assertTrue(helpers.leaves_equal(gen_t, ref_t))


if __name__ == "__main__":
  absltest.main()
