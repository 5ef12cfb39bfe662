"""Stage 2b trainer: the step function, and the :smoke trainer end to end on 8 emulated devices,
without LE and with LE maps written in the localize job's format (the pipeline test runs them on
maps a trained generator made)."""

import csv
import functools
import json
import os
import shutil

import chex
import jax
import numpy as np
from absl.testing import absltest, parameterized

from alenn_jax import checkpointing, input_pipeline, sharding
from alenn_jax import fusion as fusion_lib
from alenn_jax.classification import classifier_setup, inference, train_classifier
from alenn_jax.errors import UserInputError
from configs import stage2
from tests import helpers


class ClassifierTest(helpers.PhantomsTestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # A stage 2a workdir's maps: every split's examples, in the localize job's format.
    cls.le_workdir = os.path.join(cls.tmp, "stage2a")
    data = stage2.get_config("smoke").data
    data.data_dir = cls.data_dir
    helpers.write_le_workdir(cls.le_workdir, data)

  def config(self, backbone="resnet50", fusion="none"):
    config = stage2.get_config(f"smoke,backbone={backbone},fusion={fusion}")
    config.data.data_dir = self.data_dir
    config.le_workdir = self.le_workdir
    return config

  def test_train_step_compiles_once_and_learns(self):
    config = self.config(fusion="enhance")
    static = classifier_setup.ClassifierSetup.from_config(config)
    mesh = sharding.make_mesh()
    replicated = sharding.replicated(mesh)
    state = jax.device_put(
      train_classifier.create_train_state(config, static, jax.random.PRNGKey(0), 32), replicated
    )
    le = inference.load_le_maps(config, self.tmp, "train")
    batch = next(input_pipeline.train_iterator(config.data, mesh, le_maps=le))
    numeric = {k: batch[k] for k in input_pipeline.numeric_keys(batch)}
    self.assertEqual(numeric["le"].shape, (8, 32, 32, 1))

    @chex.assert_max_traces(n=1)
    def step(state, batch, rng):
      return train_classifier.train_step(state, batch, rng, static=static)

    chex.clear_trace_counter()
    step = jax.jit(step)
    before = state.params
    losses = []
    for i in range(3):
      state, metrics = step(state, numeric, jax.random.PRNGKey(i))
      losses.append(float(metrics["loss"]))
    self.assertTrue(all(np.isfinite(losses)))
    self.assertLess(losses[-1], losses[0])  # Same batch three times: the loss must fall.
    self.assertFalse(helpers.leaves_equal(before, state.params))
    self.assertEqual(int(state.step), 3)

  def test_fused_outside_the_step_every_fusion_compiles_the_same_program(self):
    # What lets the persistent compilation cache serve `enhance` with `none`'s step (and every
    # seed's), and fusing outside the step gives the same inputs as fusing inside it.
    mesh = sharding.make_mesh()
    rng = np.random.default_rng(0)
    batch = {
      "image": rng.uniform(-1, 1, (8, 32, 32, 1)).astype(np.float32),
      "le": rng.uniform(0, 1, (8, 32, 32, 1)).astype(np.float32),
      "label": np.arange(8) % 2,
      "weight": np.ones(8, np.float32),
    }
    programs = []
    for fusion in ("none", "enhance"):
      config = self.config(fusion=fusion)
      config.seed = len(programs)  # Another seed: another initial state, the same program.
      static = classifier_setup.ClassifierSetup.from_config(config)
      state = train_classifier.create_train_state(
        config, static, jax.random.PRNGKey(config.seed), 32
      )
      fed = inference.fused_batch(inference.make_fuse(static, mesh), batch)
      np.testing.assert_allclose(
        fed["inputs"], classifier_setup.model_inputs(static, batch), atol=1e-6
      )
      lowered = jax.jit(functools.partial(train_classifier.train_step, static=static)).lower(
        state, fed, jax.random.PRNGKey(0)
      )
      programs.append(lowered.as_text(debug_info=False))
    self.assertEqual(programs[0], programs[1])

  @parameterized.parameters("none", "enhance", "channels")
  def test_smoke_trains_writes_table2_and_eval_reproduces_validation(self, fusion):
    config = self.config(fusion=fusion)
    workdir = os.path.join(self.tmp, f"run_{fusion}")
    state = train_classifier.train_and_evaluate(config, workdir)
    report = os.path.join(workdir, "report")
    for name in ("table2.csv", "fig4_roc.png", "metrics_test.json", "predictions_test.csv"):
      self.assertTrue(os.path.exists(os.path.join(report, name)), name)
    with open(os.path.join(report, "table2.csv")) as f:
      rows = list(csv.DictReader(f))
    self.assertLen(rows, 1)
    self.assertEqual(rows[0]["Backbone"], "ResNet-50")
    self.assertEqual(rows[0]["With LE"], "no" if fusion == "none" else f"yes ({fusion})")
    for key in ("Accuracy", "Precision", "Recall", "F1", "Kappa", "AUC"):
      self.assertTrue(np.isfinite(float(rows[0][key])), key)
    self.assertEqual(int(rows[0]["n"]), 16)  # eval.max_batches=2 of 8.

    # The hand-over: the best classifier from the workdir's stored config alone; --mode=eval on it
    # reproduces the validation numbers stored with it.
    best = checkpointing.load_classifier(workdir)
    self.assertEqual(best.config.backbone, "resnet50")
    self.assertEqual(best.config.fusion, fusion)
    config.eval.split = "validation"
    scores = train_classifier.evaluate_checkpoint(config, workdir)
    self.assertEqual(json.loads(json.dumps(scores)), best.metrics)
    with open(os.path.join(report, "metrics_validation.json")) as f:
      self.assertEqual(json.load(f)["step"], best.step)
    # The latest checkpoint's weights, without its optimizer state, equal the trained state's.
    latest = checkpointing.load_classifier(workdir, "latest")
    self.assertEqual(latest.step, 4)
    self.assertTrue(helpers.leaves_equal(latest.params, state.params))
    self.assertTrue(helpers.leaves_equal(latest.batch_stats, state.batch_stats))
    # Its probabilities are the evaluation's.
    maps = inference.load_le_maps(config, workdir, "validation")
    batch = next(
      iter(
        input_pipeline.eval_iterator(
          config.data, sharding.make_mesh(), "validation", labels=(0, 1), le_maps=maps
        )
      )
    )
    inputs = fusion_lib.fuse(batch["image"], batch.get("le"), fusion, config.gamma)
    np.testing.assert_allclose(
      np.asarray(best.probabilities(inputs)),
      np.asarray(
        inference.eval_step(
          classifier_setup.ClassifierSetup.from_config(config), best.params, best.batch_stats, batch
        )
      ),
      atol=1e-6,
    )
    with self.assertRaisesRegex(UserInputError, "use 'best', 'latest' or one of the steps"):
      checkpointing.load_classifier(workdir, 3)

  def test_selection_prefers_kappa_then_auc(self):
    evaluations = [  # (step, image scores): a model calling everything normal, then learning.
      (50, {"kappa": 0.0, "auc": 0.41}),
      (100, {"kappa": 0.0, "auc": 0.69}),
      (150, {"kappa": 0.32, "auc": 0.66}),
      (200, {"kappa": 0.32, "auc": 0.75}),
      (250, {"kappa": 0.12, "auc": 0.80}),
    ]
    best = max(evaluations, key=lambda e: train_classifier.selection_key(e[1]))
    self.assertEqual(best[0], 200)
    best = max(evaluations[:2], key=lambda e: train_classifier.selection_key(e[1]))
    self.assertEqual(best[0], 100)  # Not the first of the kappa-0 ties.

  def test_resumed_run_ends_with_the_same_params(self):
    config = self.config()
    whole = train_classifier.train_and_evaluate(config, os.path.join(self.tmp, "whole"))
    config.stop_at_step = 2
    split_dir = os.path.join(self.tmp, "split")
    train_classifier.train_and_evaluate(config, split_dir)
    self.assertFalse(os.path.exists(os.path.join(split_dir, "report", "table2.csv")))
    config.stop_at_step = -1
    resumed = train_classifier.train_and_evaluate(config, split_dir)
    self.assertTrue(helpers.leaves_equal(whole.params, resumed.params))
    self.assertTrue(helpers.leaves_equal(whole.batch_stats, resumed.batch_stats))

  def test_missing_le_map_names_the_id_and_workdir(self):
    partial = os.path.join(self.tmp, "partial")
    shutil.copytree(os.path.join(self.le_workdir, "le_maps"), os.path.join(partial, "le_maps"))
    os.remove(os.path.join(partial, "le_maps", "train", "shard_00000.npz"))
    config = self.config(fusion="enhance")
    config.le_workdir = partial
    with self.assertRaisesRegex(UserInputError, f"no LE map for example 'train/.*{partial}"):
      train_classifier.train_and_evaluate(config, os.path.join(self.tmp, "never"))

  def test_eval_without_checkpoints_is_a_clear_error(self):
    empty = os.path.join(self.tmp, "empty")
    with self.assertRaisesRegex(UserInputError, f"{empty} holds no classifier run"):
      train_classifier.evaluate_checkpoint(self.config(), empty)


if __name__ == "__main__":
  absltest.main()
