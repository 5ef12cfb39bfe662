"""The entry point: dispatch, clear errors for bad trainers/modes, and the demo job end to end."""

import os

from absl.testing import absltest

from tests import helpers

REPO = os.path.join(os.path.dirname(__file__), "..")


class LaunchTest(absltest.TestCase):
  def test_rtv_demo_smoke_writes_structures_and_summary(self):
    workdir = self.create_tempdir().full_path
    result = helpers.launch_in_process("--config=configs/rtv_demo.py:smoke", f"--workdir={workdir}")
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    out = os.path.join(workdir, "rtv")
    self.assertTrue(os.path.exists(os.path.join(out, "structure_texture.png")))
    self.assertLen([f for f in os.listdir(out) if f.endswith("_structure.png")], 2)
    with open(os.path.join(out, "summary.txt")) as f:
      summary = f.read()
    self.assertIn("images: 2 at 64x64", summary)
    self.assertIn("CG iterations", summary)

  @helpers.slow  # Three launches, each a new process: the cache is read from its environment.
  def test_compilation_cache_in_the_workdir_unless_the_environment_names_one_none_is_off(self):
    workdir = self.create_tempdir().full_path
    args = ("--config=configs/rtv_demo.py:smoke", f"--workdir={workdir}")
    result = helpers.launch(*args, env={"JAX_COMPILATION_CACHE_DIR": None})
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertNotEmpty(os.listdir(os.path.join(workdir, "compilation_cache")))
    shared, workdir = self.create_tempdir().full_path, self.create_tempdir().full_path
    args = ("--config=configs/rtv_demo.py:smoke", f"--workdir={workdir}")
    result = helpers.launch(*args, env={"JAX_COMPILATION_CACHE_DIR": shared})
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertNotEmpty(os.listdir(shared))
    self.assertFalse(os.path.exists(os.path.join(workdir, "compilation_cache")))
    shared, workdir = self.create_tempdir().full_path, self.create_tempdir().full_path
    args = (
      "--config=configs/rtv_demo.py:smoke",
      f"--workdir={workdir}",
      "--compilation_cache=none",
    )
    result = helpers.launch(*args, env={"JAX_COMPILATION_CACHE_DIR": shared})
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertEmpty(os.listdir(shared))  # `none` turns off the environment's cache too.
    self.assertFalse(os.path.exists(os.path.join(workdir, "compilation_cache")))

  def test_unknown_trainer_lists_valid_ones(self):
    result = helpers.launch_in_process(
      "--config=configs/rtv_demo.py:smoke",
      "--workdir=/tmp/unused",
      "--config.trainer=nope",
    )
    self.assertNotEqual(result.returncode, 0)
    self.assertIn("config.trainer='nope'", result.stderr)
    self.assertIn(
      "valid trainers: classifier, inpainting, localize, pipeline, predict, rtv_demo.",
      result.stderr,
    )

  def test_unknown_mode_lists_valid_ones(self):
    result = helpers.launch_in_process(
      "--config=configs/rtv_demo.py:smoke", "--workdir=/tmp/unused", "--mode=fly"
    )
    self.assertNotEqual(result.returncode, 0)
    self.assertIn("--mode='fly'", result.stderr)
    self.assertIn("valid modes: run", result.stderr)

  def test_misspelt_config_field_fails(self):
    result = helpers.launch_in_process(
      "--config=configs/rtv_demo.py:smoke", "--workdir=/tmp/unused", "--config.imgs=1"
    )
    self.assertNotEqual(result.returncode, 0)
    self.assertIn("imgs", result.stderr)

  def test_unreadable_image_is_named(self):
    workdir = self.create_tempdir().full_path
    missing = os.path.join(workdir, "missing.png")
    result = helpers.launch_in_process(
      "--config=configs/rtv_demo.py:smoke",
      f"--workdir={workdir}",
      f"--config.images=('{missing}',)",
    )
    self.assertEqual(result.returncode, 2)
    self.assertIn(f"error: config.images: cannot read image '{missing}'", result.stderr)
    self.assertNotIn("Traceback", result.stderr)

  def test_stage2_config_argument_errors_name_the_token(self):
    result = helpers.launch_in_process(
      "--config=configs/stage2.py:smoke,backbone=alexnet", "--workdir=/tmp/unused"
    )
    self.assertNotEqual(result.returncode, 0)
    self.assertIn(
      "backbone='alexnet'; use one of vgg19, resnet50, densenet121, inception_v3", result.stderr
    )

  def test_missing_pretrained_file_is_one_line(self):
    workdir = self.create_tempdir().full_path
    result = helpers.launch_in_process(
      "--config=configs/stage2.py:smoke,backbone=resnet50",
      f"--workdir={workdir}",
      f"--config.data.data_dir={workdir}/data",
      "--config.model.pretrained=/nonexistent/w.npz",
    )
    self.assertEqual(result.returncode, 2)
    self.assertIn(
      "error: config.model.pretrained='/nonexistent/w.npz': no such file", result.stderr
    )
    self.assertNotIn("Traceback", result.stderr)


if __name__ == "__main__":
  absltest.main()
