"""A classifier applied to a split: the jitted scoring step (`make_predict_step`), P(abnormal) of
every example (`predict`) and its scores (`scores_of`). Shared by the trainer's evaluations and
the `predict` job, so both score images the same way.
"""

import functools

import jax
import numpy as np
from absl import logging

from alenn_jax import data_splits, input_pipeline, le_maps, metrics, predictions, sharding
from alenn_jax.classification import classifier_setup
from alenn_jax.errors import UserInputError


def eval_step(static: classifier_setup.ClassifierSetup, params, batch_stats, batch):
  """P(abnormal) of every image of a batch: `[B]` (`batch["inputs"]` as in `train_step`)."""
  inputs = batch["inputs"] if "inputs" in batch else classifier_setup.model_inputs(static, batch)
  logits = static.model.apply({"params": params, "batch_stats": batch_stats}, inputs, train=False)
  return jax.nn.sigmoid(logits[:, 0])


# ----------------------------------------------------------------------------------------------
# LE maps and data.


def le_source(config, workdir: str) -> str:
  return config.le_workdir or workdir


def load_le_maps(config, workdir: str, split: str) -> dict[str, np.ndarray] | None:
  """id -> LE map of every example of `split` (None without fusion); a missing map is an error
  naming the id and the workdir."""
  if config.fusion == "none":
    return None
  source = le_source(config, workdir)
  maps = le_maps.read_le_maps(source, split)
  wanted = data_splits.split_labels(config.data, split)
  missing = sorted(set(wanted) - set(maps))
  if missing:
    raise UserInputError(
      f"no LE map for example {missing[0]!r} ({len(missing)} of {len(wanted)} in split {split!r}) "
      f"in {source}/le_maps; run the localize job on the same dataset there "
      "(configs/localize.py), or set config.le_workdir to the workdir that has them."
    )
  return maps


def make_predict_step(static: classifier_setup.ClassifierSetup, mesh):
  """`(params, batch_stats, batch) -> (P(abnormal), label, weight)`: the fusion (`make_fuse`),
  then the scoring, each jitted once per run so that every evaluation reuses its compilation.
  Outputs are replicated, so every process reads the whole batch (several hosts)."""

  fuse = make_fuse(static, mesh)

  def scores(params, batch_stats, batch):
    return eval_step(static, params, batch_stats, batch), batch["label"], batch["weight"]

  scores = jax.jit(scores, out_shardings=sharding.replicated(mesh))

  def predict_step(params, batch_stats, batch):
    return scores(params, batch_stats, fused_batch(fuse, batch))

  return predict_step


def make_fuse(static: classifier_setup.ClassifierSetup, mesh):
  """`model_inputs` jitted on its own (batch-sharded), for `fused_batch`."""
  return jax.jit(
    functools.partial(classifier_setup.model_inputs, static),
    out_shardings=sharding.batch_sharding(mesh),
  )


def fused_batch(fuse, batch: dict) -> dict:
  """{inputs, label, weight}: what `train_step` and `eval_step` need, the fusion done by `fuse`."""
  return {"inputs": fuse(batch), "label": batch["label"], "weight": batch["weight"]}


def predict(config, predict_step, params, batch_stats, mesh, split: str, maps) -> dict:
  """ids, labels and P(abnormal) of every example of `split` (all of it, or eval.max_batches);
  `predict_step` is `make_predict_step`'s, `maps` the split's LE maps (or None)."""
  iterator = input_pipeline.eval_iterator(config.data, mesh, split, labels=(0, 1), le_maps=maps)
  ids, labels, probs = [], [], []
  for i, batch in enumerate(iterator):
    if config.eval.max_batches and i >= config.eval.max_batches:
      break
    numeric = {k: batch[k] for k in input_pipeline.numeric_keys(batch)}
    p, label, weight = (
      np.asarray(a) for a in jax.device_get(predict_step(params, batch_stats, numeric))
    )
    keep = weight > 0
    labels.append(label[keep])
    probs.append(p[keep])
    ids.extend(str(x) for x in np.asarray(batch["id"])[keep])
  return {"ids": ids, "labels": np.concatenate(labels), "probs": np.concatenate(probs)}


def scores_of(config, preds: dict) -> dict:
  """Image-level scores (and study-level ones for MURA) of `predict`'s output."""
  out = {"image": metrics.classification_metrics(preds["labels"], preds["probs"], config.threshold)}
  if config.data.name.startswith("mura"):
    _, labels, probs = metrics.study_level(
      preds["ids"], preds["labels"], preds["probs"], predictions.mura_study
    )
    out["study"] = metrics.classification_metrics(labels, probs, config.threshold)
  for level, scores in out.items():
    for note in scores["warnings"]:
      logging.warning("%s-level: %s", level, note)
  return out


def evaluate(config, predict_step, params, batch_stats, mesh, split: str, maps):
  """Runs the model over `split` and scores it: (scores, predictions)."""
  preds = predict(config, predict_step, params, batch_stats, mesh, split, maps)
  return scores_of(config, preds), preds
