"""Whole-config checks: each enum-like or bounded field, wherever it sits, is refused with its
dotted name; the shipped configs pass."""

from absl.testing import absltest, parameterized

from alenn_jax import additions, config_checks, pipeline_fields
from alenn_jax.errors import UserInputError
from configs import localize, pipeline, predict, rtv_demo, stage1, stage2


class ValidateTest(parameterized.TestCase):
  @parameterized.parameters(
    (stage1, "smoke"),
    (stage1, "full"),
    (stage2, "small,backbone=inception_v3,fusion=channels"),
    (localize, "smoke"),
    (pipeline, "small"),
    (pipeline, "small128"),
    (pipeline, "real"),
    (pipeline, "paper"),
    (pipeline, "paper_small"),
    (rtv_demo, "smoke"),
    (predict, None),
  )
  def test_shipped_configs_pass(self, module, arg):
    config_checks.validate(module.get_config(arg))

  @parameterized.named_parameters(
    ("backbone", stage2, "smoke", "backbone", "vgg", r"config.backbone='vgg'"),
    ("fusion", stage2, "smoke", "fusion", "enhanse", r"config.fusion='enhanse'"),
    ("fusions", pipeline, "smoke", "fusions", ("none", "x"), r"config.fusions='x'"),
    ("backbones", pipeline, "smoke", "backbones", ("vgg19", "vgg"), r"config.backbones='vgg'"),
    ("mask_weights", stage1, "smoke", "masks.weights", (1.0, 0.0), r"config.masks.weights="),
    ("mask_negative", stage1, "smoke", "masks.weights", (1.0, -1.0, 0.5), r"non-negative"),
    ("rtv", stage1, "smoke", "rtv.n_iter", 0, r"config.rtv.n_iter=0"),
    ("image_size", stage1, "smoke", "data.image_size", 0, r"config.data.image_size=0"),
    ("batch_size", stage2, "smoke", "data.batch_size", -8, r"config.data.batch_size=-8"),
    ("stride", localize, "smoke", "stride", 40, None),
    ("method", localize, "smoke", "method", "sliding", r"config.method='sliding'.*per_window"),
    ("gap", localize, "smoke", "gap", -1, None),
    ("context", localize, "smoke", "context", 9, None),
    ("group_by", pipeline, "smoke", "data.group_by", "patient", r"config.data.group_by='patient'"),
    ("selection_zero", pipeline, "smoke", "data.selection_fraction", 0.0, r"in \(0, 0.5\]"),
    ("selection_big", stage2, "smoke", "data.selection_fraction", 0.6, r"fraction=0.6 is not"),
    ("seeds", pipeline, "smoke", "seeds", 0, r"config.seeds=0 is not valid; it must be a positive"),
    ("folds", pipeline, "smoke", "localize.folds", 0, r"config.localize.folds=0 is not valid"),
    ("holdout", stage1, "smoke", "data.holdout_fold", 3, r"holdout_fold=3 .*\[0, 1\)"),
    ("padding", stage1, "smoke", "model.padding", "same", r"config.model.padding='same'"),
    ("crop_big", stage1, "smoke", "data.crop", 48, r"config.data.crop=48 .* 1 to 32 \(config"),
    ("crop_negative", pipeline, "real", "data.crop", -1, r"config.data.crop=-1 is not valid"),
    ("crop_nested", pipeline, "smoke", "stage1.data.crop", 1000, r"config.stage1.data.crop=1000"),
    ("cache", pipeline, "real", "data.cache_mb", -1.0, r"config.data.cache_mb=-1.0 is not valid"),
    ("nested", pipeline, "smoke", "stage1.masks.weights", (1.0,), r"config.stage1.masks.weights"),
    (
      "structure",
      pipeline,
      "small",
      "stage1.structure",
      "once",
      r"stage1.structure='once'.*in_step",
    ),
  )
  def test_bad_field_is_named(self, module, arg, field, value, pattern):
    config = module.get_config(arg)
    *parents, name = field.split(".")
    block = config
    for parent in parents:
      block = block[parent]
    block[name] = value
    if field == "stride":
      config.window = 32
      pattern = r"config.stride=40 is not valid; .*stride <= window \(32\)"
    if field == "gap":
      config.method = "multi_window"
      pattern = r"config.gap=-1 is not valid; .*at least 1 px apart"
    if field == "context":
      config.method, config.window = "context", 8
      pattern = r"config.context=9 is not valid; the crop must be at least window \+ 2 = 10 px"
    with self.assertRaisesRegex(UserInputError, pattern):
      config_checks.validate(config)

  def test_localize_may_inherit_image_size_and_window(self):
    config = localize.get_config("smoke")
    self.assertEqual((config.data.image_size, config.window, config.stride), (0, 0, 0))
    config_checks.validate(config)
    config.method = "context"  # context 0: the window plus the generator's receptive field.
    config_checks.validate(config)
    config.context = -1
    with self.assertRaisesRegex(UserInputError, r"config.context=-1 is not valid; the crop must"):
      config_checks.validate(config)


class PipelineSizesTest(absltest.TestCase):
  def test_small128_is_the_demo_recipe_at_128_px_with_its_own_length_padding_and_scores(self):
    demo, big = pipeline.get_config("small"), pipeline.get_config("small128")
    for config in (demo, big):  # The multi_window maps and the grid masks they are trained on.
      loc = config.localize
      self.assertEqual((loc.method, loc.window, loc.stride, loc.gap), ("multi_window", 16, 8, 16))
      self.assertEqual(config.stage1.masks.weights, (0.2, 0.2, 0.2, 0.4))
      self.assertEqual({c.num_train_steps for c in config.stage2.values()}, {300})
      self.assertNotIn("image_size", config.stage1.data)  # Ruled by config.data.image_size.
    self.assertEqual((demo.data.image_size, big.data.image_size), (64, 128))
    self.assertEqual((demo.stage1.model.padding, big.stage1.model.padding), ("zero", "reflect"))
    self.assertEqual((demo.stage1.phase1_steps, demo.stage1.phase2_steps), (200, 300))
    self.assertEqual((big.stage1.phase1_steps, big.stage1.phase2_steps), (700, 1050))
    scores = lambda loc: (loc.highpass, loc.shift, loc.smooth)
    self.assertEqual(scores(demo.localize), (-1.0, -1, -1.0))
    self.assertEqual(scores(big.localize), (4.0, 2, 2.0))

  def test_real_is_the_demo_recipe_with_32_px_windows_kept_to_the_body_and_longer_classifiers(
    self,
  ):
    demo, real = pipeline.get_config("small"), pipeline.get_config("real")
    self.assertEqual((demo.localize.foreground, real.localize.foreground), ("none", "body"))
    self.assertEqual((demo.localize.shift, real.localize.shift), (-1, 15))
    loc = real.localize
    self.assertEqual((loc.window, loc.stride, loc.gap), (32, 16, 32))
    self.assertEqual((real.stage1.masks.window, real.stage1.eval.window), (32, 32))
    config_checks.validate(real)
    with real.unlocked():  # Nothing else differs: stage 1, the other map fields, classifiers.
      real.localize.foreground, real.localize.shift = "none", -1
      loc.window, loc.stride, loc.gap = 16, 8, 16
      real.stage1.masks.window = real.stage1.eval.window = 16
      for b in pipeline.BACKBONES:
        stage = real.stage2[b]
        self.assertEqual(
          (stage.num_train_steps, stage.eval_every, stage.class_balanced), (2000, 100, True)
        )
        self.assertEqual(stage.optimizer.learning_rate, 1e-4 if b == "vgg19" else 1e-3, b)
        stage.num_train_steps, stage.eval_every, stage.class_balanced = 300, 50, False
        stage.optimizer.learning_rate = 1e-3
    self.assertEqual(real.to_dict(), demo.to_dict())

  def test_unknown_size_names_the_known_ones(self):
    with self.assertRaisesRegex(
      ValueError, r"'medium'; use smoke, small, small128, real, full, paper, paper_small"
    ):
      pipeline.get_config("medium")

  def test_paper_presets_run_the_text_with_every_addition_off(self):
    for arg, sizes_of in (("paper", "full"), ("paper_small", "small")):
      paper, base = pipeline.get_config(arg), pipeline.get_config(sizes_of)
      self.assertEqual(additions.on(paper), [], arg)
      self.assertNotEqual(additions.on(base), [], arg)
      loc = paper.localize
      self.assertEqual(
        (loc.method, loc.pad, loc.letterbox, loc.highpass, loc.shift, loc.smooth),
        ("per_window", 0, "zero", 0.0, 0, 0.0),
      )
      self.assertEqual((loc.normal_error.patch, loc.foreground, loc.folds), (0, "none", 1))
      self.assertIn(loc.stride, (0, loc.window // 2))  # Half the window (0 too): the text's d < w.
      s1 = paper.stage1
      self.assertEqual((s1.structure, s1.masks.weights), ("in_step", (0.3, 0.3, 0.4, 0.0)))
      self.assertEqual((s1.alpha, s1.beta, s1.optimizer.learning_rate), (0.8, 0.85, 1e-4))
      self.assertEqual((paper.seeds, paper.data.paper_selection), (1, True))
      self.assertEqual(paper.fusions, ("none", "enhance"))
      self.assertEqual(paper.data.batch_size, 16)
      for block in (s1, *paper.stage2.values()):
        self.assertFalse(block.data.augment.flip)
        self.assertEqual(
          {v for k, v in block.data.augment.items() if k != "flip"}, {0.0}, block.get("backbone")
        )
      # Sizes and lengths are those of the preset it is built on.
      self.assertEqual(paper.data.image_size, base.data.image_size)
      self.assertEqual(
        (s1.phase1_steps, s1.model.to_dict()),
        (base.stage1.phase1_steps, base.stage1.model.to_dict()),
      )
      for b, c in paper.stage2.items():
        self.assertEqual(c.num_train_steps, base.stage2[b].num_train_steps)
        self.assertEqual(c.optimizer.learning_rate, base.stage2[b].optimizer.learning_rate)
    self.assertEqual(pipeline.get_config("paper").stage2.vgg19.optimizer.learning_rate, 1e-4)

  def test_fields_the_pipeline_sets_are_out_of_the_stages_blocks_and_name_their_ruler(self):
    config = pipeline.get_config("small")
    self.assertNotIn("name", config.stage1.data)
    self.assertNotIn("fusion", config.stage2.vgg19)
    self.assertNotIn("split", config.localize.report)
    self.assertIn("batch_size", config.stage1.data)  # A stage's own field stays.
    self.assertEqual(pipeline_fields.ruling_field("stage2.vgg19.data.name"), "data.name")
    self.assertEqual(pipeline_fields.ruling_field("stage2.resnet50.fusion"), "fusions")
    self.assertEqual(pipeline_fields.ruling_field("stage1.masks.grid_stride"), "localize.stride")
    self.assertIsNone(pipeline_fields.ruling_field("stage1.phase1_steps"))
    # `full` gives each classifier its own image size: not ruled there.
    self.assertIn("image_size", pipeline.get_config("full").stage2.vgg19.data)


if __name__ == "__main__":
  absltest.main()
