"""How well a map localizes lesions: pure functions of maps and lesion masks.

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

import numpy as np
from scipy import ndimage

from alenn_jax import image_io, image_priors, le_maps, metrics

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
        "pixel_auroc": metrics.auc(labels, scores, absent=float("nan")) if hits else float("nan"),
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


def write_scores(path: str, rows: list[dict]) -> None:
  """Score rows as CSV, floats to four decimals."""
  formatted = [{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]
  image_io.write_csv(path, formatted, list(rows[0]))


def reference_maps(examples, d_maps, seed: int) -> dict[str, dict[str, np.ndarray]]:
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
