"""Stage 2b: lesion-enhanced classification (VGG-19, ResNet-50, DenseNet-121, Inception-v3).

The classifier sees each image fused with its LE map (`fusion`: none, enhance or channels; the
maps come from a stage 2a workdir, `config.le_workdir`, matched by example id) and is trained with
binary cross-entropy on P(abnormal), Adam at 1e-4, batch 16 (the paper's settings), optionally
class-balanced. Every `eval_every` steps it is scored on the validation split; the checkpoint with
the best Cohen's kappa is kept apart (`W/best/`) and is what the final scores use.

Reads top to bottom: `create_train_state`, `train_step`, `eval_step`, `predict` and `evaluate`,
`train_and_evaluate`, `evaluate_checkpoint` (`--mode=eval`). Outputs, in `W/report/`:
`metrics_<split>.json` (image-level scores, and study-level ones for MURA),
`predictions_<split>.csv` (id, label, probability), `table2.csv` (this run's row) and
`fig4_roc.png`.

Resuming is automatic from `W/checkpoints/` (orbax): step, parameters, BatchNorm statistics,
optimizer state, RNG and the input iterator's position.
"""

import csv
import dataclasses
import functools
import json
import math
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions

from alenn_jax import (
  checkpointing,
  fusion,
  image_io,
  input_pipeline,
  metrics,
  models,
  preemption,
  progress,
  sharding,
)
from alenn_jax.errors import UserInputError
from alenn_jax.models import layers

# Fields whose change makes the checkpoints of a workdir unusable (checkpointing.check_config).
SHAPE_FIELDS = ("backbone", "fusion", "model.", "data.image_size")


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar.
  rng: jax.Array  # Base PRNG key; step k uses fold_in(rng, k) for dropout.
  params: Any
  batch_stats: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class Static:
  """What the step functions close over: the model, optimizer and constants from the config."""

  model: Any
  tx: optax.GradientTransformation
  fusion: str
  gamma: float
  class_weights: tuple[float, float]  # BCE weight of a normal and of an abnormal example.
  aux_weight: float
  in_channels: int

  @classmethod
  def from_config(cls, config, class_weights=(1.0, 1.0)):
    overrides = {k: v for k, v in config.model.items() if k not in ("pretrained", "half_precision")}
    if config.model.half_precision:
      overrides["dtype"] = jnp.bfloat16
    try:
      model = models.get_backbone(config.backbone, 1, **overrides)
    except (ValueError, TypeError) as e:
      raise UserInputError(f"config.model: {e}") from None
    opt = config.optimizer
    if opt.weight_decay > 0:
      tx = optax.adamw(opt.learning_rate, opt.b1, opt.b2, weight_decay=opt.weight_decay)
    else:
      tx = optax.adam(opt.learning_rate, opt.b1, opt.b2)
    return cls(
      model=model,
      tx=tx,
      fusion=config.fusion,
      gamma=config.gamma,
      class_weights=tuple(float(w) for w in class_weights),
      aux_weight=config.aux_weight,
      in_channels=fusion.num_channels(config.fusion),
    )


def check_input_size(model, config, image_size: int) -> None:
  """A UserInputError when some layer of `model` would see an empty feature map at this size."""
  x = jax.ShapeDtypeStruct(
    (1, image_size, image_size, fusion.num_channels(config.fusion)), "float32"
  )

  def shapes(x):
    return model.init_with_output(
      jax.random.PRNGKey(0), x, train=False, capture_intermediates=True
    )[1]["intermediates"]

  empty = None
  try:
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(jax.eval_shape(shapes, x)))
    empty = next(("/".join(k[:-1]) for k, v in flat.items() for a in v if 0 in a.shape), None)
  except (ValueError, TypeError) as e:
    empty = str(e).splitlines()[0]
  if empty is not None:
    hint = " or set --config.model.small_input=True" if config.backbone == "inception_v3" else ""
    raise UserInputError(
      f"config.data.image_size={image_size} is too small for backbone {config.backbone!r} with "
      f"these overrides (the feature map of {empty} is empty); use larger images{hint}."
    )


def create_train_state(
  config, static: Static, rng, image_size: int, load_pretrained: bool = True
) -> TrainState:
  """Fresh (or ImageNet-initialised, `config.model.pretrained`) parameters and optimizer state."""
  k_init, k_drop, k_rng = jax.random.split(rng, 3)
  x = jnp.zeros((1, image_size, image_size, static.in_channels), jnp.float32)
  check_input_size(static.model, config, image_size)
  init = jax.jit(functools.partial(static.model.init, train=False))
  variables = init({"params": k_init, "dropout": k_drop}, x)
  if config.model.pretrained and load_pretrained:
    variables = layers.load_torchvision(
      variables, config.model.pretrained, models.HEADS[config.backbone]
    )
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    rng=k_rng,
    params=params,
    batch_stats=batch_stats,
    opt_state=static.tx.init(params),
  )


def _bce(logits, labels, weights):
  losses = optax.sigmoid_binary_cross_entropy(logits, labels)
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1e-9)


def train_step(state: TrainState, batch: dict, rng, *, static: Static):
  """One Adam step on the weighted BCE of P(abnormal) (plus Inception's auxiliary head)."""
  inputs = fusion.fuse(batch["image"], batch.get("le"), static.fusion, static.gamma)
  labels = batch["label"].astype(jnp.float32)  # [B]
  w_normal, w_abnormal = static.class_weights
  weights = batch["weight"] * jnp.where(labels > 0.5, w_abnormal, w_normal)

  def loss_fn(params):
    out, updates = static.model.apply(
      {"params": params, "batch_stats": state.batch_stats},
      inputs,
      train=True,
      rngs={"dropout": rng},
      mutable=["batch_stats"],
    )
    logits, aux = out if isinstance(out, tuple) else (out, None)
    loss = _bce(logits[:, 0], labels, weights)
    total = loss if aux is None else loss + static.aux_weight * _bce(aux[:, 0], labels, weights)
    return total, (loss, logits[:, 0], updates.get("batch_stats", {}))

  (total, (loss, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params
  )
  updates, opt_state = static.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    batch_stats=batch_stats,
    opt_state=opt_state,
  )
  predicted = (logits >= 0.0).astype(jnp.float32)
  accuracy = jnp.sum((predicted == labels) * batch["weight"]) / jnp.sum(batch["weight"])
  return new_state, {
    "loss": total,
    "bce": loss,
    "accuracy": accuracy,
    "grad_norm": optax.tree.norm(grads),
  }


def eval_step(static: Static, params, batch_stats, batch):
  """P(abnormal) of every image of a batch: `[B]`."""
  inputs = fusion.fuse(batch["image"], batch.get("le"), static.fusion, static.gamma)
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
  from alenn_jax import localize

  source = le_source(config, workdir)
  maps = localize.read_le_maps(source, split)
  wanted = input_pipeline.split_labels(config.data, split)
  missing = sorted(set(wanted) - set(maps))
  if missing:
    raise UserInputError(
      f"no LE map for example {missing[0]!r} ({len(missing)} of {len(wanted)} in split {split!r}) "
      f"in {source}/le_maps; run the localize job on the same dataset there "
      "(configs/localize.py), or set config.le_workdir to the workdir that has them."
    )
  return maps


def class_weights(config) -> tuple[float, float]:
  """(w_normal, w_abnormal) = N / (2 N_c) on the train split when class_balanced, else (1, 1)."""
  labels = np.asarray(
    list(input_pipeline.split_labels(config.data, config.data.train_split).values())
  )
  keep = tuple(config.data.labels)
  counts = [int(np.sum(labels == c)) if c in keep else 0 for c in (0, 1)]
  if min(counts) == 0:
    raise UserInputError(
      f"config.data.name={config.data.name!r} with config.data.labels={keep}: the "
      f"{config.data.train_split!r} split gives {counts[0]} normal and {counts[1]} abnormal "
      "images; a classifier needs both (labels (0, 1) and data with both classes)."
    )
  if not config.class_balanced:
    return 1.0, 1.0
  total = sum(counts)
  return total / (2 * counts[0]), total / (2 * counts[1])


def make_predict_step(static: Static, mesh):
  """The jitted `(params, batch_stats, batch) -> (P(abnormal), label, weight)`, built once per run
  so that every evaluation reuses its compilation. Outputs are replicated, so every process reads
  the whole batch (several hosts)."""

  def scores(params, batch_stats, batch):
    return eval_step(static, params, batch_stats, batch), batch["label"], batch["weight"]

  return jax.jit(scores, out_shardings=sharding.replicated(mesh))


def predict(config, predict_step, params, batch_stats, mesh, split: str, le_maps) -> dict:
  """ids, labels and P(abnormal) of every example of `split` (all of it, or eval.max_batches);
  `predict_step` is `make_predict_step`'s."""
  iterator = input_pipeline.eval_iterator(config.data, mesh, split, labels=(0, 1), le_maps=le_maps)
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


def _mura_study(example_id: str) -> str:
  return example_id.rsplit("/", 1)[0]


def evaluate(config, preds: dict) -> dict:
  """Image-level scores (and study-level ones for MURA) of `predict`'s output."""
  out = {"image": metrics.classification_metrics(preds["labels"], preds["probs"], config.threshold)}
  if config.data.name.startswith("mura"):
    _, labels, probs = metrics.study_level(
      preds["ids"], preds["labels"], preds["probs"], _mura_study
    )
    out["study"] = metrics.classification_metrics(labels, probs, config.threshold)
  for level, scores in out.items():
    for note in scores["warnings"]:
      logging.warning("%s-level: %s", level, note)
  return out


# ----------------------------------------------------------------------------------------------
# Outputs.


def write_predictions(path: str, preds: dict) -> None:
  with image_io.atomic_open(path, "w") as f:
    writer = csv.writer(f)
    writer.writerow(["id", "label", "prob_abnormal"])
    for i, label, p in zip(preds["ids"], preds["labels"], preds["probs"], strict=True):
      writer.writerow([i, int(label), f"{float(p):.6f}"])


def read_predictions(path: str) -> dict:
  with open(path) as f:
    rows = list(csv.DictReader(f))
  return {
    "ids": [r["id"] for r in rows],
    "labels": np.asarray([int(r["label"]) for r in rows], np.int64),
    "probs": np.asarray([float(r["prob_abnormal"]) for r in rows], np.float64),
  }


def write_outputs(config, workdir: str, split: str, step: int, scores: dict, preds: dict) -> None:
  """metrics_<split>.json, predictions_<split>.csv, table2.csv and fig4_roc.png of this run."""
  from alenn_jax import report

  out = os.path.join(workdir, "report")
  info = {
    "backbone": config.backbone,
    "fusion": config.fusion,
    "dataset": config.data.name,
    "split": split,
    "step": step,
    "threshold": config.threshold,
    "positive_class": "abnormal",
    **scores,
  }
  image_io.write_text(os.path.join(out, f"metrics_{split}.json"), json.dumps(info, indent=2))
  write_predictions(os.path.join(out, f"predictions_{split}.csv"), preds)
  report.table2([workdir], out, split)


# ----------------------------------------------------------------------------------------------
# Checkpoints.


def _managers(workdir: str, config):
  options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True)
  latest = ocp.CheckpointManager(
    os.path.join(workdir, "checkpoints"), item_names=("state", "data"), options=options
  )
  best = ocp.CheckpointManager(
    os.path.join(workdir, "best"),
    item_names=("model", "metrics"),
    options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
  )
  return latest, best


def _best_so_far(best) -> tuple[int | None, float]:
  step = best.latest_step()
  if step is None:
    return None, -math.inf
  restored = best.restore(step, args=ocp.args.Composite(metrics=ocp.args.JsonRestore()))
  return step, float(restored.metrics["image"]["kappa"])


def restore_model(workdir: str, config, static, template: TrainState, step: int | None):
  """(params, batch_stats, step, stored validation metrics or None) of the best checkpoint
  (`step` None) or of checkpoint `step` (from best/ or checkpoints/)."""
  model = checkpointing.abstract({"params": template.params, "batch_stats": template.batch_stats})
  best_dir = os.path.join(workdir, "best")
  latest_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(best_dir) and not os.path.isdir(latest_dir):
    raise UserInputError(f"no classifier checkpoints in {workdir}; train there first.")
  with ocp.CheckpointManager(best_dir, item_names=("model", "metrics")) as best:
    best_step = best.latest_step()
    if step is None or step == best_step:
      if best_step is None:
        raise UserInputError(f"no best checkpoint in {best_dir}; train there first.")
      restored = best.restore(
        best_step,
        args=ocp.args.Composite(
          model=ocp.args.StandardRestore(model), metrics=ocp.args.JsonRestore()
        ),
      )
      return restored.model["params"], restored.model["batch_stats"], best_step, restored.metrics
  with ocp.CheckpointManager(latest_dir, item_names=("state", "data")) as latest:
    if step not in latest.all_steps():
      raise UserInputError(
        f"config.eval.checkpoint_step={step}: {workdir} holds steps {sorted(latest.all_steps())} "
        f"and the best, {best_step}."
      )
    restored = latest.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(checkpointing.abstract(template))),
    )
  return restored.state.params, restored.state.batch_stats, step, None


def _flat_scores(prefix: str, scores: dict) -> dict[str, float]:
  keys = ("accuracy", "precision", "recall", "specificity", "f1", "kappa", "auc")
  return {
    f"{prefix}/{k}" + ("" if level == "image" else f"_{level}"): float(v[k])
    for level, v in scores.items()
    for k in keys
  }


# ----------------------------------------------------------------------------------------------
# The job.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming from `workdir`), keeps the best checkpoint by validation kappa, then scores
  it on `config.eval.split` and writes this run's outputs."""
  checkpointing.check_config(config, workdir, SHAPE_FIELDS)
  mesh = sharding.make_mesh()
  static = Static.from_config(config, class_weights(config))
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  replicated = sharding.replicated(mesh)
  le_train = load_le_maps(config, workdir, config.data.train_split)
  le_val = load_le_maps(config, workdir, config.data.eval_split)

  state = create_train_state(
    config, static, jax.random.PRNGKey(config.seed), config.data.image_size
  )
  state = jax.device_put(state, replicated)
  train_iter = input_pipeline.train_iterator(config.data, mesh, le_maps=le_train)
  latest, best = _managers(workdir, config)
  state, resumed = checkpointing.restore_latest(latest, state, train_iter)
  if not resumed:
    parameter_overview.log_parameter_overview(state.params, msg=f"{config.backbone} parameters")
  start = int(jax.device_get(state.step))
  best_step, best_kappa = _best_so_far(best)

  batch_sharding = sharding.batch_sharding(mesh)
  keys = input_pipeline.NUMERIC_KEYS + (("le",) if le_train is not None else ())
  step_fn = jax.jit(
    functools.partial(train_step, static=static),
    in_shardings=(replicated, {k: batch_sharding for k in keys}, replicated),
    out_shardings=(replicated, replicated),
    donate_argnums=(0,),
  )
  predict_step = make_predict_step(static, mesh)
  total = config.num_train_steps
  stop = total if config.stop_at_step < 0 else min(config.stop_at_step, total)
  report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer)
  progress_line = progress.Progress(
    f"classifier {config.backbone}/{config.fusion}", total, config.data.batch_size
  )

  def save_latest(step: int, state: TrainState) -> None:
    if latest.latest_step() != step:
      latest.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(train_iter.get_state())
        ),
      )

  with preemption.watch() as should_stop:
    for step in range(start, stop):
      batch = next(train_iter)
      numeric = {k: batch[k] for k in keys}
      state, step_metrics = step_fn(state, numeric, jax.random.fold_in(state.rng, step))
      step_metrics = jax.device_get(step_metrics)
      checkpointing.check_finite(step_metrics, step, latest)
      report(step + 1)
      progress_line.update(step + 1)
      if (step + 1) % config.log_every == 0 or step + 1 == stop:
        writer.write_scalars(step + 1, {f"train/{k}": float(v) for k, v in step_metrics.items()})
      if (step + 1) % config.eval_every == 0 or step + 1 == stop:
        preds = predict(
          config,
          predict_step,
          state.params,
          state.batch_stats,
          mesh,
          config.data.eval_split,
          le_val,
        )
        scores = evaluate(config, preds)
        writer.write_scalars(step + 1, _flat_scores("val", scores))
        kappa = scores["image"]["kappa"]
        logging.info(
          "step %d: validation accuracy %.4f kappa %.4f auc %.4f",
          step + 1,
          scores["image"]["accuracy"],
          kappa,
          scores["image"]["auc"],
        )
        if kappa > best_kappa:
          best_step, best_kappa = step + 1, kappa
          best.save(
            step + 1,
            args=ocp.args.Composite(
              model=ocp.args.StandardSave(
                {"params": state.params, "batch_stats": state.batch_stats}
              ),
              metrics=ocp.args.JsonSave(_json_safe(scores)),
            ),
          )
        save_latest(step + 1, state)
      if should_stop(step + 1):
        save_latest(step + 1, state)
        for manager in (latest, best):
          manager.wait_until_finished()
          manager.close()
        writer.flush()
        raise preemption.Preempted(step + 1, should_stop.signum)
  latest.wait_until_finished()
  best.wait_until_finished()
  latest.close()
  best.close()
  writer.flush()
  if stop == total:
    logging.info("best validation kappa %.4f at step %s", best_kappa, best_step)
    score_checkpoint(config, workdir, static, mesh, state, None, config.eval.split, predict_step)
  return state


def _json_safe(scores: dict) -> dict:
  return json.loads(json.dumps(scores))


def score_checkpoint(
  config, workdir, static, mesh, template, step, split, predict_step=None
) -> dict:
  """Scores checkpoint `step` (None: the best) on `split` and writes this run's outputs."""
  params, batch_stats, step, _ = restore_model(workdir, config, static, template, step)
  predict_step = predict_step or make_predict_step(static, mesh)
  le_maps = load_le_maps(config, workdir, split)
  preds = predict(config, predict_step, params, batch_stats, mesh, split, le_maps)
  scores = evaluate(config, preds)
  if jax.process_index() == 0:
    write_outputs(config, workdir, split, step, scores, preds)
  s = scores["image"]
  logging.info(
    "%s %s (step %d) on %s: accuracy %.4f precision %.4f recall %.4f F1 %.4f kappa %.4f AUC %.4f "
    "(%d images)",
    config.backbone,
    config.fusion,
    step,
    split,
    s["accuracy"],
    s["precision"],
    s["recall"],
    s["f1"],
    s["kappa"],
    s["auc"],
    s["n"],
  )
  return scores


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`--mode=eval`: scores checkpoint `config.eval.checkpoint_step` (-1: the best) on
  `config.eval.split`."""
  mesh = sharding.make_mesh()
  static = Static.from_config(config)
  template = create_train_state(
    config, static, jax.random.PRNGKey(0), config.data.image_size, load_pretrained=False
  )
  template = jax.device_put(template, sharding.replicated(mesh))
  step = config.eval.checkpoint_step if config.eval.checkpoint_step >= 0 else None
  return score_checkpoint(config, workdir, static, mesh, template, step, config.eval.split)
