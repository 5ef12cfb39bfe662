"""Bad input everywhere a user can type something: each gets a one-line error naming the field or
file and what to do (exit status 2 through launch.py, no traceback), as the README's
troubleshooting table lists. (A batch not divisible by the devices, labels that select nothing
and a missing split are tested in input_pipeline_test.py; an unknown trainer or mode in
launch_test.py.)"""

import os

import jax
from absl.testing import absltest, parameterized

from alenn_jax import checkpointing, input_pipeline, sharding
from alenn_jax import train_inpainting as ti
from alenn_jax.classification import classifier_setup, train_classifier
from alenn_jax.errors import UserInputError
from configs import stage1, stage2
from tests import helpers

REPO = helpers.REPO


class LaunchErrorsTest(parameterized.TestCase):
  def assert_one_line_error(self, result, *needles):
    self.assertEqual(result.returncode, 2, result.stderr[-2000:])
    self.assertNotIn("Traceback", result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    self.assertLen(lines, 1, result.stderr[-2000:])
    for needle in needles:
      self.assertIn(needle, lines[0])

  def test_misspelt_field_suggests_the_right_one(self):
    result = helpers.launch_in_process(
      "--config=configs/stage1.py:smoke", "--workdir=/tmp/unused", "--config.data.batch_sise=8"
    )
    self.assert_one_line_error(result, "--config.data.batch_sise", 'Did you mean "batch_size"')

  def test_wrong_type_names_the_field(self):
    result = helpers.launch_in_process(
      "--config=configs/stage1.py:smoke", "--workdir=/tmp/unused", "--config.data.batch_size=abc"
    )
    self.assert_one_line_error(result, "--config.data.batch_size=abc", "invalid literal")

  def test_unwritable_workdir_is_named(self):
    tmp = self.create_tempdir().full_path
    blocker = os.path.join(tmp, "a_file")
    with open(blocker, "w") as f:
      f.write("x")
    workdir = os.path.join(blocker, "run")
    result = helpers.launch_in_process("--config=configs/rtv_demo.py:smoke", f"--workdir={workdir}")
    self.assert_one_line_error(result, f"--workdir={workdir} is not a writable directory")

  @parameterized.named_parameters(
    ("argument_backbone", "configs/stage2.py:smoke,backbone=alexnet", (), "backbone='alexnet'"),
    ("argument_fusion", "configs/stage2.py:smoke,fusion=enhanse", (), "fusion='enhanse'"),
    ("argument_size", "configs/stage1.py:tiny", (), "unknown argument 'tiny'"),
    ("override_fusion", "configs/stage2.py:smoke", ("--config.fusion=enhanse",), "fusion="),
    (
      "nested_backbone",
      "configs/pipeline.py:smoke",
      ("--config.stage2.vgg19.backbone=alexnet",),
      "config.stage2.vgg19.backbone='alexnet'",
    ),
    (
      "localize_stride",
      "configs/localize.py:smoke",
      ("--config.window=8", "--config.stride=9"),
      "config.stride=9",
    ),
  )
  def test_enum_like_fields_are_one_line(self, config, overrides, needle):
    result = helpers.launch_in_process(
      f"--config={config}", "--workdir=/tmp/unused_enum", *overrides
    )
    self.assert_one_line_error(result, needle)

  def test_verbosity_1_keeps_the_traceback(self):
    # A real process: the exit status and the text a shell sees (the others run in-process).
    result = helpers.launch(
      "--config=configs/rtv_demo.py:smoke",
      "--workdir=/tmp/unused_rtv",
      "--config.images=('/nonexistent.png',)",
      "--verbosity=1",
    )
    self.assertEqual(result.returncode, 2)
    self.assertIn("Traceback", result.stderr)


class TrainerErrorsTest(helpers.PhantomsTestCase):
  def test_image_size_not_divisible_by_the_generator_stride(self):
    config = stage1.get_config("smoke")
    static = ti.GanSetup.from_config(config)
    with self.assertRaisesRegex(
      UserInputError, r"config.data.image_size=34 is not divisible by 2\*\*config.model.depth = 4"
    ):
      ti.create_train_state(config, static, jax.random.PRNGKey(0), 34)

  def test_image_too_small_for_a_backbone(self):
    config = stage2.get_config("full,backbone=inception_v3")
    config.data.image_size = 64
    static = classifier_setup.ClassifierSetup.from_config(config)
    with self.assertRaisesRegex(
      UserInputError, "image_size=64 is too small for backbone 'inception_v3'.*small_input=True"
    ):
      train_classifier.create_train_state(config, static, jax.random.PRNGKey(0), 64)

  def test_classifier_needs_both_classes(self):
    config = stage2.get_config("smoke,backbone=resnet50")
    config.data.data_dir = self.data_dir
    config.data.labels = (0,)
    with self.assertRaisesRegex(UserInputError, "0 abnormal images; a classifier needs both"):
      train_classifier.train_and_evaluate(config, os.path.join(self.tmp, "one_class"))

  def test_unknown_dataset_is_named(self):
    config = stage1.get_config("smoke").data
    config.data_dir = self.data_dir
    config.name = "murra/xr_elbow"
    with self.assertRaisesRegex(UserInputError, "unknown dataset 'murra/xr_elbow'; known:"):
      input_pipeline.train_iterator(config, sharding.make_mesh())

  def test_changed_shapes_are_refused_then_forced_without_losing_the_old_run(self):
    workdir = os.path.join(self.tmp, "changed")
    # VGG-19: the quickest of the four to compile; the shapes check is the same for every one.
    config = stage2.get_config("smoke,backbone=vgg19")
    config.data.data_dir = self.data_dir
    config.stop_at_step = 2
    train_classifier.train_and_evaluate(config, workdir)
    config.model.width = 1 / 8
    with self.assertRaisesRegex(
      UserInputError, r"config.model.width=0.125 differs from the run already in .*force_restart"
    ):
      train_classifier.train_and_evaluate(config, workdir)
    # Fields that keep shapes may change.
    config.model.width = 1 / 16
    config.num_train_steps = 3
    config.stop_at_step = 3
    train_classifier.train_and_evaluate(config, workdir)
    config.model.width = 1 / 8
    config.force_restart = True
    train_classifier.train_and_evaluate(config, workdir)
    moved = [n for n in os.listdir(workdir) if n.startswith("checkpoints.replaced-")]
    self.assertLen(moved, 1)
    self.assertIn("3", os.listdir(os.path.join(workdir, moved[0])))

  def test_check_config_ignores_fields_that_keep_shapes(self):
    workdir = self.create_tempdir().full_path
    config = stage1.get_config("smoke")
    checkpointing.check_config(config, workdir, ti.STAGE1_SHAPE_FIELDS)
    config.phase1_steps = 99
    config.optimizer.learning_rate = 0.5
    checkpointing.check_config(config, workdir, ti.STAGE1_SHAPE_FIELDS)
    config.data.image_size = 64
    with self.assertRaisesRegex(UserInputError, "config.data.image_size=64 differs"):
      checkpointing.check_config(config, workdir, ti.STAGE1_SHAPE_FIELDS)


if __name__ == "__main__":
  absltest.main()
