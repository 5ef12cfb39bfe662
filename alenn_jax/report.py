"""Reports written into `workdir/report/`: Figure 3 and the localization table (stage 2a), Table 2
and Figure 4 (stage 2b).

Localization is scored where the dataset knows the lesion (phantoms' masks, FracAtlas's fracture
masks), on the difference map D (the LE map before clipping, so saturated pixels do not tie):

  pointing game   the maximum of the map lies within `tolerance` pixels of the lesion
  pixel AUROC     of the map's values, lesion pixels against the other pixels, pooled over the
                  abnormal images with a known lesion
  pixel AUPRC     average precision over the same pixels (unlike AUROC, it does not saturate on
                  easy background)
  Dice            pooled over every image of the split (normal images' detections are false
                  positives) at the map threshold with the best Dice on the threshold split
                  (the dataset's validation split), so the threshold is never fit on the scores
  inside/outside  mean LE inside and outside the lesion
  normals         mean and 99th percentile of LE over normal images (should stay low)

Reference maps sit beside ALENN's so the numbers mean something: a uniformly random map, a centre
prior, and two maps of the image alone, its blurred intensity and its gradient magnitude
(`image_priors`): maps that only follow brightness or edges score like these. All maps are scored
on the image's own extent inside the letterbox square; where the maps were kept to each image's
body (`config.localize.foreground`), on the body's pixels only, for every map (a lesion pixel
outside the body is a miss).
"""

import csv
import glob
import os
import time

import jax
import matplotlib
import numpy as np
from absl import logging
from scipy import ndimage
from scipy import stats as scipy_stats

from alenn_jax import (
  additions,
  checkpointing,
  image_io,
  image_priors,
  input_pipeline,
  le_maps,
  metrics,
  paper_values,
  predictions,
  stats,
)
from alenn_jax.progress import format_seconds

matplotlib.use("Agg")
import matplotlib.pyplot as plt

BY_KIND_CSV = "localization_by_kind.csv"  # Written where the dataset records lesion kinds.
FOREGROUND_CSV = "foreground.csv"  # Written where the maps were kept to each image's body.
BY_KIND_COLUMNS = (
  "lesion_kind",
  "method",
  "pointing_game",
  "pixel_auroc",
  "pixel_auprc",
  "dice",
  "abnormal_with_lesion",
)


def pointing_hit(score_map: np.ndarray, lesion: np.ndarray, tolerance: int) -> bool:
  """Whether the map's maximum falls within `tolerance` pixels of the lesion."""
  y, x = np.unravel_index(np.argmax(score_map), score_map.shape)
  near = ndimage.binary_dilation(lesion > 0, iterations=tolerance) if tolerance > 0 else lesion > 0
  return bool(near[y, x])


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve (ties counted half), by ranks; NaN when one class is absent."""
  scores = np.asarray(scores, np.float64).ravel()
  labels = np.asarray(labels).ravel().astype(bool)
  n_pos, n_neg = labels.sum(), (~labels).sum()
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = scipy_stats.rankdata(scores)  # Mid-ranks for ties.
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


OUTSIDE = -1e30  # The score of a pixel outside the scored ones: below every map's values, and
# finite, so such pixels tie with each other (differences of -inf are NaN, never a tie).


def scored_map(ex: dict, score_map: np.ndarray) -> np.ndarray:
  """`score_map` as scored: OUTSIDE (below every value) outside `ex["scored"]`, the pixels a
  foreground keeps, where the example has one."""
  scored = ex.get("scored")
  return score_map if scored is None else np.where(scored, score_map, OUTSIDE)


def _pixels(examples, maps, with_normals: bool):
  """Pooled (scores, labels) of the abnormal images with a known lesion (and the normal ones):
  every pixel, or where an example has `scored` pixels, those and its lesion pixels (a lesion
  pixel outside them scores OUTSIDE, a miss for every map)."""
  scores, labels = [], []
  for ex in examples:
    if (ex["label"] == 1 and ex["lesion"].any()) or (with_normals and ex["label"] == 0):
      lesion = ex["lesion"] > 0
      keep = lesion | ex["scored"] if ex.get("scored") is not None else np.ones_like(lesion)
      scores.append(scored_map(ex, np.asarray(maps[ex["id"]]))[keep])
      labels.append(lesion[keep])
  if not scores:
    return np.zeros(0), np.zeros(0, bool)
  return np.concatenate(scores), np.concatenate(labels)


def dice_thresholds(examples, maps_by_method) -> dict[str, float]:
  """Per method, the map threshold with the best pooled Dice on `examples` (every image)."""
  return {
    method: metrics.best_dice_threshold(*_pixels(examples, maps, with_normals=True))[0]
    for method, maps in maps_by_method.items()
  }


def score_maps(examples, maps_by_method, scale, tolerance: int, thresholds=None) -> list[dict]:
  """One row of scores per method. `examples`: dicts with id, label, lesion (cropped [h, w]);
  `thresholds`: per method, the Dice threshold chosen elsewhere (default: on `examples`)."""
  thresholds = thresholds or dice_thresholds(examples, maps_by_method)
  rows = []
  for method, maps in maps_by_method.items():
    hits, inside, outside, normal_values = [], [], [], []
    for ex in examples:
      d = maps[ex["id"]]
      le = le_maps.le_map(d, scale) if method == "ALENN" else d
      scored = ex.get("scored")
      scored = np.ones(d.shape, bool) if scored is None else scored
      if ex["label"] == 1 and ex["lesion"].any():
        hits.append(pointing_hit(scored_map(ex, d), ex["lesion"], tolerance))
        inside.append(le[ex["lesion"] > 0].mean())
        outside.append(le[(ex["lesion"] == 0) & scored].mean())
      elif ex["label"] == 0:
        normal_values.append(le[scored])
    normals = np.concatenate(normal_values) if normal_values else np.zeros(0)
    scores, labels = _pixels(examples, maps, with_normals=False)
    rows.append(
      {
        "method": method,
        "pointing_game": float(np.mean(hits)) if hits else float("nan"),
        "pixel_auroc": auroc(scores, labels) if hits else float("nan"),
        "pixel_auprc": metrics.average_precision(scores, labels) if hits else float("nan"),
        "dice": metrics.dice_at(*_pixels(examples, maps, with_normals=True), thresholds[method])
        if hits
        else float("nan"),
        "le_inside_lesion": float(np.mean(inside)) if inside else float("nan"),
        "le_outside_lesion": float(np.mean(outside)) if outside else float("nan"),
        "normal_le_mean": float(normals.mean()) if normals.size else float("nan"),
        "normal_le_p99": float(np.percentile(normals, 99)) if normals.size else float("nan"),
        "abnormal_with_lesion": len(hits),
        "normal": len(normal_values),
      }
    )
  return rows


def kind_rows(examples, maps_by_method, scale, tolerance: int, kinds, thresholds=None):
  """`score_maps` for each lesion kind: the abnormal images of that kind beside every normal
  image, one row per kind and method with a leading `lesion_kind`. `kinds`: id -> kind."""
  normals = [ex for ex in examples if ex["label"] == 0]
  found = sorted({kinds[ex["id"]] for ex in examples if ex["label"] == 1 and ex["lesion"].any()})
  rows = []
  for kind in found:
    subset = [ex for ex in examples if ex["label"] == 1 and kinds[ex["id"]] == kind] + normals
    for row in score_maps(subset, maps_by_method, scale, tolerance, thresholds):
      rows.append({"lesion_kind": kind, **row})
  return rows


def _write_scores(path: str, rows: list[dict]) -> None:
  """Score rows as CSV, floats to four decimals."""
  formatted = [{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]
  image_io.write_csv(path, formatted, list(rows[0]))


def _collect(config, mesh, split: str) -> list[dict]:
  """Images, labels and lesion masks of `split`, cropped to each image's own extent; read by
  this process alone (`mesh`: its own devices)."""
  examples = []
  indices = input_pipeline.selected_indices(config.data, split, labels=(0, 1))
  for batch in input_pipeline.batches_alone(config.data, mesh, split, indices):
    images = np.asarray(jax.device_get(batch["image"]))[..., 0]
    lesions = np.asarray(jax.device_get(batch["lesion_mask"]))[..., 0]
    boxes, labels = np.asarray(batch["valid_box"]), np.asarray(batch["label"])
    for i, weight in enumerate(np.asarray(batch["weight"])):
      if weight > 0:
        top, left, h, w = boxes[i]
        examples.append(
          {
            "id": str(batch["id"][i]),
            "label": int(labels[i]),
            "image": (images[i, top : top + h, left : left + w] + 1.0) / 2.0,
            "lesion": lesions[i, top : top + h, left : left + w],
          }
        )
  return examples


def overlay_title(d: np.ndarray, lesion: np.ndarray, tolerance: int) -> str:
  """Figure 3's overlay caption: where the + (the largest D) lies against the true lesion."""
  if not lesion.any():
    return "overlay (+: largest D)"
  where = "on" if pointing_hit(d, lesion, tolerance) else "off"
  return f"overlay (+: largest D, {where} the lesion)"


def figure3(examples, d_maps, scale, path: str, title: str, tolerance: int = 2) -> None:
  """Rows of original, difference D, LE heat map and overlay (with the true lesion outline). The
  overlay marks where D is largest, the point the pointing game scores, and says whether it falls
  within `tolerance` px of the lesion."""
  n = len(examples)
  fig, axes = plt.subplots(n, 4, figsize=(10, 2.6 * n), squeeze=False)
  for row, ex in zip(axes, examples, strict=True):
    d = d_maps[ex["id"]]
    le = le_maps.le_map(d, scale)
    row[0].imshow(ex["image"], cmap="gray", vmin=0, vmax=1)
    row[0].set_title(f"{ex['id']}", fontsize=7)
    row[1].imshow(d, cmap="magma", vmin=0, vmax=max(scale * 1.5, 1e-6))
    row[1].set_title("difference D", fontsize=8)
    row[2].imshow(le, cmap="jet", vmin=0, vmax=1)
    row[2].set_title("LE", fontsize=8)
    row[3].imshow(ex["image"], cmap="gray", vmin=0, vmax=1)
    row[3].imshow(le, cmap="jet", vmin=0, vmax=1, alpha=0.45)
    y, x = np.unravel_index(np.argmax(d), d.shape)
    row[3].plot([x], [y], marker="+", color="white", markersize=10, markeredgewidth=1.5)
    if ex["lesion"].any():
      row[3].contour(ex["lesion"] > 0, levels=[0.5], colors="white", linewidths=0.8)
    row[3].set_title(overlay_title(d, ex["lesion"], tolerance), fontsize=8)
    for ax in row:
      ax.axis("off")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  with image_io.atomic_open(path, "wb") as f:
    fig.savefig(f, dpi=90, format="png")
  plt.close(fig)


def _reference_maps(examples, d_maps, seed: int) -> dict[str, dict[str, np.ndarray]]:
  """ALENN's maps beside a uniformly random map, a centre prior and the image-only maps of
  `image_priors` (its intensity and its gradient magnitude), for `examples`."""
  rng = np.random.default_rng(seed)
  return {
    "ALENN": d_maps,
    "random": {ex["id"]: rng.random(ex["image"].shape) for ex in examples},
    "centre prior": {ex["id"]: image_priors.centre_prior(*ex["image"].shape) for ex in examples},
    "intensity": {ex["id"]: image_priors.intensity_map(ex["image"]) for ex in examples},
    "gradient": {ex["id"]: image_priors.gradient_map(ex["image"]) for ex in examples},
  }


def foreground_share(examples, bodies, split: str) -> dict:
  """The share of the pixels, and of the lesion pixels, that the foregrounds `bodies` (id ->
  boolean `[h, w]`) keep, over `examples` (of `split`)."""
  kept = [bodies[ex["id"]] for ex in examples]
  lesion = [bodies[ex["id"]][ex["lesion"] > 0] for ex in examples]
  lesion = np.concatenate(lesion) if lesion else np.zeros(0, bool)
  return {
    "split": split,
    "images": len(kept),
    "image_kept": f"{np.concatenate([b.ravel() for b in kept]).mean():.4f}",
    "lesion_kept": f"{lesion.mean():.4f}" if lesion.size else "nan",
  }


def localization_report(config, workdir: str, mesh, scale: float) -> list[dict]:
  """Figure 3 and `localization.csv` for `config.report.split`; the Dice thresholds are chosen
  on `config.data.eval_split`."""
  split = config.report.split
  d_maps = le_maps.read_difference_maps(workdir, split)
  examples = _collect(config, mesh, split)
  report_dir = os.path.join(workdir, "report")
  for label, name in ((0, "normal"), (1, "abnormal")):
    chosen = [ex for ex in examples if ex["label"] == label][: config.report.num_examples]
    if chosen:
      figure3(
        chosen,
        d_maps,
        scale,
        os.path.join(report_dir, f"fig3_{name}.png"),
        f"{name} ({split}; white outline: true lesion)",
        config.report.tolerance,
      )
  bodies = le_maps.read_foreground(workdir, split)
  if bodies:  # What is not patient is not scored, for any map.
    kept = foreground_share(examples, bodies, split)
    image_io.write_csv(os.path.join(report_dir, FOREGROUND_CSV), [kept], list(kept))
    for ex in examples:
      ex["scored"] = bodies[ex["id"]]
  if not any(ex["label"] == 1 and ex["lesion"].any() for ex in examples):
    logging.warning(
      "localization not scored: no abnormal image of %s's %r split has a lesion mask (the maps, "
      "the LE scale and Figure 3 are written; scores need masks, e.g. a folder dataset's masks/).",
      config.data.name,
      split,
    )
    return []
  threshold_split = config.data.eval_split
  threshold_examples, threshold_maps = examples, d_maps
  if threshold_split != split:
    threshold_examples = _collect(config, mesh, threshold_split)
    threshold_maps = le_maps.read_difference_maps(workdir, threshold_split)
    threshold_bodies = le_maps.read_foreground(workdir, threshold_split)
    for ex in threshold_examples:
      ex["scored"] = threshold_bodies.get(ex["id"])
  thresholds = dice_thresholds(
    threshold_examples, _reference_maps(threshold_examples, threshold_maps, seed=1)
  )
  references = _reference_maps(examples, d_maps, seed=0)
  rows = score_maps(examples, references, scale, config.report.tolerance, thresholds)
  for row in rows:
    row["dice_threshold_split"] = threshold_split
  _write_scores(os.path.join(report_dir, "localization.csv"), rows)
  kinds = input_pipeline.split_lesion_kinds(config.data, split)
  if kinds is not None:  # The phantoms: which kinds of lesion the maps find.
    by_kind = kind_rows(examples, references, scale, config.report.tolerance, kinds, thresholds)
    _write_scores(os.path.join(report_dir, BY_KIND_CSV), by_kind)
  for row in rows:
    logging.info(
      "localization %-12s pointing %.3f AUROC %.3f AUPRC %.3f Dice %.3f LE in/out %.3f/%.3f "
      "normals mean %.3f p99 %.3f",
      row["method"],
      row["pointing_game"],
      row["pixel_auroc"],
      row["pixel_auprc"],
      row["dice"],
      row["le_inside_lesion"],
      row["le_outside_lesion"],
      row["normal_le_mean"],
      row["normal_le_p99"],
    )
  return rows


# ----------------------------------------------------------------------------------------------
# Stage 2b: Table 2 and Figure 4.

TABLE2_COLUMNS = (
  "Backbone",
  "With LE",
  "Accuracy",
  "Precision",
  "Recall",
  "Specificity",
  "F1",
  "Kappa",
  "AUC",
  "n",
)
TABLE2_METRICS = tuple((c, c.lower()) for c in TABLE2_COLUMNS[2:-1])  # (column, scores key).
TABLE2_NORMAL_CSV = "table2_normal_positive.csv"  # The paper's convention (see paper_values).
BACKBONE_NAMES = {
  "vgg19": "VGG-19",
  "resnet50": "ResNet-50",
  "densenet121": "DenseNet-121",
  "inception_v3": "Inception-v3",
}


def _run_key(r: dict):
  """Table 2's order: backbone (the paper's order), then fusion with `none` first."""
  order = list(BACKBONE_NAMES)
  backbone = order.index(r["backbone"]) if r["backbone"] in order else len(order)
  return (backbone, r["backbone"], r["fusion"] != "none", r["fusion"])


def group_runs(results: list[dict]) -> list[list[dict]]:
  """Runs grouped by (backbone, fusion), in Table 2's order; a group holds one run per seed."""
  groups: dict[tuple, list[dict]] = {}
  for r in sorted(results, key=lambda r: (_run_key(r), r.get("seed", 0))):
    groups.setdefault((r["backbone"], r["fusion"]), []).append(r)
  return list(groups.values())


def table2_rows(results: list[dict], level: str = "image", positive: str = "abnormal") -> list[dict]:
  """One row per backbone and fusion, as in the paper's Table 2: the mean over seeds, with each
  metric's standard deviation over seeds in an `sd` column when a group has several. `positive`
  "normal" recomputes each run's scores with normal as the positive class."""
  view = (lambda s: s) if positive == "abnormal" else metrics.normal_positive
  groups = [[r for r in g if level in r] for g in group_runs(results)]
  groups = [g for g in groups if g]
  several = any(len(g) > 1 for g in groups)
  rows = []
  for group in groups:
    first = group[0]
    le = "no" if first["fusion"] == "none" else f"yes ({first['fusion']})"
    row = {"Backbone": BACKBONE_NAMES.get(first["backbone"], first["backbone"]), "With LE": le}
    for column, key in TABLE2_METRICS:
      values = [view(r[level])[key] for r in group]
      row[column] = f"{np.mean(values):.4f}"
      if several:
        row[f"{column} sd"] = f"{np.std(values, ddof=1) if len(values) > 1 else 0.0:.4f}"
    row["n"] = first[level]["n"]
    if several:
      row["Seeds"] = len(group)
    rows.append(row)
  return rows


def figure4(results: list[dict], path: str, title: str) -> None:
  """ROC curves, one panel per backbone, with and without LE, AUC in the legend."""
  backbones = [b for b in BACKBONE_NAMES if any(r["backbone"] == b for r in results)]
  backbones += sorted({r["backbone"] for r in results} - set(backbones))
  cols = min(len(backbones), 4)
  fig, axes = plt.subplots(1, cols, figsize=(3.6 * cols, 3.6), squeeze=False)
  for ax, backbone in zip(axes[0], backbones, strict=True):
    for r in sorted(
      (r for r in results if r["backbone"] == backbone), key=lambda r: r["fusion"] != "none"
    ):
      p = r["predictions"]
      fpr, tpr, _ = metrics.roc_curve(p["labels"], p["probs"])
      auc = metrics.auc(p["labels"], p["probs"])
      label = "without LE" if r["fusion"] == "none" else f"with LE ({r['fusion']})"
      ax.plot(fpr, tpr, lw=1.5, label=f"{label}, AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_title(BACKBONE_NAMES.get(backbone, backbone))
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate (abnormal)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  with image_io.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)


def table2(run_dirs: list[str], report_dir: str, split: str) -> list[dict]:
  """Table 2 (`table2.csv`, plus `table2_study.csv` for MURA) and Figure 4 (`fig4_roc.png`) from
  the classifier runs in `run_dirs` that have scores on `split`. Returns the image-level rows."""
  results = [r for r in (predictions.read_results(d, split) for d in run_dirs) if r is not None]
  if not results:
    raise ValueError(f"no classifier results on split {split!r} in {run_dirs}.")
  rows = table2_rows(results)
  image_io.write_csv(os.path.join(report_dir, "table2.csv"), rows, list(rows[0]))
  normal = table2_rows(results, positive="normal")
  image_io.write_csv(os.path.join(report_dir, TABLE2_NORMAL_CSV), normal, list(normal[0]))
  study_rows = table2_rows(results, "study")
  if study_rows:
    image_io.write_csv(os.path.join(report_dir, "table2_study.csv"), study_rows, list(rows[0]))
  dataset = results[0]["dataset"]
  figure4(
    [group[0] for group in group_runs(results)],  # The first seed's curves.
    os.path.join(report_dir, "fig4_roc.png"),
    f"ROC on {dataset} {split} (positive class: abnormal)",
  )
  return rows


LE_EFFECT_COLUMNS = (
  "backbone",
  "fusion",
  "metric",
  "without",
  "with",
  "delta",
  "ci_low",
  "ci_high",
  "p",
  "test",
  "without_ci_low",
  "without_ci_high",
  "with_ci_low",
  "with_ci_high",
  "seeds",
  "n",
)


def _paired(group: list[dict], ids: list[str]) -> np.ndarray:
  """`[seeds, n]` probabilities of a group's runs, in the order of `ids`."""
  out = []
  for r in group:
    p = r["predictions"]
    by_id = dict(zip(p["ids"], p["probs"], strict=True))
    missing = [i for i in ids if i not in by_id]
    if missing:
      raise ValueError(f"{r['run_dir']} has no prediction for {missing[0]!r}; rerun its eval.")
    out.append([by_id[i] for i in ids])
  return np.asarray(out, np.float64)


def le_effect_rows(results: list[dict], n_resamples: int, level: str = "image") -> list[dict]:
  """Each backbone's runs with LE against its runs without, on the same examples: the paired
  bootstrap (`stats.paired_bootstrap`, over images, or over studies at the study level) for every
  metric, and DeLong's test for the AUC (on the seed-mean probabilities)."""
  groups = group_runs(results)
  rows = []
  for base in groups:
    if base[0]["fusion"] != "none":
      continue
    p = base[0]["predictions"]
    ids, labels = list(p["ids"]), np.asarray(p["labels"])
    without = _paired(base, ids)
    for other in groups:
      if other[0]["backbone"] != base[0]["backbone"] or other[0]["fusion"] == "none":
        continue
      with_ = _paired(other, ids)
      y, a, b = labels, without, with_
      if level == "study":
        _, y, a = _study_arrays(ids, labels, without)
        _, _, b = _study_arrays(ids, labels, with_)
      if len(set(y.tolist())) < 2:
        continue  # Nothing to rank: one class only.
      boot = stats.paired_bootstrap(y, a, b, base[0]["threshold"], n_resamples)
      delong = stats.delong_test(y, a.mean(axis=0), b.mean(axis=0))
      for metric, r in boot.items():
        is_auc = metric == "auc"
        rows.append(
          {
            "backbone": base[0]["backbone"],
            "fusion": other[0]["fusion"],
            "metric": metric,
            "without": f"{r['without']:.4f}",
            "with": f"{r['with']:.4f}",
            "delta": f"{r['delta']:+.4f}",
            "ci_low": f"{r['ci_delta'][0]:+.4f}",
            "ci_high": f"{r['ci_delta'][1]:+.4f}",
            "p": f"{delong['p'] if is_auc else r['p']:.4f}",
            "test": "DeLong" if is_auc else "bootstrap",
            "without_ci_low": f"{r['ci_without'][0]:.4f}",
            "without_ci_high": f"{r['ci_without'][1]:.4f}",
            "with_ci_low": f"{r['ci_with'][0]:.4f}",
            "with_ci_high": f"{r['ci_with'][1]:.4f}",
            "seeds": f"{len(base)}/{len(other)}",
            "n": len(y),
          }
        )
  return rows


def _study_arrays(ids, labels, probs):
  """Study-level arrays of `[seeds, n]` image probabilities: (studies, labels, `[seeds, m]`)."""
  out = [metrics.study_level(ids, labels, p, predictions.mura_study) for p in probs]
  return out[0][0], out[0][1], np.stack([o[2] for o in out])


def le_effect(run_dirs: list[str], report_dir: str, split: str, n_resamples: int) -> list[dict]:
  """`table2_le_effect.csv` (and `table2_le_effect_study.csv` where Table 2 has a study level):
  one row per backbone x fusion x metric with the with-minus-without difference, its 95%
  interval and p."""
  results = [r for r in (predictions.read_results(d, split) for d in run_dirs) if r is not None]
  rows = le_effect_rows(results, n_resamples)
  image_io.write_csv(os.path.join(report_dir, "table2_le_effect.csv"), rows, LE_EFFECT_COLUMNS)
  if any("study" in r for r in results):
    study = le_effect_rows(results, n_resamples, "study")
    path = os.path.join(report_dir, "table2_le_effect_study.csv")
    image_io.write_csv(path, study, LE_EFFECT_COLUMNS)
  return rows


def le_effect_sentences(rows: list[dict]) -> list[str]:
  """Each backbone's LE effect in words, from the AUC and kappa rows of `le_effect_rows`."""
  out = []
  by_run: dict[tuple, dict] = {}
  for r in rows:
    by_run.setdefault((r["backbone"], r["fusion"]), {})[r["metric"]] = r
  for (backbone, fusion_mode), found in by_run.items():
    parts = []
    verdicts = []
    for metric, name in (("auc", "AUC"), ("kappa", "kappa")):
      r = found.get(metric)
      if r is None:
        continue
      low, high = float(r["ci_low"]), float(r["ci_high"])
      parts.append(
        f"{name} {r['without']} → {r['with']} (Δ {r['delta']}, 95% CI {r['ci_low']} to "
        f"{r['ci_high']}, {r['test']} p = {float(r['p']):.3f})"
      )
      verdicts.append("raised" if low > 0 else "lowered" if high < 0 else None)
    if not parts:
      continue
    if verdicts and all(v == "raised" for v in verdicts):
      verdict = "LE raised both, beyond the 95% intervals"
    elif verdicts and all(v == "lowered" for v in verdicts):
      verdict = "LE lowered both, beyond the 95% intervals"
    elif any(verdicts):
      verdict = (
        "mixed: "
        + ", ".join(f"{name} {v}" for name, v in zip(("AUC", "kappa"), verdicts, strict=False) if v)
        + ", the other within its interval"
      )
    else:
      verdict = "no difference this test set can resolve (every interval includes 0)"
    name = BACKBONE_NAMES.get(backbone, backbone)
    out.append(f"- **{name}**, LE by `{fusion_mode}`: {'; '.join(parts)}: {verdict}.")
  return out


def classifier_runs(root: str) -> list[str]:
  """Run directories under `root` (each with a report/metrics_*.json), sorted."""
  found = glob.glob(os.path.join(root, "*", "report", "metrics_*.json"))
  return sorted({os.path.dirname(os.path.dirname(p)) for p in found})


# ----------------------------------------------------------------------------------------------
# The pipeline's report.md: every number is read from the files the stages wrote.


def _read_csv(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return list(csv.DictReader(f))


def _by_kind_section(report_dir: str) -> list[str]:
  """report.md's lines for `localization_by_kind.csv`, where the localize job wrote one."""
  path = os.path.join(report_dir, BY_KIND_CSV)
  if not os.path.exists(path):
    return []
  rows = [{k: row[k] for k in BY_KIND_COLUMNS} for row in _read_csv(path)]
  return [
    "The same scores for each kind of lesion (that kind's abnormal images beside every normal "
    "one; Dice at the same thresholds):",
    "",
    _markdown_table(rows),
    "",
  ]


def _foreground_section(report_dir: str) -> list[str]:
  """report.md's line on which pixels ALENN's maps keep, where they were kept to the body."""
  path = os.path.join(report_dir, FOREGROUND_CSV)
  if not os.path.exists(path):
    return [
      "Every pixel of each image's own extent (inside the letterbox square) is scored, for "
      "every map; ALENN's maps keep every pixel (`localize.foreground` none).",
      "",
    ]
  row = _read_csv(path)[0]
  return [
    "ALENN's D is kept to each image's body (`localize.foreground` body), and every map is "
    "scored on the body's pixels only (the pointing game's maximum, the pixel pools, the means): "
    "air, markers, labels and film-edge bands are not patient. A lesion pixel outside the body "
    f"counts as a miss for every map. On `{row['split']}` the body holds "
    f"{float(row['image_kept']):.1%} of the pixels and {float(row['lesion_kept']):.1%} of the "
    "lesion pixels.",
    "",
  ]


def _markdown_table(rows: list[dict]) -> str:
  if not rows:
    return "_(not produced)_"
  columns = list(rows[0])
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def _method_line(config) -> str:
  """report.md's line on which additions to the paper's text were on (alenn_jax.additions)."""
  on = additions.on(config)
  if config.data.eval_split != input_pipeline.SELECTION:  # The carve did not happen.
    on = [name for name in on if name != "selection carve"]
  if not on:
    return "- Method: the paper's text, with no addition on (gaps filled as DESIGN.md says)."
  return (
    f"- Method: the paper's text with these additions on: {', '.join(on)} (README: \"the paper "
    "/ what we add\"; `configs/pipeline.py:paper` turns every one off)."
  )


def _normal_positive_section(report_dir: str) -> list[str]:
  """Table 2 with normal as the positive class, beside the paper's Table 2."""
  rows = _read_csv(os.path.join(report_dir, TABLE2_NORMAL_CSV))
  if not rows:
    return []
  return [
    "**In the paper's convention.** Each row of the paper's Table 2 reproduces exactly from a "
    "confusion matrix of 465 images with 235 positives, the number of *normal* images in MURA "
    "elbow's validation split: the paper seems to have scored normal as the positive class (its "
    "text does not say). The same predictions as above with normal as positive (precision, "
    f"recall, specificity and F1 change; `{TABLE2_NORMAL_CSV}`):",
    "",
    _markdown_table(rows),
    "",
    "The paper's Table 2 (MURA elbow validation; LE read as the second row of each backbone):",
    "",
    _markdown_table(paper_values.table2_rows()),
    "",
  ]


def write_report_md(config, workdir: str, report_dir: str, plan, timings: dict) -> str:
  """W/report/report.md: what ran, Table 1, the localization table, Figure 3, Table 2, Figure 4."""
  data = config.data
  # The LE-map settings as the localize stage resolved them (window, stride: stage 1's defaults).
  localize = checkpointing.read_stored_config(
    os.path.join(workdir, "localize"), "localize", "localize run"
  )
  devices = jax.devices()
  lines = [
    "# ALENN report",
    "",
    f"Workdir `{workdir}`; written {time.strftime('%Y-%m-%d %H:%M:%S')}. The full configuration is "
    "in `../config.json`. Abnormal (label 1) is the positive class throughout.",
    "",
    "## What ran",
    "",
    f"- Data: `{data.name}` from `{data.data_dir}`, letterboxed to {data.image_size} px for "
    f"stage 1 and the LE maps; classifiers at "
    + ", ".join(f"{b} {config.stage2[b].data.image_size} px" for b in config.backbones)
    + ".",
    _method_line(config),
    f"- Devices: {len(devices)} x {devices[0].platform} ({devices[0].device_kind}), "
    f"{jax.process_count()} process(es).",
    f"- Stage 1: model {dict(config.stage1.model)}, {config.stage1.phase1_steps} + "
    f"{config.stage1.phase2_steps} steps at batch {config.stage1.data.batch_size}; RTV "
    + (
      "structure solved once per training image and augmented with it (per_image)."
      if config.stage1.get("structure", "in_step") == "per_image"
      else "structure solved for every augmented batch inside the step (in_step)."
    ),
    f"- LE maps: {localize.method}"
    + (f" (gap {localize.gap} px)" if localize.method == "multi_window" else "")
    + (f" (crop {localize.context} px)" if localize.method == "context" else "")
    + f", window {localize.window} px, stride {localize.stride} px"
    + (
      f" over a {localize.pad}-px reflected border"
      if localize.get("pad", 0)
      else ", no padded border"
    )
    + (
      f"; each window's error less its local mean (Gaussian σ {localize.highpass:g} px)"
      if localize.get("highpass", 0)
      else "; each window's plain |I - I_k| (our reading of the text's \"relative error\")"
    )
    + (
      f", less what the repainting matches within {localize.shift} px"
      if localize.get("shift", 0)
      else ""
    )
    + (f", D blurred (σ {localize.smooth:g} px)" if localize.get("smooth", 0) else "")
    + (
      ", D kept to each image's body (zero on the air, markers, labels and film-edge bands "
      "around it; `localize.foreground`)"
      if localize.get("foreground", "none") == "body"
      else ""
    )
    + (
      f", then divided by the error training normals of the same appearance get (k-means of "
      f"{localize.normal_error.patch}x{localize.normal_error.patch}-px neighbourhoods, "
      f"{localize.normal_error.codes} classes, from {localize.normal_error.images} normals)"
      if localize.get("normal_error") is not None and localize.normal_error.patch
      else ""
    )
    + "; scale = "
    f"the {localize.percentile:g}th percentile of D over the training normals"
    + (
      f"; cross-fitted: {localize.get('folds', 1)} stage 1 generators, each trained without one "
      "fold of the train patients, each image mapped by the one that never saw it."
      if localize.get("folds", 1) > 1
      else "; one generator, fit on the training normals themselves (in-sample maps)."
    ),
    f"- Classifiers: {', '.join(config.backbones)}, each with fusion "
    f"{' and '.join(config.fusions)}; checkpoints selected by kappa on `{data.eval_split}`, "
    f"scored on `{config.test_split}`"
    + (
      " (optimistic: selected on the scored split, as the data has no other split to select on "
      "and no `selection` split was carved; the paper's text names no selection split)."
      if data.eval_split == config.test_split
      else "."
    )
    + (
      f" `{input_pipeline.SELECTION}` holds {data.selection_fraction:g} of the "
      f"`{data.train_split}` patients (by a hash of the patient id), carved out before anything "
      "was trained."
      if data.eval_split == input_pipeline.SELECTION
      else ""
    ),
    "",
    "Images per split and label:",
    "",
  ]
  count_rows = []
  for split in input_pipeline.split_names(data):
    labels = list(input_pipeline.split_labels(data, split).values())
    normal = sum(1 for v in labels if v == 0)
    count_rows.append(
      {"split": split, "normal": normal, "abnormal": len(labels) - normal, "total": len(labels)}
    )
  lines += [
    _markdown_table(count_rows),
    "",
    "Wall time per stage (of the run that finished it):",
    "",
  ]
  time_rows = [
    {"stage": name, "wall time": format_seconds(timings.get(name, {}).get("wall_s", float("nan")))}
    for name, _, _ in plan
  ]
  total = sum(t.get("wall_s", 0.0) for t in timings.values())
  time_rows.append({"stage": "**total**", "wall time": format_seconds(total)})
  lines += [_markdown_table(time_rows), ""]

  lines += [
    "## Table 1: repainting normal and abnormal images",
    "",
    "Stage 1 repaints every pixel of held-out images from its surroundings (fixed windows); PSNR "
    "(dB) and SSIM against the original. The GAN has only seen normal images, so it should "
    "repaint normal images better (higher values) than abnormal ones.",
    "",
    _markdown_table(_read_csv(os.path.join(report_dir, "table1.csv"))),
    "",
    f"Our protocol: windows of {config.stage1.eval.window} px tile each image of "
    f"`{config.stage1.eval.split}`; each is repainted from the rest of the image and the whole "
    "repainted image is scored. The paper's text does not describe its protocol (which windows, "
    "which pixels are scored), and its 34.7 dB on MURA elbow suggests far fewer repainted pixels, "
    "so its values are not comparable with ours; they are, for reference:",
    "",
    _markdown_table([dict(r) for r in paper_values.TABLE1]),
    "",
    "## Lesion localization",
    "",
    f"Scored on `{localize.report.split}` where lesion masks exist. Pointing game: the "
    "map's maximum lies on the lesion; pixel AUROC / AUPRC: lesion pixels against the rest "
    "(AUROC 0.5 is chance); Dice: the map thresholded where Dice was best on "
    f"`{localize.data.eval_split}`, pooled over every image. ALENN localizes lesions only "
    "where its difference map beats every reference: a random map, a centre prior, and two maps "
    "of the image alone, its blurred intensity (where the image is bright) and its gradient "
    "magnitude (where the edges are); and it should stay low on normal images.",
    "",
    _markdown_table(_read_csv(os.path.join(report_dir, "localization.csv")))
    if os.path.exists(os.path.join(report_dir, "localization.csv"))
    else "_Not scored: no abnormal image of the scored split has a lesion mask._",
    "",
    *_foreground_section(report_dir),
    *_by_kind_section(report_dir),
    "Mean LE over the normal images of each split. A generator repaints the images it was trained "
    "on better than new ones, so in-sample maps of training normals are darker than held-out "
    "normals' maps, and a classifier fed them can learn that gap instead of lesions; "
    "cross-fitting (`localize.folds` > 1) maps every image out of sample.",
    "",
    _markdown_table(_read_csv(os.path.join(report_dir, "normal_le.csv"))),
    "",
    "## Figure 3: difference and LE maps",
    "",
    "Each row: the image, the difference map D, the LE map, and the LE map over the image (true "
    "lesion outlined where known). Abnormal images should light up on the lesion, normal ones "
    "stay dark.",
    "",
    "![Figure 3, abnormal](fig3_abnormal.png)",
    "",
    "![Figure 3, normal](fig3_normal.png)",
    "",
    "## Table 2: classification with and without LE",
    "",
    f"Image-level scores on `{config.test_split}` at threshold "
    f"{config.stage2[config.backbones[0]].threshold:g} on P(abnormal). Compare each backbone's "
    "row without LE against its row with LE.",
    "",
    _markdown_table(_read_csv(os.path.join(report_dir, "table2.csv"))),
    "",
    *_normal_positive_section(report_dir),
  ]
  effect = _read_csv(os.path.join(report_dir, "table2_le_effect.csv"))
  if effect:
    resamples = config.get("bootstrap_resamples", 2000)
    lines += [
      "**Does LE help?** With minus without LE on the same images: 95% intervals from "
      f"{resamples} paired bootstrap resamples of the `{config.test_split}` images, p from "
      "DeLong's test for the AUC and from the bootstrap for the rest"
      + (
        f" (each classifier trained {config.seeds} times; the seed-mean is compared)"
        if config.get("seeds", 1) > 1
        else " (one training run each: seed-to-seed variation is not included)"
      )
      + ". Every metric is in `table2_le_effect.csv`.",
      "",
      *le_effect_sentences(effect),
      "",
    ]
  study = _read_csv(os.path.join(report_dir, "table2_study.csv"))
  if study:
    lines += [
      "Study-level (mean probability over a study's images, the MURA protocol):",
      "",
      _markdown_table(study),
      "",
    ]
  lines += [
    "## Figure 4: ROC curves",
    "",
    "One panel per backbone, with and without LE; the AUC is in the legend. A curve nearer the top "
    "left is better; the diagonal is chance.",
    "",
    "![Figure 4](fig4_roc.png)",
    "",
  ]
  path = os.path.join(report_dir, "report.md")
  image_io.write_text(path, "\n".join(lines))
  return path
