"""How sure Table 2 is: a paired bootstrap over images (or studies) and DeLong's test (numpy).

  paired_bootstrap(labels, probs_without, probs_with, threshold)
      every Table 2 metric of both classifiers on the same resamples of the examples, with 95%
      percentile intervals for each and for their difference, and a bootstrap p for the difference
  delong_test(labels, probs_a, probs_b)
      the two AUCs of classifiers scored on the same examples, and DeLong's test of their
      difference (DeLong et al. 1988, in the fast form of Sun & Xu 2014)

Abnormal (1) is the positive class. `probs_*` may be `[n]` (one run) or `[S, n]` (S seeds of the
same configuration, scored on the same examples): the metrics are then each seed's, averaged over
seeds, on every resample, so the intervals are of the seed-mean.
"""

import math

import numpy as np
from scipy import stats as scipy_stats

from alenn_jax import metrics

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "kappa", "auc")
CONFIDENCE = 0.95


def _ratio(num, den):
  """num / den, 0 where den is 0 (as `metrics.classification_metrics`)."""
  return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def scores(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
  """Each metric of every row: `labels` and `probs` `[R, n]` -> {metric: `[R]`}.

  The same definitions as `metrics.classification_metrics`, except that a row with one class only
  has AUC NaN (it says nothing about ranking; intervals skip it) instead of 0.5.
  """
  labels = np.asarray(labels, np.int64)
  probs = np.asarray(probs, np.float64)
  pred = probs >= threshold
  pos = labels == 1
  tp = np.sum(pred & pos, axis=-1).astype(np.float64)
  fp = np.sum(pred & ~pos, axis=-1).astype(np.float64)
  tn = np.sum(~pred & ~pos, axis=-1).astype(np.float64)
  fn = np.sum(~pred & pos, axis=-1).astype(np.float64)
  n = tp + fp + tn + fn
  accuracy = _ratio(tp + tn, n)
  p_e = _ratio((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp), n**2)
  kappa = np.where(p_e < 1.0, (accuracy - p_e) / np.where(p_e < 1.0, 1.0 - p_e, 1.0), 0.0)
  auc = metrics.auc(pos, probs, absent=np.nan)
  return {
    "accuracy": accuracy,
    "precision": _ratio(tp, tp + fp),
    "recall": _ratio(tp, tp + fn),
    "specificity": _ratio(tn, tn + fp),
    "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    "kappa": kappa,
    "auc": auc,
  }


def resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
  """`[n_resamples, n]` draws with replacement of the example indices."""
  return np.random.default_rng(seed).integers(0, n, (n_resamples, n))


def _seed_mean(labels, probs, index, threshold) -> dict[str, np.ndarray]:
  """Metrics on the rows `index` `[R, n]`, averaged over the seeds of `probs` `[S, n]`."""
  per_seed = [scores(labels[index], p[index], threshold) for p in probs]
  return {m: np.mean([s[m] for s in per_seed], axis=0) for m in METRICS}


def _interval(values: np.ndarray) -> tuple[float, float]:
  tail = 100 * (1 - CONFIDENCE) / 2
  finite = values[np.isfinite(values)]
  if not finite.size:
    return (math.nan, math.nan)
  low, high = np.percentile(finite, (tail, 100 - tail))
  return float(low), float(high)


def _bootstrap_p(deltas: np.ndarray) -> float:
  """Two-sided p of a zero difference: twice the smaller share of resampled differences on either
  side of 0 (the interval's inversion), at most 1."""
  finite = deltas[np.isfinite(deltas)]
  if not finite.size:
    return math.nan
  share = min(np.mean(finite <= 0), np.mean(finite >= 0))
  return float(min(1.0, 2 * share))


def paired_bootstrap(
  labels,
  probs_without,
  probs_with,
  threshold: float = 0.5,
  n_resamples: int = 2000,
  seed: int = 0,
) -> dict[str, dict]:
  """Both classifiers' metrics on the same `n_resamples` resamples of the examples.

  Returns {metric: {"without", "with", "delta" (with - without, on all examples), "ci_without",
  "ci_with", "ci_delta" (95% percentile intervals), "p" (bootstrap, two-sided)}}.
  """
  labels = np.asarray(labels, np.int64).ravel()
  without = np.atleast_2d(np.asarray(probs_without, np.float64))
  with_ = np.atleast_2d(np.asarray(probs_with, np.float64))
  if without.shape[-1] != labels.size or with_.shape[-1] != labels.size:
    raise ValueError(
      f"labels ({labels.size}) and probabilities ({without.shape}, {with_.shape}) differ in length."
    )
  whole = np.arange(labels.size)[None]
  point_a = _seed_mean(labels, without, whole, threshold)
  point_b = _seed_mean(labels, with_, whole, threshold)
  index = resample_indices(labels.size, n_resamples, seed)
  boot_a = _seed_mean(labels, without, index, threshold)
  boot_b = _seed_mean(labels, with_, index, threshold)
  out = {}
  for m in METRICS:
    deltas = boot_b[m] - boot_a[m]
    out[m] = {
      "without": float(point_a[m][0]),
      "with": float(point_b[m][0]),
      "delta": float(point_b[m][0] - point_a[m][0]),
      "ci_without": _interval(boot_a[m]),
      "ci_with": _interval(boot_b[m]),
      "ci_delta": _interval(deltas),
      "p": _bootstrap_p(deltas),
    }
  return out


def _placements(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """DeLong's structural components: for each positive, the share of negatives it outranks (ties
  half); for each negative, the share of positives that outrank it."""
  m, n = len(positives), len(negatives)
  joint = scipy_stats.rankdata(np.concatenate([positives, negatives]))
  v10 = (joint[:m] - scipy_stats.rankdata(positives)) / n
  v01 = 1.0 - (joint[m:] - scipy_stats.rankdata(negatives)) / m
  return v10, v01


def delong_test(labels, probs_a, probs_b) -> dict[str, float]:
  """DeLong's test of AUC(b) - AUC(a) for two scores of the same examples.

  Returns {"auc_a", "auc_b", "delta", "se", "z", "p"} (p two-sided; 1 when the two scores rank
  every pair alike). Needs both classes.
  """
  labels = np.asarray(labels, np.int64).ravel()
  a, b = (np.asarray(p, np.float64).ravel() for p in (probs_a, probs_b))
  if not (labels.size == a.size == b.size):
    raise ValueError(f"labels ({labels.size}) and scores ({a.size}, {b.size}) differ in length.")
  pos, neg = labels == 1, labels == 0
  if not pos.any() or not neg.any():
    raise ValueError("DeLong's test needs both classes among the labels.")
  v10 = np.stack([_placements(s[pos], s[neg])[0] for s in (a, b)])  # [2, m]
  v01 = np.stack([_placements(s[pos], s[neg])[1] for s in (a, b)])  # [2, n]
  aucs = v10.mean(axis=1)
  s10 = np.atleast_2d(np.cov(v10)) if pos.sum() > 1 else np.zeros((2, 2))
  s01 = np.atleast_2d(np.cov(v01)) if neg.sum() > 1 else np.zeros((2, 2))
  contrast = np.array([-1.0, 1.0])
  var = contrast @ s10 @ contrast / pos.sum() + contrast @ s01 @ contrast / neg.sum()
  delta = float(aucs[1] - aucs[0])
  se = float(math.sqrt(max(var, 0.0)))
  if se == 0.0:
    z, p = 0.0, 1.0
  else:
    z = delta / se
    p = float(math.erfc(abs(z) / math.sqrt(2.0)))
  return {
    "auc_a": float(aucs[0]),
    "auc_b": float(aucs[1]),
    "delta": delta,
    "se": se,
    "z": z,
    "p": p,
  }
