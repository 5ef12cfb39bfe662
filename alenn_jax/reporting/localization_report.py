"""The localize job's report: every map of the scored split (and the reference maps) scored
against the lesion masks, Figure 3, `localization.csv` and its companions.
"""

import os

import jax
import numpy as np
from absl import logging

from alenn_jax import data_splits, image_io, input_pipeline, le_maps
from alenn_jax.reporting import figures, lesion_scores


def collect(config, mesh, split: str) -> list[dict]:
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


def localization_report(config, workdir: str, mesh, scale: float) -> list[dict]:
  """Figure 3 and `localization.csv` for `config.report.split`; the Dice thresholds are chosen
  on `config.data.eval_split`."""
  split = config.report.split
  d_maps = le_maps.read_difference_maps(workdir, split)
  examples = collect(config, mesh, split)
  report_dir = os.path.join(workdir, "report")
  for label, name in ((0, "normal"), (1, "abnormal")):
    chosen = [ex for ex in examples if ex["label"] == label][: config.report.num_examples]
    if chosen:
      figures.figure3(
        chosen,
        d_maps,
        scale,
        os.path.join(report_dir, f"fig3_{name}.png"),
        f"{name} ({split}; white outline: true lesion)",
        config.report.tolerance,
      )
  bodies = le_maps.read_foreground(workdir, split)
  if bodies:  # What is not patient is not scored, for any map.
    kept = lesion_scores.foreground_share(examples, bodies, split)
    image_io.write_csv(os.path.join(report_dir, lesion_scores.FOREGROUND_CSV), [kept], list(kept))
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
    threshold_examples = collect(config, mesh, threshold_split)
    threshold_maps = le_maps.read_difference_maps(workdir, threshold_split)
    threshold_bodies = le_maps.read_foreground(workdir, threshold_split)
    for ex in threshold_examples:
      ex["scored"] = threshold_bodies.get(ex["id"])
  thresholds = lesion_scores.dice_thresholds(
    threshold_examples, lesion_scores.reference_maps(threshold_examples, threshold_maps, seed=1)
  )
  references = lesion_scores.reference_maps(examples, d_maps, seed=0)
  rows = lesion_scores.score_maps(examples, references, scale, config.report.tolerance, thresholds)
  for row in rows:
    row["dice_threshold_split"] = threshold_split
  lesion_scores.write_scores(os.path.join(report_dir, "localization.csv"), rows)
  kinds = data_splits.split_lesion_kinds(config.data, split)
  if kinds is not None:  # The phantoms: which kinds of lesion the maps find.
    by_kind = lesion_scores.kind_rows(
      examples, references, scale, config.report.tolerance, kinds, thresholds
    )
    lesion_scores.write_scores(os.path.join(report_dir, lesion_scores.BY_KIND_CSV), by_kind)
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
