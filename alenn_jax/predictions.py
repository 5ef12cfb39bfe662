"""The classifier's result files: written by the classifier job, read by the report (Table 2,
Figure 4) and by anyone comparing runs.

A classifier workdir W holds, per scored split, in `W/report/`:

  metrics_<split>.json     backbone, fusion, dataset, split, step, threshold, positive class, and
                           the scores per level ("image"; "study" for MURA)
  predictions_<split>.csv  id, label, prob_abnormal: one row per scored image
"""

import csv
import json
import os

import numpy as np

from alenn_jax import image_io

REPORT = "report"  # The folder of a classifier workdir that holds its results.


def metrics_path(workdir: str, split: str) -> str:
  return os.path.join(workdir, REPORT, f"metrics_{split}.json")


def predictions_path(workdir: str, split: str) -> str:
  return os.path.join(workdir, REPORT, f"predictions_{split}.csv")


def mura_study(example_id: str) -> str:
  """The study an image of MURA belongs to (its id without the image name)."""
  return example_id.rsplit("/", 1)[0]


def write_predictions(path: str, preds: dict) -> None:
  """`preds`: ids (str list), labels and probs (arrays of the same length)."""
  with image_io.atomic_open(path, "w") as f:
    writer = csv.writer(f)
    writer.writerow(["id", "label", "prob_abnormal"])
    for i, label, p in zip(preds["ids"], preds["labels"], preds["probs"], strict=True):
      writer.writerow([i, int(label), f"{float(p):.9g}"])  # Round-trips float32.


def read_predictions(path: str) -> dict:
  with open(path) as f:
    rows = list(csv.DictReader(f))
  return {
    "ids": [r["id"] for r in rows],
    "labels": np.asarray([int(r["label"]) for r in rows], np.int64),
    "probs": np.asarray([float(r["prob_abnormal"]) for r in rows], np.float64),
  }


def write_results(workdir: str, split: str, info: dict, preds: dict) -> None:
  """metrics_<split>.json (`info`: the run's description and scores) and
  predictions_<split>.csv."""
  image_io.write_text(metrics_path(workdir, split), json.dumps(info, indent=2))
  write_predictions(predictions_path(workdir, split), preds)


def read_results(workdir: str, split: str) -> dict | None:
  """A classifier run's metrics on `split` with its predictions (key "predictions") and
  "run_dir", or None when it has none yet."""
  path, preds = metrics_path(workdir, split), predictions_path(workdir, split)
  if not (os.path.exists(path) and os.path.exists(preds)):
    return None
  with open(path) as f:
    info = json.load(f)
  info["predictions"] = read_predictions(preds)
  info["run_dir"] = workdir
  return info
