"""Image metrics against scikit-image, classification metrics against scikit-learn."""

import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from skimage import metrics as skm
from sklearn import metrics as skl

from alenn_jax import metrics


class ImageMetricsTest(parameterized.TestCase):
  @parameterized.parameters((1.0, 1), (2.0, 1), (255.0, 3))
  def test_psnr_and_ssim_match_skimage(self, data_range, channels):
    rng = np.random.default_rng(int(data_range) + channels)
    a = rng.random((3, 40, 33, channels)) * data_range
    b = np.clip(a + rng.normal(0, 0.1 * data_range, a.shape), 0, data_range)
    b[1] = a[1] * 0.5  # A very different second pair.
    got_psnr = np.asarray(metrics.psnr(jnp.asarray(a), jnp.asarray(b), data_range))
    got_ssim = np.asarray(metrics.ssim(jnp.asarray(a), jnp.asarray(b), data_range))
    for i in range(3):
      want_psnr = skm.peak_signal_noise_ratio(a[i], b[i], data_range=data_range)
      want_ssim = skm.structural_similarity(
        a[i],
        b[i],
        data_range=data_range,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        channel_axis=-1,
      )
      self.assertAlmostEqual(got_psnr[i], want_psnr, delta=1e-4 * abs(want_psnr))
      self.assertAlmostEqual(got_ssim[i], want_ssim, delta=1e-4)

  def test_identical_images(self):
    a = jnp.asarray(np.random.default_rng(0).random((2, 16, 16, 1)))
    self.assertTrue(np.all(np.isinf(np.asarray(metrics.psnr(a, a, 1.0)))))
    np.testing.assert_allclose(np.asarray(metrics.ssim(a, a, 1.0)), 1.0, atol=1e-6)

  def test_ssim_rejects_tiny_images(self):
    with self.assertRaisesRegex(ValueError, "larger than 10x10"):
      metrics.ssim(jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8, 8, 1)), 1.0)


class PixelScoresTest(absltest.TestCase):
  def test_average_precision_matches_sklearn_with_ties(self):
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 6, 500).astype(float)
    labels = rng.random(500) < 0.2
    self.assertAlmostEqual(
      metrics.average_precision(scores, labels),
      skl.average_precision_score(labels, scores),
      places=10,
    )
    self.assertTrue(np.isnan(metrics.average_precision(scores, np.zeros(500, bool))))

  def test_best_dice_threshold_against_a_brute_force_search(self):
    rng = np.random.default_rng(8)
    labels = rng.random(400) < 0.1
    scores = labels * rng.random(400) + rng.random(400) * 0.8
    threshold, dice = metrics.best_dice_threshold(scores, labels)
    brute = max((metrics.dice_at(scores, labels, t), t) for t in np.unique(scores))
    self.assertAlmostEqual(dice, brute[0], places=12)
    self.assertEqual(threshold, brute[1])
    self.assertAlmostEqual(metrics.dice_at(scores, labels, threshold), dice, places=12)
    self.assertEqual(metrics.dice_at([0.9, 0.1], [True, False], 0.5), 1.0)


if __name__ == "__main__":
  absltest.main()


class ClassificationMetricsTest(parameterized.TestCase):
  @parameterized.parameters(0, 1, 2, 3)
  def test_scores_match_sklearn(self, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    probs = np.clip(0.3 * labels + rng.random(200) * 0.7, 0, 1).round(2)  # Ties included.
    threshold = (0.5, 0.3, 0.7, 0.5)[seed]
    got = metrics.classification_metrics(labels, probs, threshold)
    pred = (probs >= threshold).astype(int)
    self.assertAlmostEqual(got["accuracy"], skl.accuracy_score(labels, pred))
    self.assertAlmostEqual(got["precision"], skl.precision_score(labels, pred))
    self.assertAlmostEqual(got["recall"], skl.recall_score(labels, pred))
    self.assertAlmostEqual(got["specificity"], skl.recall_score(labels, pred, pos_label=0))
    self.assertAlmostEqual(got["f1"], skl.f1_score(labels, pred))
    self.assertAlmostEqual(got["kappa"], skl.cohen_kappa_score(labels, pred))
    self.assertAlmostEqual(got["auc"], skl.roc_auc_score(labels, probs))
    self.assertEqual(got["warnings"], [])
    fpr, tpr, thresholds = metrics.roc_curve(labels, probs)
    want = skl.roc_curve(labels, probs, drop_intermediate=False)
    np.testing.assert_allclose(fpr, want[0])
    np.testing.assert_allclose(tpr, want[1])
    np.testing.assert_allclose(thresholds[1:], want[2][1:])

  def test_abnormal_is_the_positive_class(self):
    got = metrics.classification_metrics([1, 1, 0, 0], [0.9, 0.2, 0.1, 0.1])
    self.assertEqual((got["tp"], got["fn"], got["tn"], got["fp"]), (1, 1, 2, 0))
    self.assertEqual(got["recall"], 0.5)
    self.assertEqual(got["precision"], 1.0)

  def test_normal_positive_view_matches_sklearn_with_pos_label_0(self):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 300)
    probs = np.clip(0.3 * labels + rng.random(300) * 0.7, 0, 1)
    got = metrics.normal_positive(metrics.classification_metrics(labels, probs))
    pred = (probs >= 0.5).astype(int)
    self.assertAlmostEqual(got["precision"], skl.precision_score(labels, pred, pos_label=0))
    self.assertAlmostEqual(got["recall"], skl.recall_score(labels, pred, pos_label=0))
    self.assertAlmostEqual(got["f1"], skl.f1_score(labels, pred, pos_label=0))
    self.assertAlmostEqual(got["specificity"], skl.recall_score(labels, pred))
    self.assertAlmostEqual(got["kappa"], skl.cohen_kappa_score(labels, pred))

  def test_the_papers_vgg_row_is_a_normal_positive_confusion_matrix_of_mura_elbow_valid(self):
    # MURA elbow valid: 235 normal, 230 abnormal. 222 normals called normal, 67 abnormals too.
    labels = np.array([0] * 235 + [1] * 230)
    probs = np.array([0.0] * 222 + [1.0] * 13 + [0.0] * 67 + [1.0] * 163)
    got = metrics.normal_positive(metrics.classification_metrics(labels, probs))
    row = [round(100 * got[k], 2) for k in ("accuracy", "precision", "recall", "f1", "kappa")]
    self.assertEqual(row, [82.8, 76.82, 94.47, 84.73, 65.5])  # The paper's Table 2, VGG-19.

  @parameterized.parameters(0, 1)
  def test_one_class_gives_defined_values_and_a_warning(self, label):
    labels = np.full(10, label)
    probs = np.linspace(0, 1, 10)
    got = metrics.classification_metrics(labels, probs)
    for key in ("accuracy", "precision", "recall", "specificity", "f1", "kappa", "auc"):
      self.assertTrue(np.isfinite(got[key]), key)
    self.assertEqual(got["auc"], 0.5)
    self.assertNotEmpty(got["warnings"])
    pred = (probs >= 0.5).astype(int)
    self.assertAlmostEqual(got["accuracy"], skl.accuracy_score(labels, pred))
    fpr, tpr, _ = metrics.roc_curve(labels, probs)
    self.assertTrue(np.all(np.isfinite(fpr)) and np.all(np.isfinite(tpr)))

  def test_perfect_agreement_and_constant_predictions(self):
    perfect = metrics.classification_metrics([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8])
    self.assertEqual((perfect["kappa"], perfect["auc"], perfect["f1"]), (1.0, 1.0, 1.0))
    constant = metrics.classification_metrics([0, 1, 0, 1], [0.9, 0.9, 0.9, 0.9])
    self.assertEqual(constant["kappa"], skl.cohen_kappa_score([0, 1, 0, 1], [1, 1, 1, 1]))
    self.assertEqual(constant["auc"], 0.5)

  def test_bad_labels_are_refused(self):
    with self.assertRaisesRegex(ValueError, "0 \\(normal\\) or 1"):
      metrics.classification_metrics([0, 2], [0.1, 0.2])
    with self.assertRaisesRegex(ValueError, "differ in length"):
      metrics.classification_metrics([0, 1], [0.1])

  def test_study_level_averages_images_of_a_study(self):
    ids = [
      "valid/XR_ELBOW/p1/study1_positive/image1",
      "valid/XR_ELBOW/p1/study1_positive/image2",
      "valid/XR_ELBOW/p2/study1_negative/image1",
    ]
    names, labels, probs = metrics.study_level(
      ids, [1, 1, 0], [0.2, 0.6, 0.3], lambda i: i.rsplit("/", 1)[0]
    )
    self.assertEqual(names, sorted({i.rsplit("/", 1)[0] for i in ids}))
    np.testing.assert_allclose(probs, [0.4, 0.3])
    np.testing.assert_array_equal(labels, [1, 0])
    with self.assertRaisesRegex(ValueError, "different labels"):
      metrics.study_level(ids, [1, 0, 0], [0.2, 0.6, 0.3], lambda i: i.rsplit("/", 1)[0])
