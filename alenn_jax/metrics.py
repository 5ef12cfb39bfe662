"""Metrics: image quality in JAX (PSNR and SSIM, the paper's eq. 13-14) and classification in
numpy (accuracy, recall, precision, F1, Cohen's kappa: eq. 15-19; specificity, AUC, ROC: ours).

SSIM follows Wang et al. (2004) as scikit-image computes it with `gaussian_weights=True`: an 11 x 11
Gaussian window (sigma 1.5, truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, population covariances,
'reflect' borders, and the mean of the SSIM map over the image less a 5-pixel border. (The paper's
eq. 14 prints the denominators as products; they are sums, as in Wang et al.)
"""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats as scipy_stats

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def psnr(a: jax.Array, b: jax.Array, data_range: float) -> jax.Array:
  """Peak signal-to-noise ratio in dB of each image: `[B, H, W, C]` x2 -> `[B]` (inf if equal)."""
  mse = jnp.mean((a.astype(jnp.float32) - b.astype(jnp.float32)) ** 2, axis=(1, 2, 3))
  return 10.0 * jnp.log10(data_range**2 / mse)


def _gaussian_window() -> np.ndarray:
  radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  g = np.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
  return (g / g.sum()).astype(np.float32)


def _filter(x: jax.Array, window: np.ndarray) -> jax.Array:
  """Separable filtering over H and W with symmetric ('reflect' in scipy) borders."""
  r = len(window) // 2
  for axis in (1, 2):
    pad = [(0, 0)] * 4
    pad[axis] = (r, r)
    padded = jnp.pad(x, pad, mode="symmetric")
    n = x.shape[axis]
    x = sum(
      float(w) * jax.lax.slice_in_dim(padded, i, i + n, axis=axis) for i, w in enumerate(window)
    )
  return x


def ssim(a: jax.Array, b: jax.Array, data_range: float) -> jax.Array:
  """Mean structural similarity of each image: `[B, H, W, C]` x2 -> `[B]` (channels averaged)."""
  window = _gaussian_window()
  pad = len(window) // 2
  if a.shape[1] <= 2 * pad or a.shape[2] <= 2 * pad:
    raise ValueError(f"SSIM needs images larger than {2 * pad}x{2 * pad}, got {a.shape}.")
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  ux, uy = _filter(a, window), _filter(b, window)
  vx = _filter(a * a, window) - ux * ux
  vy = _filter(b * b, window) - uy * uy
  vxy = _filter(a * b, window) - ux * uy
  c1 = (SSIM_K1 * data_range) ** 2
  c2 = (SSIM_K2 * data_range) ** 2
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
  return jnp.mean(s[:, pad:-pad, pad:-pad, :], axis=(1, 2, 3))


# ----------------------------------------------------------------------------------------------
# Classification metrics (numpy). Abnormal = 1 = the positive class, always.


def _binary_inputs(labels, probs) -> tuple[np.ndarray, np.ndarray]:
  labels = np.asarray(labels).astype(np.int64).ravel()
  probs = np.asarray(probs, np.float64).ravel()
  if labels.shape != probs.shape:
    raise ValueError(f"labels {labels.shape} and probs {probs.shape} differ in length.")
  if labels.size and not np.isin(labels, (0, 1)).all():
    raise ValueError("labels must be 0 (normal) or 1 (abnormal).")
  return labels, probs


def _ratio(num: float, den: float, name: str, warnings_out: list) -> float:
  """num / den; 0 with a warning when den is 0 (scikit-learn's `zero_division` default)."""
  if den == 0:
    warnings_out.append(f"{name} is undefined (division by zero); reported as 0.")
    return 0.0
  return num / den


def roc_curve(labels, probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(fpr, tpr, thresholds) at every distinct score, highest first, starting at (0, 0) with
  threshold +inf, as scikit-learn's `roc_curve(drop_intermediate=False)`. A class that is absent
  gives a rate of NaN-free zeros (with a warning from `classification_metrics`)."""
  labels, probs = _binary_inputs(labels, probs)
  order = np.argsort(-probs, kind="mergesort")
  scores, truth = probs[order], labels[order]
  distinct = np.nonzero(np.diff(scores))[0]
  ends = np.concatenate([distinct, [len(scores) - 1]]) if len(scores) else np.zeros(0, np.int64)
  tps = np.cumsum(truth)[ends] if len(scores) else np.zeros(0)
  fps = (ends + 1) - tps
  tps = np.concatenate([[0], tps]).astype(np.float64)
  fps = np.concatenate([[0], fps]).astype(np.float64)
  thresholds = np.concatenate([[np.inf], scores[ends] if len(scores) else []])
  p, n = tps[-1], fps[-1]
  tpr = tps / p if p > 0 else np.zeros_like(tps)
  fpr = fps / n if n > 0 else np.zeros_like(fps)
  return fpr, tpr, thresholds


def auc(labels, scores, absent: float = 0.5):
  """The one AUROC of the project: of `scores` against 0/1 (or boolean) `labels`, along the last
  axis (leading axes are independent sets, e.g. bootstrap resamples). The Mann-Whitney statistic
  by mid-ranks, so a tie counts half: the trapezoid area under `roc_curve`. Where one class is
  missing it is undefined and `absent` is returned (0.5 in Table 2; NaN for pixel scores and
  bootstrap resamples). A float for 1-D input, else an array."""
  scores = np.asarray(scores, np.float64)
  positive = np.broadcast_to(np.asarray(labels).astype(bool), scores.shape)
  n_pos = positive.sum(axis=-1).astype(np.float64)
  n_neg = positive.shape[-1] - n_pos
  ranks = scipy_stats.rankdata(scores, axis=-1) if scores.size else scores  # Mid-ranks.
  u = np.sum(ranks * positive, axis=-1) - n_pos * (n_pos + 1) / 2
  with np.errstate(invalid="ignore", divide="ignore"):
    out = np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), absent)
  return float(out) if out.ndim == 0 else out


def classification_metrics(labels, probs, threshold: float = 0.5) -> dict:
  """Image-level (or study-level) scores of P(abnormal) `probs` against 0/1 `labels`.

  Returns a dict: accuracy, precision, recall (sensitivity), specificity, f1, kappa (Cohen's), auc,
  the confusion counts tp/fp/tn/fn, n, and `warnings` (a list of strings; not empty when a score
  was undefined, e.g. every label one class — then that score is reported as 0, or 0.5 for AUC,
  never NaN). A prediction is abnormal when prob >= threshold.
  """
  labels, probs = _binary_inputs(labels, probs)
  pred = (probs >= threshold).astype(np.int64)
  tp = int(np.sum((pred == 1) & (labels == 1)))
  fp = int(np.sum((pred == 1) & (labels == 0)))
  tn = int(np.sum((pred == 0) & (labels == 0)))
  fn = int(np.sum((pred == 0) & (labels == 1)))
  scores = _from_counts(tp, fp, tn, fn)
  if scores["n"] and labels.min() == labels.max():
    scores["warnings"].append(f"only one class (label {labels[0]}) present; AUC reported as 0.5.")
  scores["auc"] = auc(labels, probs) if scores["n"] else 0.5
  return scores


def _from_counts(tp: int, fp: int, tn: int, fn: int) -> dict:
  """classification_metrics' scores (without AUC) from the confusion counts."""
  n = tp + fp + tn + fn
  notes: list[str] = []
  accuracy = _ratio(tp + tn, n, "accuracy", notes)
  # Cohen's kappa: (p_o - p_e) / (1 - p_e), p_e from the marginals of truth and prediction.
  p_e = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / n**2 if n else 0.0
  if n and p_e < 1.0:
    kappa = (accuracy - p_e) / (1.0 - p_e)
  else:
    notes.append("kappa is undefined (chance agreement is 1); reported as 0.")
    kappa = 0.0
  return {
    "accuracy": accuracy,
    "precision": _ratio(tp, tp + fp, "precision", notes),
    "recall": _ratio(tp, tp + fn, "recall", notes),
    "specificity": _ratio(tn, tn + fp, "specificity", notes),
    "f1": _ratio(2 * tp, 2 * tp + fp + fn, "f1", notes),
    "kappa": float(kappa),
    "tp": tp,
    "fp": fp,
    "tn": tn,
    "fn": fn,
    "n": n,
    "warnings": notes,
  }


def normal_positive(scores: dict) -> dict:
  """`classification_metrics` scores recomputed with *normal* as the positive class (the same
  predictions): precision, recall, specificity and F1 change; accuracy, kappa and AUC do not."""
  out = _from_counts(scores["tn"], scores["fn"], scores["tp"], scores["fp"])
  out["auc"] = scores["auc"]
  return out


def study_level(ids, labels, probs, study_of) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Study-level (the MURA protocol): each study's probability is the mean of its images'.

  Args:
    ids, labels, probs: per image.
    study_of: image id -> study id.
  Returns:
    (study ids, study labels, study probabilities), studies sorted by id. A study whose images
    disagree on the label is a ValueError naming it.
  """
  groups: dict[str, list[int]] = {}
  for i, example_id in enumerate(ids):
    groups.setdefault(study_of(str(example_id)), []).append(i)
  labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
  names = sorted(groups)
  out_labels, out_probs = [], []
  for name in names:
    members = groups[name]
    values = set(labels[members].tolist())
    if len(values) != 1:
      raise ValueError(f"study {name!r} has images with different labels {sorted(values)}.")
    out_labels.append(values.pop())
    out_probs.append(float(np.mean(probs[members])))
  return names, np.asarray(out_labels, np.int64), np.asarray(out_probs)


# ----------------------------------------------------------------------------------------------
# Pixel-level localization scores (pooled pixels of many maps).


def _ranked_counts(scores, labels):
  """Distinct score values in decreasing order, with the true and false positives of calling
  every pixel at or above each value positive."""
  scores = np.asarray(scores, np.float64).ravel()
  labels = np.asarray(labels).ravel().astype(bool)
  order = np.argsort(-scores, kind="stable")
  scores, labels = scores[order], labels[order]
  last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]  # Last index of each value.
  tp = np.cumsum(labels)[last]
  fp = np.cumsum(~labels)[last]
  return scores[last], tp.astype(np.float64), fp.astype(np.float64)


def average_precision(scores, labels) -> float:
  """Area under the precision-recall curve as scikit-learn's `average_precision_score` computes
  it (sum over thresholds of recall increase times precision); NaN without positives."""
  _, tp, fp = _ranked_counts(scores, labels)
  if len(tp) == 0 or tp[-1] == 0:
    return float("nan")
  precision = tp / (tp + fp)
  recall = tp / tp[-1]
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_dice_threshold(scores, labels) -> tuple[float, float]:
  """(threshold, Dice) maximizing the pooled Dice 2TP / (2TP + FP + FN) of `scores >= threshold`
  against `labels`; (nan, nan) without positives."""
  values, tp, fp = _ranked_counts(scores, labels)
  if len(tp) == 0 or tp[-1] == 0:
    return float("nan"), float("nan")
  dice = 2.0 * tp / (tp + fp + tp[-1])
  best = int(np.argmax(dice))
  return float(values[best]), float(dice[best])


def dice_at(scores, labels, threshold: float) -> float:
  """Pooled Dice of `scores >= threshold` against `labels` (NaN when both are empty)."""
  predicted = np.asarray(scores).ravel() >= threshold
  labels = np.asarray(labels).ravel().astype(bool)
  tp = np.sum(predicted & labels)
  den = predicted.sum() + labels.sum()
  return float(2.0 * tp / den) if den else float("nan")
