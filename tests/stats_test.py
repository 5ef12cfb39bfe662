"""Table 2's uncertainty: the paired bootstrap and DeLong's test against independent references."""

import numpy as np
from absl.testing import absltest
from scipy import stats as scipy_stats
from sklearn import metrics as sk_metrics

from alenn_jax import metrics, stats


def _case(n=150, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  a = np.clip(0.5 + 0.25 * (labels - 0.5) + rng.normal(0, 0.25, n), 0, 1)
  b = np.clip(0.5 + 0.7 * (labels - 0.5) + rng.normal(0, 0.25, n), 0, 1)
  return labels, np.round(a, 2), np.round(b, 2)  # Rounded: ties, as real probabilities have.


def _slow_delong(labels, a, b):
  """DeLong et al. (1988) from the pairwise kernel psi, written out."""
  pos, neg = labels == 1, labels == 0
  comps = []
  for s in (a, b):
    psi = (s[pos][:, None] > s[neg][None]) + 0.5 * (s[pos][:, None] == s[neg][None])
    comps.append((psi.mean(axis=1), psi.mean(axis=0), psi.mean()))
  m, n = pos.sum(), neg.sum()
  s10 = np.cov(np.stack([c[0] for c in comps]))
  s01 = np.cov(np.stack([c[1] for c in comps]))
  var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
  z = (comps[1][2] - comps[0][2]) / np.sqrt(var)
  return comps[0][2], comps[1][2], z, 2 * scipy_stats.norm.sf(abs(z))


class DeLongTest(absltest.TestCase):
  def test_fast_form_equals_the_pairwise_definition_and_sklearn(self):
    labels, a, b = _case()
    got = stats.delong_test(labels, a, b)
    auc_a, auc_b, z, p = _slow_delong(labels, a, b)
    self.assertAlmostEqual(got["auc_a"], auc_a, places=12)
    self.assertAlmostEqual(got["auc_b"], auc_b, places=12)
    self.assertAlmostEqual(got["auc_a"], sk_metrics.roc_auc_score(labels, a), places=12)
    self.assertAlmostEqual(got["z"], z, places=9)
    self.assertAlmostEqual(got["p"], p, places=9)
    self.assertLess(got["p"], 0.05)  # b was built to rank better.

  def test_identical_scores_have_no_difference(self):
    labels, a, _ = _case()
    got = stats.delong_test(labels, a, a)
    self.assertEqual((got["delta"], got["p"]), (0.0, 1.0))

  def test_one_class_is_refused(self):
    with self.assertRaisesRegex(ValueError, "both classes"):
      stats.delong_test([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])


class BootstrapTest(absltest.TestCase):
  def test_every_resample_scores_as_classification_metrics(self):
    labels, a, _ = _case(n=60)
    index = stats.resample_indices(60, 5, seed=3)
    got = stats.scores(labels[index], a[index], 0.5)
    for r in range(5):
      want = metrics.classification_metrics(labels[index[r]], a[index[r]], 0.5)
      for m in stats.METRICS:
        self.assertAlmostEqual(float(got[m][r]), want[m], places=12, msg=m)

  def test_intervals_match_scipys_percentile_bootstrap(self):
    labels, a, b = _case(n=200, seed=1)
    ours = stats.paired_bootstrap(labels, a, b, n_resamples=20000, seed=0)

    def accuracy_delta(y, pa, pb, axis=-1):
      return np.mean((pb >= 0.5) == y, axis=axis) - np.mean((pa >= 0.5) == y, axis=axis)

    ref = scipy_stats.bootstrap(
      (labels, a, b),
      accuracy_delta,
      paired=True,
      vectorized=True,
      n_resamples=20000,
      method="percentile",
      random_state=np.random.default_rng(1),
    ).confidence_interval
    np.testing.assert_allclose(ours["accuracy"]["ci_delta"], (ref.low, ref.high), atol=0.01)
    self.assertAlmostEqual(ours["accuracy"]["delta"], accuracy_delta(labels, a, b), places=12)
    lo, hi = ours["auc"]["ci_with"]
    self.assertLess(lo, ours["auc"]["with"])
    self.assertGreater(hi, ours["auc"]["with"])

  def test_no_difference_when_both_runs_agree(self):
    labels, a, _ = _case()
    out = stats.paired_bootstrap(labels, a, a, n_resamples=500)
    for m in stats.METRICS:
      self.assertEqual(out[m]["delta"], 0.0)
      self.assertEqual(out[m]["ci_delta"], (0.0, 0.0))
      self.assertEqual(out[m]["p"], 1.0)

  def test_seeds_are_averaged(self):
    labels, a, b = _case()
    two = stats.paired_bootstrap(labels, np.stack([a, b]), np.stack([b, b]), n_resamples=200)
    whole = metrics.classification_metrics(labels, a)["kappa"]
    whole_b = metrics.classification_metrics(labels, b)["kappa"]
    self.assertAlmostEqual(two["kappa"]["without"], (whole + whole_b) / 2, places=12)


if __name__ == "__main__":
  absltest.main()
