"""Sliding-window difference maps, LE maps, the localize job and the localization scores."""

import csv
import dataclasses
import os
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from scipy import ndimage
from sklearn import metrics as skm

from alenn_jax import (
  checkpointing,
  data_splits,
  foreground,
  le_maps,
  metrics,
  normal_error,
  sharding,
)
from alenn_jax import masks as masks_lib
from alenn_jax import train_inpainting as ti
from alenn_jax.classification import predict
from alenn_jax.datasets.phantoms import render
from alenn_jax.errors import UserInputError
from alenn_jax.localization import difference, localize, map_settings
from alenn_jax.models import inpainting
from alenn_jax.reporting import figures, lesion_scores, localization_report
from configs import localize as localize_config
from configs import stage1
from tests import helpers


def loop_difference_map(
  params, images, structure, inpaint_fn, window, stride, highpass=0.0, shift=0
):
  """The plain reference: one window at a time; with `highpass`, each window's signed error minus
  its Gaussian mean over the hole (scipy's filter, zeros outside the hole); with `shift`, each hole
  pixel's least difference to the corrected repainting at the pixels up to `shift` away along its
  row and column (indices clamped to the image)."""
  h, w = images.shape[1:3]
  total = np.zeros(images.shape, np.float64)
  count = np.zeros(images.shape, np.float64)
  for mask in masks_lib.window_masks(h, w, window, stride):
    mask = np.broadcast_to(mask[None], images.shape)
    composite = np.asarray(inpaint_fn(params, images, structure, jnp.asarray(mask)))
    hole = 1.0 - mask
    r = (np.asarray(images, np.float64) - composite) * hole
    if highpass:
      sigma = (0, highpass, highpass, 0)
      blur = lambda x: ndimage.gaussian_filter(x, sigma, mode="constant", truncate=3.0)  # noqa: B023
      r = np.where(hole > 0, r - blur(r) / np.maximum(blur(hole), 1e-12), 0.0)
    if shift:
      repainted = np.asarray(images, np.float64) - r
      best = np.abs(r)
      rows, cols = np.arange(h), np.arange(w)
      for d in range(-shift, shift + 1):
        down = repainted[:, np.clip(rows + d, 0, h - 1)]
        right = repainted[:, :, np.clip(cols + d, 0, w - 1)]
        for moved in (down, right):
          best = np.minimum(best, np.abs(np.asarray(images, np.float64) - moved))
      r = best * hole
    total += np.abs(r) / 2
    count += hole
  return total / count


class DifferenceMapTest(parameterized.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    config = stage1.get_config("smoke")
    cls.static = ti.GanSetup.from_config(config)
    state = ti.create_train_state(config, cls.static, jax.random.PRNGKey(0), 16)
    cls.params = {"gen_s": state.gen_s.params, "gen_t": state.gen_t.params}
    rng = np.random.default_rng(0)
    cls.images = jnp.asarray(rng.uniform(-1, 1, (2, 16, 16, 1)), jnp.float32)
    cls.structure = jnp.asarray(rng.uniform(-1, 1, (2, 16, 16, 1)), jnp.float32)
    cls.inpaint_fn = staticmethod(difference.stage1_inpaint_fn(cls.static.gen_s, cls.static.gen_t))

  def run_map(self, chunk, window=8, stride=4, inpaint_fn=None):
    fn = jax.jit(
      lambda p, i, s: difference.difference_map(
        p, i, s, inpaint_fn=inpaint_fn or self.inpaint_fn, window=window, stride=stride, chunk=chunk
      )
    )
    return np.asarray(fn(self.params, self.images, self.structure))

  def test_vmapped_chunks_equal_a_loop_over_windows(self):
    expected = loop_difference_map(self.params, self.images, self.structure, self.inpaint_fn, 8, 4)
    np.testing.assert_allclose(self.run_map(chunk=4), expected, atol=1e-5)
    self.assertGreater(expected.max(), 0.01)

  @parameterized.parameters(1, 3, 9, 64)
  def test_chunk_size_does_not_change_the_result(self, chunk):
    np.testing.assert_allclose(
      self.run_map(chunk=chunk), self.run_map(chunk=2), atol=1e-5
    )  # Float32: only the batching differs.

  def run_method(self, images, structure, **kwargs):
    fn = jax.jit(
      lambda p, i, s: difference.difference_map(p, i, s, inpaint_fn=self.inpaint_fn, **kwargs)
    )
    return np.asarray(fn(self.params, images, structure))

  def test_multi_window_with_one_window_per_group_equals_per_window(self):
    # A gap as large as the image puts every window in a group of its own.
    per_window = self.run_map(chunk=4)
    got = self.run_method(
      self.images, self.structure, window=8, stride=4, chunk=4, method="multi_window", gap=16
    )
    np.testing.assert_allclose(got, per_window, atol=1e-5)

  def test_multi_window_groups_give_each_window_its_own_difference(self):
    # With a repainting that depends only on the hole, grouping cannot change D.
    constant = lambda p, images, s, m: masks_lib.composite(images, jnp.full_like(images, 0.3), m)
    kwargs = dict(inpaint_fn=constant, window=4, stride=2, chunk=3)
    fn = lambda method: np.asarray(
      difference.difference_map(
        self.params, self.images, self.structure, method=method, gap=2, **kwargs
      )
    )
    self.assertLess(len(masks_lib.window_groups(16, 16, 4, 2, 2)), 49)
    np.testing.assert_allclose(fn("multi_window"), fn("per_window"), atol=1e-6)

  def test_context_as_large_as_the_image_is_the_whole_image(self):
    per_window = self.run_map(chunk=4)
    for context in (16, 40):
      got = self.run_method(
        self.images,
        self.structure,
        window=8,
        stride=4,
        chunk=4,
        method="context",
        context=context,
      )
      np.testing.assert_allclose(got, per_window, atol=1e-5)

  def test_context_repaints_each_window_from_its_crop_clamped_at_the_border(self):
    rng = np.random.default_rng(3)
    images = jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 1)), jnp.float32)
    structure = jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 1)), jnp.float32)
    window, stride, context = 8, 6, 16
    total = np.zeros(images.shape)
    count = np.zeros(images.shape)
    for top, left in masks_lib.window_positions(32, 32, window, stride):
      y = min(max(top + window // 2 - context // 2, 0), 32 - context)
      x = min(max(left + window // 2 - context // 2, 0), 32 - context)
      mask = np.ones((2, context, context, 1), np.float32)
      mask[:, top - y : top - y + window, left - x : left - x + window] = 0.0
      crop = images[:, y : y + context, x : x + context]
      composite = self.inpaint_fn(
        self.params, crop, structure[:, y : y + context, x : x + context], jnp.asarray(mask)
      )
      total[:, y : y + context, x : x + context] += (
        np.abs(np.asarray(crop) - np.asarray(composite)) * (1 - mask) / 2
      )
      count[:, top : top + window, left : left + window] += 1
    got = self.run_method(
      images, structure, window=window, stride=stride, chunk=5, method="context", context=context
    )
    np.testing.assert_allclose(got, total / count, atol=1e-5)
    self.assertGreater(got.min(), 0.0)  # Every pixel, the last row and column too, was repainted.

  def test_padding_lays_the_windows_over_the_reflected_canvas_and_crops_back(self):
    pad, window, stride = 4, 8, 4
    widths = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    canvas = jnp.pad(self.images, widths, mode="reflect")
    expected = loop_difference_map(
      self.params,
      canvas,
      jnp.pad(self.structure, widths, mode="reflect"),
      self.inpaint_fn,
      window,
      stride,
    )[:, pad:-pad, pad:-pad]
    got = self.run_method(
      self.images, self.structure, window=window, stride=stride, chunk=4, pad=pad
    )
    self.assertEqual(got.shape, self.images.shape)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # With pad = stride every image pixel, corners included, lies in (window / stride)**2 windows.
    holes = masks_lib.window_masks(16 + 2 * pad, 16 + 2 * pad, window, stride)
    np.testing.assert_array_equal((1 - holes).sum(axis=0)[pad:-pad, pad:-pad], 4)
    self.assertEqual((1 - masks_lib.window_masks(16, 16, window, stride)).sum(axis=0).min(), 1)

  def test_letterbox_bars_are_filled_by_reflecting_each_image_about_its_own_extent(self):
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (4, 12, 12, 1)).astype(np.float32)
    # Landscape, portrait, the whole square, and a thin one reflected many times over.
    boxes = np.array([[2, 0, 8, 12], [0, 3, 12, 5], [0, 0, 12, 12], [5, 4, 2, 3]], np.int32)
    got = np.asarray(jax.jit(difference.reflect_into_letterbox)(images, boxes))
    for image, (top, left, h, w), filled in zip(images, boxes, got, strict=True):
      extent = image[top : top + h, left : left + w]
      widths = ((top, 12 - top - h), (left, 12 - left - w), (0, 0))
      np.testing.assert_array_equal(filled, np.pad(extent, widths, mode="reflect"))
    np.testing.assert_array_equal(got[2], images[2])  # A square image is left as it is.
    one_row = np.asarray(difference.reflect_into_letterbox(images[:1], np.array([[6, 0, 1, 12]])))
    np.testing.assert_array_equal(one_row[0], np.broadcast_to(images[0, 6], (12, 12, 1)))

  def test_identity_inpainting_gives_zero(self):
    identity = lambda p, images, s, m: images
    np.testing.assert_array_equal(self.run_map(chunk=4, inpaint_fn=identity), 0.0)

  def test_every_pixel_is_covered_and_averaged(self):
    # A constant repainting: every pixel's mean over its windows is |I - 1| / 2, border included.
    constant = lambda p, images, s, m: masks_lib.composite(images, jnp.ones_like(images), m)
    got = self.run_map(chunk=5, window=7, stride=3, inpaint_fn=constant)
    np.testing.assert_allclose(got, np.abs(np.asarray(self.images) - 1) / 2, atol=1e-6)

  def test_highpass_takes_each_windows_error_less_its_local_mean(self):
    got = self.run_method(self.images, self.structure, window=8, stride=4, chunk=4, highpass=1.5)
    expected = loop_difference_map(
      self.params, self.images, self.structure, self.inpaint_fn, 8, 4, highpass=1.5
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # A repainting whose only error is a brightness offset scores nothing; without it, the offset.
    offset = lambda p, images, s, m: masks_lib.composite(images, images + 0.3, m)
    kwargs = dict(window=8, stride=4, chunk=4, inpaint_fn=offset)
    np.testing.assert_allclose(self.run_map(**kwargs), 0.15, atol=1e-6)
    fn = jax.jit(lambda p, i, s: difference.difference_map(p, i, s, highpass=2.0, **kwargs))
    np.testing.assert_allclose(fn(self.params, self.images, self.structure), 0.0, atol=1e-6)

  @parameterized.parameters("per_window", "multi_window")
  def test_shift_takes_each_hole_pixels_least_difference_to_the_repainting_nearby(self, method):
    expected = loop_difference_map(
      self.params, self.images, self.structure, self.inpaint_fn, 8, 4, highpass=1.5, shift=2
    )
    got = self.run_method(
      self.images,
      self.structure,
      window=8,
      stride=4,
      chunk=4,
      method=method,
      gap=16,
      highpass=1.5,
      shift=2,
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)
    plain = loop_difference_map(
      self.params, self.images, self.structure, self.inpaint_fn, 8, 4, highpass=1.5
    )
    self.assertLess(expected.mean(), 0.9 * plain.mean())  # Some of the error was only a shift.

  def test_shift_forgives_an_edge_repainted_off_but_not_a_line_the_repainting_lacks(self):
    # A bone edge (bright right half) that the repainting puts one pixel too far left, and a
    # one-pixel dark line across the bone that the repainting leaves out.
    image = np.full((1, 16, 16, 1), -0.6, np.float32)
    image[:, :, 8:] = 0.6
    repainted = np.full_like(image, -0.6)
    repainted[:, :, 7:] = 0.6
    mask = np.ones_like(image)
    mask[:, 4:12, 4:12] = 0.0
    hole = lambda im, rep, shift: np.asarray(difference.hole_difference(im, rep, mask, 0.0, shift))
    np.testing.assert_allclose(hole(image, repainted, 0)[0, 4:12, 7, 0], 0.6)
    np.testing.assert_array_equal(hole(image, repainted, 1), 0.0)
    bone = np.full_like(image, 0.6)
    with_line = bone.copy()
    with_line[:, 6, 6:10] = -0.2  # 0.8 darker than the bone, 1 px wide, inside the hole.
    got = hole(with_line, bone, 1)
    np.testing.assert_allclose(got[0, 6, 6:10, 0], 0.4)  # The whole |0.8| / 2.
    self.assertEqual(np.count_nonzero(got), 4)
    # At the hole's rim the image's own pixels count as the repainting's neighbours: a line that
    # goes on outside the hole is matched there (other windows cover such pixels inside).
    with_line[:, 6, 10:] = -0.2
    np.testing.assert_allclose(hole(with_line, bone, 1)[0, 6, 6:13, 0], [0.4] * 5 + [0.0] * 2)

  def test_smooth_blurs_the_mean_over_windows(self):
    plain = self.run_method(self.images, self.structure, window=8, stride=4, chunk=4)
    got = self.run_method(self.images, self.structure, window=8, stride=4, chunk=4, smooth=1.0)
    expected = ndimage.gaussian_filter(plain, (0, 1.0, 1.0, 0), mode="reflect", truncate=3.0)
    np.testing.assert_allclose(got, expected, atol=1e-6)

  def test_le_map_uses_one_scale_and_clips(self):
    d = np.array([[0.0, 0.05], [0.1, 0.4]])
    np.testing.assert_allclose(le_maps.le_map(d, 0.1), [[0, 0.5], [1, 1]])


class ScoresTest(absltest.TestCase):
  def test_auroc_matches_sklearn_with_ties(self):
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, 300).astype(float)
    labels = rng.random(300) < 0.3
    self.assertAlmostEqual(
      metrics.auc(labels, scores, absent=float("nan")), skm.roc_auc_score(labels, scores), places=10
    )
    self.assertTrue(np.isnan(metrics.auc(np.zeros(300, bool), scores, absent=float("nan"))))

  def test_pointing_game_tolerance(self):
    lesion = np.zeros((10, 10))
    lesion[5, 5] = 1
    score = np.zeros((10, 10))
    score[5, 7] = 1.0
    self.assertFalse(lesion_scores.pointing_hit(score, lesion, 1))
    self.assertTrue(lesion_scores.pointing_hit(score, lesion, 2))

  def test_figure3_marks_the_largest_difference_and_says_if_it_is_on_the_lesion(self):
    lesion = np.zeros((10, 10))
    lesion[5, 5] = 1
    near, far = np.zeros((10, 10)), np.zeros((10, 10))
    near[5, 7], far[1, 1] = 1.0, 1.0
    self.assertEqual(
      figures.overlay_title(near, lesion, 2), "overlay (+: largest D, on the lesion)"
    )
    self.assertEqual(
      figures.overlay_title(far, lesion, 2), "overlay (+: largest D, off the lesion)"
    )
    self.assertEqual(figures.overlay_title(far, lesion * 0, 2), "overlay (+: largest D)")
    examples = [
      {"id": i, "label": int(i == "a"), "image": far, "lesion": lesion * (i == "a")} for i in "an"
    ]
    path = os.path.join(self.create_tempdir().full_path, "fig3.png")
    figures.figure3(examples, {"a": near, "n": far}, 0.5, path, "abnormal and normal", 2)
    with open(path, "rb") as f:
      self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

  def test_dice_threshold_comes_from_the_threshold_split(self):
    lesion = np.zeros((8, 8))
    lesion[2:4, 2:4] = 1
    blurred = lesion * 0.6 + 0.1  # Lesion 0.7, background 0.1.
    examples = [{"id": "a", "label": 1, "lesion": lesion}]
    maps = {"ALENN": {"a": blurred}}
    thresholds = lesion_scores.dice_thresholds(examples, maps)
    self.assertAlmostEqual(thresholds["ALENN"], 0.7)
    # A threshold chosen elsewhere that calls everything positive: Dice 2*4 / (64 + 4).
    (row,) = lesion_scores.score_maps(examples, maps, 1.0, 0, thresholds={"ALENN": 0.05})
    self.assertAlmostEqual(row["dice"], 8 / 68)

  def test_perfect_map_scores_one(self):
    lesion = np.zeros((8, 8))
    lesion[2:4, 2:4] = 1
    examples = [
      {"id": "a", "label": 1, "lesion": lesion},
      {"id": "n", "label": 0, "lesion": np.zeros((8, 8))},
    ]
    maps = {"ALENN": {"a": lesion * 0.5, "n": np.zeros((8, 8))}}
    (row,) = lesion_scores.score_maps(examples, maps, scale=0.5, tolerance=0)
    self.assertEqual(row["pointing_game"], 1.0)
    self.assertEqual(row["pixel_auroc"], 1.0)
    self.assertEqual(row["pixel_auprc"], 1.0)
    self.assertEqual(row["dice"], 1.0)
    self.assertEqual(row["le_inside_lesion"], 1.0)
    self.assertEqual(row["le_outside_lesion"], 0.0)
    self.assertEqual(row["normal_le_p99"], 0.0)

  def test_scored_pixels_leave_what_is_not_patient_out_of_every_score(self):
    lesion = np.zeros((8, 8))
    lesion[2:4, 2:4] = 1
    body = np.zeros((8, 8), bool)
    body[:, :6] = True  # A marker in the last two columns holds the largest values.
    d = lesion * 0.5 + 0.1
    d[:, 6:] = 5.0
    normal = np.full((8, 8), 0.1)
    normal[:, 6:] = 5.0
    examples = [
      {"id": "a", "label": 1, "lesion": lesion},
      {"id": "n", "label": 0, "lesion": np.zeros((8, 8))},
    ]
    maps = {"ALENN": {"a": d, "n": normal}}
    (everywhere,) = lesion_scores.score_maps(examples, maps, scale=0.6, tolerance=0)
    self.assertEqual(everywhere["pointing_game"], 0.0)  # On the marker.
    for ex in examples:
      ex["scored"] = body
    (on_body,) = lesion_scores.score_maps(examples, maps, scale=0.6, tolerance=0)
    self.assertEqual(on_body["pointing_game"], 1.0)
    self.assertEqual(on_body["pixel_auroc"], 1.0)
    self.assertAlmostEqual(on_body["normal_le_p99"], 0.1 / 0.6, places=6)  # Not the marker.
    # A lesion pixel outside the scored ones is a miss, ranked below every scored pixel: 3 of
    # the 4 lesion pixels above the 44 other scored ones.
    examples[0]["scored"] = body.copy()
    examples[0]["scored"][3, 3] = False
    (missed,) = lesion_scores.score_maps(examples, maps, scale=0.6, tolerance=0)
    self.assertAlmostEqual(missed["pixel_auroc"], 3 * 44 / (4 * 44))

  def test_a_split_without_lesion_masks_is_not_scored_and_says_why(self):
    workdir = self.create_tempdir().full_path
    rng = np.random.default_rng(0)
    examples = [
      {"id": str(i), "label": i % 2, "image": rng.random((16, 12)), "lesion": np.zeros((16, 12))}
      for i in range(4)
    ]
    le_maps.write_shard(
      le_maps.shard_path(workdir, "test", 0),
      [ex["id"] for ex in examples],
      [rng.random((16, 12))] * 4,
    )
    config = localize_config.get_config("smoke")
    config.data.name = "folder/no_masks"
    config.report.split = "test"
    with mock.patch.object(localization_report, "collect", return_value=examples):
      with self.assertLogs(level="WARNING") as logs:
        rows = localization_report.localization_report(config, workdir, None, scale=1.0)
    self.assertEqual(rows, [])
    self.assertLen(logs.output, 1)
    self.assertIn("localization not scored: no abnormal image of folder/no_masks", logs.output[0])
    report_dir = os.path.join(workdir, "report")
    self.assertFalse(os.path.exists(os.path.join(report_dir, "localization.csv")))
    for name in ("fig3_normal.png", "fig3_abnormal.png"):  # Nothing else is lost.
      self.assertTrue(os.path.exists(os.path.join(report_dir, name)), name)

  def test_kind_rows_score_each_kind_beside_every_normal(self):
    lesion = np.zeros((8, 8))
    lesion[2:4, 2:4] = 1
    hit = lesion * 0.5 + 0.1
    miss = np.full((8, 8), 0.1)
    miss[6, 6] = 1.0
    examples = [
      {"id": "f1", "label": 1, "lesion": lesion},
      {"id": "f2", "label": 1, "lesion": lesion},
      {"id": "l1", "label": 1, "lesion": lesion},
      {"id": "n1", "label": 0, "lesion": np.zeros((8, 8))},
    ]
    maps = {"ALENN": {"f1": hit, "f2": miss, "l1": hit, "n1": miss}}
    kinds = {"f1": "fracture", "f2": "fracture", "l1": "lytic", "n1": "none"}
    rows = lesion_scores.kind_rows(examples, maps, 1.0, 0, kinds, thresholds={"ALENN": 0.3})
    self.assertEqual(
      [(r["lesion_kind"], r["method"]) for r in rows], [("fracture", "ALENN"), ("lytic", "ALENN")]
    )
    fracture, lytic = rows
    self.assertEqual((fracture["pointing_game"], lytic["pointing_game"]), (0.5, 1.0))
    self.assertEqual((fracture["abnormal_with_lesion"], lytic["abnormal_with_lesion"]), (2, 1))
    self.assertEqual((fracture["normal"], lytic["normal"]), (1, 1))
    self.assertEqual(lytic["pixel_auroc"], 1.0)
    self.assertLess(fracture["pixel_auroc"], 1.0)


def read_csv_rows(path: str) -> list[dict]:
  with open(path) as f:
    return list(csv.DictReader(f))


class LocalizeJobTest(helpers.PhantomsTestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = os.path.join(cls.tmp, "w")
    config = stage1.get_config("smoke")
    config.data.data_dir = cls.data_dir
    config.phase1_steps = 1
    config.phase2_steps = 1
    config.stop_at_step = 2  # A checkpoint is all the localize job needs; skip Table 1.
    ti.train_and_evaluate(config, cls.workdir)

  def config(self):
    # Nothing about stage 1: the generator, dataset and image size come from the stage 1 run.
    return localize_config.get_config("smoke")

  def test_maps_every_split_writes_report_and_resumes(self):
    self.assertNotIn("stage1", self.config())
    result = localize.run(self.config(), self.workdir)
    self.assertEqual(result["images"], {"train": 32, "test": 16, "validation": 16})
    stored = checkpointing.read_stored_config(self.workdir, "localize", "localize run")
    self.assertEqual(stored.data.name, "phantoms/px64")
    self.assertEqual(stored.data.data_dir, self.data_dir)
    self.assertEqual((stored.data.image_size, stored.window, stored.stride), (32, 8, 4))
    # Scored on the scored split, thresholds chosen on the selection split.
    self.assertEqual((stored.report.split, stored.data.eval_split), ("test", "validation"))
    maps = le_maps.read_le_maps(self.workdir, "validation")
    self.assertLen(maps, 16)
    for le in maps.values():
      self.assertEqual(le.shape, (32, 32))
      self.assertTrue(np.all((le >= 0) & (le <= 1)))
    report_dir = os.path.join(self.workdir, "report")
    for name in ("fig3_normal.png", "fig3_abnormal.png", "localization.csv"):
      self.assertTrue(os.path.exists(os.path.join(report_dir, name)), name)
    with open(os.path.join(report_dir, "localization.csv")) as f:
      rows = list(csv.DictReader(f))
    self.assertEqual(
      [r["method"] for r in rows], ["ALENN", "random", "centre prior", "intensity", "gradient"]
    )
    for row in rows:
      for key in ("pixel_auroc", "pixel_auprc", "dice"):
        self.assertTrue(0.0 <= float(row[key]) <= 1.0, (row["method"], key))
      self.assertEqual(row["dice_threshold_split"], "validation")

    # The phantoms record each lesion's kind: the same scores per kind, which add up.
    by_kind = read_csv_rows(os.path.join(report_dir, lesion_scores.BY_KIND_CSV))
    alenn = [r for r in by_kind if r["method"] == "ALENN"]
    self.assertLessEqual({r["lesion_kind"] for r in alenn}, set(render.LESION_KINDS))
    self.assertEqual(len(by_kind), len(rows) * len(alenn))
    self.assertEqual(
      sum(int(r["abnormal_with_lesion"]) for r in alenn), int(rows[0]["abnormal_with_lesion"])
    )
    hits = sum(float(r["pointing_game"]) * int(r["abnormal_with_lesion"]) for r in alenn)
    self.assertAlmostEqual(
      hits, float(rows[0]["pointing_game"]) * int(rows[0]["abnormal_with_lesion"]), places=2
    )

    shard = os.path.join(self.workdir, "le_maps", "train", "shard_00000.npz")
    before = os.path.getmtime(shard)
    self.assertEqual(
      [r["split"] for r in read_csv_rows(os.path.join(report_dir, "normal_le.csv"))],
      ["train", "test", "validation"],
    )
    os.remove(os.path.join(self.workdir, "le_maps", "train", "shard_00001.npz"))
    localize.run(self.config(), self.workdir)  # Resumes: only the missing shard is computed.
    self.assertEqual(os.path.getmtime(shard), before)
    self.assertLen(le_maps.read_le_maps(self.workdir, "train"), 32)

  def test_stale_maps_are_refused_or_moved_aside_and_the_scale_follows_the_percentile(self):
    workdir = os.path.join(self.tmp, "multi")
    config = self.config()
    config.init_from = self.workdir
    config.method = "multi_window"
    localize.run(config, workdir)
    stored = checkpointing.read_stored_config(workdir, "localize", "localize run")
    self.assertEqual((stored.method, stored.gap), ("multi_window", 8))  # gap 0: the window.
    self.assertEqual(stored.generator.step, 2)
    self.assertEqual(stored.generator.workdir, self.workdir)
    shard = le_maps.shard_path(workdir, "train", 0)
    before = os.path.getmtime(shard)
    scale_99 = le_maps.read_scale(workdir)

    # A new percentile: the scale is computed again from the stored maps, which are kept.
    config.percentile = 50.0
    localize.run(config, workdir)
    self.assertEqual(os.path.getmtime(shard), before)
    self.assertEqual(le_maps.read_scale_record(workdir)["percentile"], 50.0)
    self.assertLess(le_maps.read_scale(workdir), scale_99)

    # Another method would mix maps: refused, or the old ones moved aside with force_restart.
    config.method = "per_window"
    with self.assertRaisesRegex(UserInputError, "config.method='per_window' differs"):
      localize.run(config, workdir)
    config.force_restart = True
    localize.run(config, workdir)
    self.assertLen([n for n in os.listdir(workdir) if n.startswith("le_maps.replaced-")], 1)

  def test_maps_are_the_raw_difference_divided_by_the_fitted_normal_error(self):
    config = self.config()
    config.init_from = self.workdir
    config.method = "multi_window"  # Any method: the cheapest (per_window: the first test).
    self.assertEqual(config.normal_error.patch, 0)  # Off unless asked for.
    config.normal_error.patch = 9
    calibrated_dir, raw_dir = (os.path.join(self.tmp, n) for n in ("calibrated", "raw"))
    localize.run(config, calibrated_dir)
    path = map_settings.normal_error_path(calibrated_dir)
    model = normal_error.load(path)
    self.assertEqual(model.codes.shape, (config.normal_error.codes, config.normal_error.patch**2))
    config.normal_error.patch = 0
    localize.run(config, raw_dir)
    self.assertFalse(os.path.exists(map_settings.normal_error_path(raw_dir)))
    # Off, it is not part of the maps' record: maps made before the field stay valid.
    self.assertNotIn("normal_error", checkpointing.read_stored_config(raw_dir, "localize", "x"))
    stored = checkpointing.read_stored_config(calibrated_dir, "localize", "localize run")
    mesh = sharding.make_mesh(jax.local_devices())
    examples = localization_report.collect(stored, mesh, "validation")
    images = np.stack([ex["image"] for ex in examples])[..., None] * 2.0 - 1.0
    raw = le_maps.read_difference_maps(raw_dir, "validation")
    calibrated = le_maps.read_difference_maps(calibrated_dir, "validation")
    d = np.stack([raw[ex["id"]] for ex in examples])[..., None]
    expected = np.asarray(normal_error.calibrate(model, jnp.asarray(images), d))
    got = np.stack([calibrated[ex["id"]] for ex in examples])[..., None]
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-4)  # Stored as float16.
    self.assertFalse(np.allclose(got, d))

    # predict maps new pictures with the same model: its D is the raw D divided alike.
    models = predict.load_models(calibrated_dir, mesh)
    predictor = predict._Predictor(models, mesh)
    pictures = [np.round(ex["image"] * 255.0).astype(np.uint8) for ex in examples[:4]]
    with_model = np.stack(predictor.difference_maps(pictures))[..., None]
    predictor.models = dataclasses.replace(models, normal=None)
    without = np.stack(predictor.difference_maps(pictures))[..., None]
    inputs = np.stack(pictures)[..., None].astype(np.float32) / 255.0 * 2.0 - 1.0
    expected = np.asarray(normal_error.calibrate(model, jnp.asarray(inputs), without))
    np.testing.assert_allclose(with_model, expected, rtol=2e-3, atol=1e-4)
    os.rename(path, path + ".moved")
    with self.assertRaisesRegex(UserInputError, "normal-error model .* which is gone"):
      predict.load_models(calibrated_dir, mesh)
    os.rename(path + ".moved", path)

    # The model is part of the maps: another patch size is refused like any method field.
    config.normal_error.patch = 5
    with self.assertRaisesRegex(UserInputError, "config.normal_error.patch=5 differs"):
      localize.run(config, calibrated_dir)

  def test_foreground_keeps_d_to_each_images_body_and_the_scale_to_its_pixels(self):
    config = self.config()
    config.init_from = self.workdir
    config.method = "multi_window"  # Any method: the cheapest (per_window: the first test).
    self.assertEqual(config.foreground, "none")  # Off unless asked for.
    config.foreground = "body"
    body_dir = os.path.join(self.tmp, "body")
    localize.run(config, body_dir)
    stored = checkpointing.read_stored_config(body_dir, "localize", "localize run")
    self.assertEqual(stored.foreground, "body")
    mesh = sharding.make_mesh(jax.local_devices())
    examples = localization_report.collect(stored, mesh, "validation")
    maps = le_maps.read_difference_maps(body_dir, "validation")
    bodies = le_maps.read_foreground(body_dir, "validation")
    self.assertEqual(set(bodies), set(maps))
    for ex in examples:
      # The mask is the image's own (in [-1, 1] in the job; Otsu does not mind the range).
      want = foreground.body_mask(ex["image"] * 2.0 - 1.0)
      np.testing.assert_array_equal(bodies[ex["id"]], want)
      self.assertTrue(np.all(maps[ex["id"]][~want] == 0.0))
      self.assertTrue(np.any(maps[ex["id"]][want] > 0.0))
    # The LE scale: the percentile over the training normals' kept pixels only.
    labels = data_splits.split_labels(stored.data, "train")
    train_maps = le_maps.read_difference_maps(body_dir, "train")
    train_bodies = le_maps.read_foreground(body_dir, "train")
    kept = [train_maps[k][train_bodies[k]] for k in train_maps if labels[k] == 0]
    self.assertAlmostEqual(
      le_maps.read_scale(body_dir), float(np.percentile(np.concatenate(kept), 99)), places=6
    )
    share = read_csv_rows(os.path.join(body_dir, "report", lesion_scores.FOREGROUND_CSV))
    self.assertEqual(share[0]["split"], "test")
    self.assertTrue(0.0 < float(share[0]["image_kept"]) <= 1.0)
    # predict keeps new pictures' maps to their bodies alike.
    predictor = predict._Predictor(predict.load_models(body_dir, mesh), mesh)
    pictures = [np.round(ex["image"] * 255.0).astype(np.uint8) for ex in examples[:4]]
    for picture, d in zip(pictures, predictor.difference_maps(pictures), strict=True):
      body = foreground.body_mask(picture.astype(np.float32) / 255.0 * 2.0 - 1.0)
      self.assertTrue(np.all(d[~body] == 0.0))
    # Part of the maps: switching it off is refused like any method field, and "none" is kept
    # out of the record (maps made before the field stay valid).
    config.foreground = "none"
    with self.assertRaisesRegex(UserInputError, "config.foreground=None differs"):
      localize.run(config, body_dir)
    config.foreground = "skin"
    with self.assertRaisesRegex(UserInputError, "config.foreground='skin'"):
      localize.run(config, os.path.join(self.tmp, "bad_foreground"))

  def test_missing_maps_or_generator_are_a_clear_error(self):
    with self.assertRaisesRegex(UserInputError, "run the localize job|no LE maps"):
      le_maps.read_le_maps(os.path.join(self.tmp, "nothing"), "train")
    with self.assertRaisesRegex(UserInputError, "nothing holds no stage 1 run"):
      localize.run(self.config(), os.path.join(self.tmp, "nothing"))

  def test_pad_defaults_to_the_stride_and_a_pad_the_generator_cannot_take_is_refused(self):
    stage1_config = checkpointing.read_stored_config(self.workdir, "inpainting", "stage 1 run")
    config = self.config()
    config.window, config.stride = 8, 4
    self.assertEqual(map_settings.resolve(config, stage1_config).pad, 4)
    config.pad = 0
    self.assertEqual(map_settings.resolve(config, stage1_config).pad, 0)
    factor = 2**stage1_config.model.depth
    config.pad = factor // 2 + 1
    with self.assertRaisesRegex(UserInputError, f"config.pad={factor // 2 + 1}: the reflected"):
      map_settings.resolve(config, stage1_config)

  def test_context_defaults_to_the_window_plus_the_receptive_field_and_warns_below_it(self):
    stage1_config = checkpointing.read_stored_config(self.workdir, "inpainting", "stage 1 run")
    config = self.config()
    config.method, config.window = "context", 8
    reach = inpainting.receptive_field(stage1_config.model)
    factor = 2**stage1_config.model.depth
    enough = map_settings.resolve(config, stage1_config).context
    self.assertEqual(enough % factor, 0)
    self.assertBetween(enough, 8 + reach, 8 + reach + factor - 1)
    config.context = enough  # Enough: no warning.
    with self.assertNoLogs(level="WARNING"):
      self.assertEqual(map_settings.resolve(config, stage1_config).context, enough)
    config.context = 2 * factor + 8  # Valid, but it cuts into what the generator sees.
    with self.assertLogs(level="WARNING") as logs:
      self.assertEqual(map_settings.resolve(config, stage1_config).context, 2 * factor + 8)
    self.assertIn("smaller than the window plus the stage 1 generator's receptive", logs.output[0])
    config.context = 9
    with self.assertRaisesRegex(UserInputError, f"config.context=9: .* 0 picks {enough}"):
      map_settings.resolve(config, stage1_config)

  def test_map_step_fills_the_letterbox_of_a_batch_with_a_non_square_image_only(self):
    generator = checkpointing.load_generator(
      self.workdir, mesh=sharding.make_mesh(jax.devices()[:1])
    )
    config = map_settings.resolve(self.config(), generator.config)
    zero_config = config.copy_and_resolve_references()
    zero_config.letterbox = "zero"
    step, zero_step = (localize.make_map_step(c, generator) for c in (config, zero_config))
    images = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)
    square = np.array([[0, 0, 32, 32]] * 2, np.int32)
    want = np.asarray(zero_step(generator.params, images, square))
    # Square images are mapped by the same program as without the fill: bit for bit.
    np.testing.assert_array_equal(np.asarray(step(generator.params, images, square)), want)
    boxes = np.array([[0, 0, 32, 32], [0, 6, 32, 20]], np.int32)
    filled = np.asarray(difference.reflect_into_letterbox(images, boxes))
    got = np.asarray(step(generator.params, images, boxes))
    expected = np.asarray(zero_step(generator.params, filled, boxes))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got[0], want[0], atol=1e-6)  # The square one in the same batch.
    self.assertGreater(np.abs(got[1] - want[1])[:, 6:26].max(), 1e-3)

  def test_letterbox_fill_defaults_to_reflect_and_an_unknown_one_is_refused(self):
    stage1_config = checkpointing.read_stored_config(self.workdir, "inpainting", "stage 1 run")
    config = self.config()
    self.assertEqual(map_settings.resolve(config, stage1_config).letterbox, "reflect")
    config.letterbox = "mirror"
    with self.assertRaisesRegex(UserInputError, "config.letterbox='mirror': use one of reflect"):
      map_settings.resolve(config, stage1_config)

  def test_highpass_and_smooth_default_to_fractions_of_the_window(self):
    stage1_config = checkpointing.read_stored_config(self.workdir, "inpainting", "stage 1 run")
    config = self.config()
    config.window = 8
    resolved = map_settings.resolve(config, stage1_config)
    self.assertEqual((resolved.highpass, resolved.smooth), (1.0, 0.5))
    config.highpass, config.smooth = 0.0, 2.5
    resolved = map_settings.resolve(config, stage1_config)
    self.assertEqual((resolved.highpass, resolved.smooth), (0.0, 2.5))
    config.smooth = -2.0
    with self.assertRaisesRegex(UserInputError, "config.smooth=-2.0: use a Gaussian sigma"):
      map_settings.resolve(config, stage1_config)

  def test_shift_defaults_to_a_sixteenth_of_the_window_and_stays_inside_half_of_it(self):
    stage1_config = checkpointing.read_stored_config(self.workdir, "inpainting", "stage 1 run")
    config = self.config()
    for window, shift in ((4, 1), (8, 1), (16, 1), (32, 2)):
      config.window, config.stride = window, 0
      self.assertEqual(map_settings.resolve(config, stage1_config).shift, shift)
    config.window, config.shift = 8, 3
    self.assertEqual(map_settings.resolve(config, stage1_config).shift, 3)
    for bad in (4, -2):
      config.shift = bad
      with self.assertRaisesRegex(
        UserInputError, rf"config.shift={bad}: use a whole number of px in \[0, 3\]"
      ):
        map_settings.resolve(config, stage1_config)

  @parameterized.parameters(
    ("patch", 4, "an odd number of px"),
    ("patch", -3, "an odd number of px"),
    ("codes", 1, "a whole number >= 2"),
    ("pixels", 100, r"a whole number >= codes \(1024\)"),
    ("images", 0, "a whole number >= 1"),
    ("iterations", -1, "a whole number >= 0"),
    ("floor", 0.0, "a number > 0"),
  )
  def test_a_normal_error_field_out_of_range_is_refused_naming_it(self, field, value, message):
    stage1_config = checkpointing.read_stored_config(self.workdir, "inpainting", "stage 1 run")
    config = localize_config.get_config("small")
    config.normal_error.patch = 9
    config.normal_error[field] = value
    with self.assertRaisesRegex(
      UserInputError, rf"config.normal_error.{field}={value}: use {message}"
    ):
      map_settings.resolve(config, stage1_config)

  def test_stride_larger_than_the_window_is_refused(self):
    config = self.config()
    config.init_from = self.workdir
    config.window, config.stride = 8, 9
    with self.assertRaisesRegex(UserInputError, "config.stride=9 is larger than config.window=8"):
      localize.run(config, os.path.join(self.tmp, "bad_stride"))


if __name__ == "__main__":
  absltest.main()
