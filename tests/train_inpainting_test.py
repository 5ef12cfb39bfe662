"""Stage 1 trainer: the step function, and the :smoke trainer end to end on 8 emulated devices."""

import csv
import functools
import math
import os

import chex
import jax
import numpy as np
from absl.testing import absltest

from alenn_jax import checkpointing, input_pipeline, rtv, sharding
from alenn_jax import train_inpainting as ti
from alenn_jax.errors import UserInputError
from configs import stage1
from tests import helpers


def smoke_config(data_dir: str):
  config = stage1.get_config("smoke")
  config.data.data_dir = data_dir
  return config


class TrainStepTest(absltest.TestCase):
  def test_compiles_once_metrics_finite_and_only_the_phase_nets_change(self):
    config = smoke_config("/unused")
    static = ti.GanSetup.from_config(config)
    mesh = sharding.make_mesh()
    state = ti.create_train_state(config, static, jax.random.PRNGKey(0), 32)
    state = jax.device_put(state, sharding.replicated(mesh))
    images = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 1)).astype(np.float32)
    batch = {"image": jax.device_put(images, sharding.batch_sharding(mesh))}
    for phase, trained, frozen in (
      (1, ("gen_s", "disc_s"), ("gen_t", "disc_t")),
      (2, ("gen_t", "disc_t"), ("gen_s", "disc_s")),
    ):
      chex.clear_trace_counter()  # The loop defines step_fn anew for each phase.

      @chex.assert_max_traces(n=1)
      def step_fn(state, batch, rng, phase=phase):
        return ti.train_step(state, batch, rng, static=static, phase=phase)

      step = jax.jit(step_fn)
      before = jax.device_get(state)
      for i in range(3):
        state, metrics = step(state, batch, jax.random.PRNGKey(i))
      metrics = jax.device_get(metrics)
      suffix = "s" if phase == 1 else "t"
      self.assertEqual(
        sorted(metrics),
        sorted(
          f"{k}_{suffix}" for k in ("g_loss", "d_loss", "l1", "adv", "g_grad_norm", "d_grad_norm")
        ),
      )
      self.assertTrue(all(math.isfinite(float(v)) for v in metrics.values()), metrics)
      for name in trained:
        self.assertFalse(
          helpers.leaves_equal(getattr(before, name).params, getattr(state, name).params), name
        )
      for name in frozen:
        self.assertTrue(
          helpers.leaves_equal(getattr(before, name).params, getattr(state, name).params), name
        )
      self.assertEqual(int(state.step), int(before.step) + 3)

  def test_a_structure_in_the_batch_replaces_the_in_step_solve(self):
    # Traced, not compiled: the RTV solver is the step's only while loop (conjugate gradient).
    config = smoke_config("/unused")
    static = ti.GanSetup.from_config(config)
    state = jax.eval_shape(lambda: ti.create_train_state(config, static, jax.random.PRNGKey(0), 32))
    images = np.zeros((8, 32, 32, 1), np.float32)
    rng = jax.random.PRNGKey(3)
    for phase in (1, 2):
      step = functools.partial(ti.train_step, static=static, phase=phase)
      in_step = str(jax.make_jaxpr(step)(state, {"image": images}, rng))
      given = str(jax.make_jaxpr(step)(state, {"image": images, "structure": images}, rng))
      self.assertIn("while", in_step)
      self.assertNotIn("while", given)


class TrainAndEvaluateTest(helpers.PhantomsTestCase):
  def test_smoke_trains_writes_table1_and_resumes_bit_identically(self):
    config = smoke_config(self.data_dir)
    workdir_a = os.path.join(self.tmp, "a")
    state_a = ti.train_and_evaluate(config, workdir_a)
    self.assertEqual(int(state_a.step), 6)
    with open(os.path.join(workdir_a, "report", "table1.csv")) as f:
      rows = list(csv.DictReader(f))
    self.assertEqual([r["Images"] for r in rows], ["normal", "abnormal"])
    for row in rows:
      self.assertTrue(math.isfinite(float(row["PSNR"])) and math.isfinite(float(row["SSIM"])))
      self.assertEqual(int(row["Count"]), 8)
    self.assertTrue(os.path.exists(os.path.join(workdir_a, "images", "grid_0000006.png")))

    # Interrupted after 4 steps (inside phase 2), then resumed: the same parameters, bit for bit.
    workdir_b = os.path.join(self.tmp, "b")
    interrupted = smoke_config(self.data_dir)
    interrupted.stop_at_step = 4
    state_mid = ti.train_and_evaluate(interrupted, workdir_b)
    self.assertEqual(int(state_mid.step), 4)
    self.assertFalse(os.path.exists(os.path.join(workdir_b, "report", "table1.csv")))
    state_b = ti.train_and_evaluate(smoke_config(self.data_dir), workdir_b)
    self.assertTrue(helpers.leaves_equal(jax.device_get(state_a), jax.device_get(state_b)))

    # Stage 2's hand-over: the generators alone, from the config stored in the workdir.
    generator = checkpointing.load_generator(workdir_a)
    self.assertEqual(generator.step, 6)
    self.assertEqual(generator.image_size, config.data.image_size)
    self.assertTrue(helpers.leaves_equal(generator.params["gen_s"], state_a.gen_s.params))
    self.assertTrue(helpers.leaves_equal(generator.params["gen_t"], state_a.gen_t.params))
    self.assertEqual(generator.rtv, rtv.RTVParams.from_config(config.rtv))
    earlier = checkpointing.load_generator(os.path.relpath(workdir_a), step=4)  # Relative too.
    self.assertEqual(earlier.step, 4)
    with self.assertRaisesRegex(UserInputError, "no stage 1 checkpoint of step 5"):
      checkpointing.load_generator(workdir_a, step=5)

    # --mode=eval reproduces the table written at the end of training.
    table = ti.evaluate_checkpoint(config, workdir_a)
    for row in rows:
      self.assertAlmostEqual(table[row["Images"]]["psnr"], float(row["PSNR"]), places=3)

  def test_per_image_structure_is_each_training_images_rtv_and_trains(self):
    config = smoke_config(self.data_dir)
    config.structure = "per_image"
    static = ti.GanSetup.from_config(config)
    structures = ti.structure_per_image(config, static)
    mesh = sharding.make_mesh()
    seen = 0
    for batch in input_pipeline.eval_iterator(config.data, mesh, "train"):
      images = np.asarray(batch["image"])
      exact = (np.asarray(rtv.structure_of(images, static.rtv))[..., 0] + 1.0) / 2.0
      for i, weight in enumerate(np.asarray(batch["weight"])):
        if weight > 0:
          cached = structures[str(batch["id"][i])]
          self.assertEqual((cached.dtype, cached.shape), (np.float16, (32, 32)))
          np.testing.assert_allclose(cached, exact[i], atol=1e-3)  # float16 storage.
          seen += 1
    self.assertLen(structures, seen)  # Every training normal, nothing else.
    config.stop_at_step = 2
    state = ti.train_and_evaluate(config, os.path.join(self.tmp, "per_image"))
    self.assertEqual(int(state.step), 2)
    config.structure = "once"
    with self.assertRaisesRegex(UserInputError, r"config.structure='once': use one of in_step"):
      ti.train_and_evaluate(config, os.path.join(self.tmp, "bad_structure"))

  def test_non_finite_loss_stops_and_keeps_last_checkpoint(self):
    workdir = os.path.join(self.tmp, "nan")
    config = smoke_config(self.data_dir)
    config.stop_at_step = 2
    good = ti.train_and_evaluate(config, workdir)
    exploding = smoke_config(self.data_dir)
    exploding.optimizer.learning_rate = 1e38  # The first update overflows.
    with self.assertRaisesRegex(FloatingPointError, "non-finite loss at step 2.*step 2. is intact"):
      ti.train_and_evaluate(exploding, workdir)
    gen_s, _, step = helpers.stage1_generator(workdir)
    self.assertEqual(step, 2)
    self.assertTrue(helpers.leaves_equal(gen_s, good.gen_s.params))

  def test_a_workdir_without_a_run_or_a_checkpoint_is_one_clear_error(self):
    empty = os.path.join(self.tmp, "empty")
    with self.assertRaisesRegex(UserInputError, f"{empty} holds no stage 1 run"):
      checkpointing.load_generator(empty)
    # A stored config but no checkpoint yet (the run was stopped before its first save).
    config = smoke_config(self.data_dir)
    checkpointing.check_config(config, empty, ti.STAGE1_SHAPE_FIELDS)
    with self.assertRaisesRegex(UserInputError, "no stage 1 checkpoint in .*train stage 1"):
      checkpointing.load_generator(empty)


if __name__ == "__main__":
  absltest.main()
