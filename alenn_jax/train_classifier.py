"""Stage 2b: lesion-enhanced classification (VGG-19, ResNet-50, DenseNet-121, Inception-v3).

The classifier sees each image fused with its LE map (`fusion`: none, enhance or channels; the
maps come from a stage 2a workdir, `config.le_workdir`, matched by example id) and is trained with
binary cross-entropy on P(abnormal) with Adam at batch 16 (the paper's text: Adam, 1e-4, batch 16;
the CPU-sized configs use 1e-3), optionally class-balanced. Every `eval_every` steps it is scored
on the validation split; the checkpoint with the best Cohen's kappa is kept apart (`W/best/`) and
is what the final scores use (our choice: the paper's text names no selection).

Reads top to bottom: `create_train_state`, `train_step`, `eval_step`, `evaluate` (runs the model
over a split and scores it: `predict`, then `scores_of`), `train_and_evaluate`,
`evaluate_checkpoint` (`--mode=eval`). Outputs, in `W/report/` (format: `predictions`):
`metrics_<split>.json` (image-level scores, and study-level ones for MURA),
`predictions_<split>.csv` (id, label, probability), `table2.csv` (this run's row) and
`fig4_roc.png`. `checkpointing.load_classifier(W)` loads the trained model elsewhere.

Resuming is automatic from `W/checkpoints/` (orbax): step, parameters, BatchNorm statistics,
optimizer state, RNG and the input iterator's position.
"""

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
from clu import parameter_overview

from alenn_jax import (
  checkpointing,
  fusion,
  input_pipeline,
  le_maps,
  metrics,
  models,
  predictions,
  preemption,
  progress,
  report,
  sharding,
  writers,
)
from alenn_jax.checkpointing import DATA, METRICS, MODEL, STATE
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
class ClassifierSetup:
  """What the classifier's step functions close over: model, optimizer and constants."""

  model: Any
  tx: optax.GradientTransformation
  fusion: str
  gamma: float
  class_weights: tuple[float, float]  # BCE weight of a normal and of an abnormal example.
  aux_weight: float
  in_channels: int
  input_stats: tuple | None  # (mean, std) the ImageNet weights expect (fusion.normalize), or None.

  @classmethod
  def from_config(cls, config, class_weights=(1.0, 1.0)):
    model = models.classifier_from_config(config)
    tx = make_optimizer(config.optimizer, config.num_train_steps)
    return cls(
      model=model,
      tx=tx,
      fusion=config.fusion,
      gamma=config.gamma,
      class_weights=tuple(float(w) for w in class_weights),
      aux_weight=config.aux_weight,
      in_channels=fusion.num_channels(config.fusion, bool(config.model.pretrained)),
      input_stats=models.INPUT_STATS[config.backbone] if config.model.pretrained else None,
    )


def learning_rate(opt, total_steps: int):
  """The learning rate per step: `opt.learning_rate`, constant (our reading of the text's
  "initialized to 0.0001") or, with
  `opt.schedule="cosine"`, warmed up linearly over `opt.warmup_steps` and then decayed to 0 along a
  cosine by `total_steps`."""
  if opt.get("schedule", "constant") == "constant":
    if opt.get("warmup_steps", 0):
      return optax.linear_schedule(0.0, opt.learning_rate, opt.warmup_steps)
    return opt.learning_rate
  return optax.warmup_cosine_decay_schedule(
    0.0, opt.learning_rate, max(1, opt.get("warmup_steps", 0)), max(total_steps, 2)
  )


def make_optimizer(opt, total_steps: int) -> optax.GradientTransformation:
  """Adam (AdamW when `weight_decay` > 0) on `learning_rate`'s schedule, after clipping the
  global gradient norm to `grad_clip` (0: no clipping)."""
  rate = learning_rate(opt, total_steps)
  if opt.weight_decay > 0:
    adam = optax.adamw(rate, opt.b1, opt.b2, weight_decay=opt.weight_decay)
  else:
    adam = optax.adam(rate, opt.b1, opt.b2)
  clip = opt.get("grad_clip", 0.0)
  return optax.chain(optax.clip_by_global_norm(clip), adam) if clip > 0 else adam


def check_input_size(model, config, image_size: int) -> None:
  """A UserInputError when some layer of `model` would see an empty feature map at this size."""
  x = jax.ShapeDtypeStruct(
    (1, image_size, image_size, fusion.num_channels(config.fusion, bool(config.model.pretrained))),
    "float32",
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
  config, static: ClassifierSetup, rng, image_size: int, load_pretrained: bool = True
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


def model_inputs(static: ClassifierSetup, batch: dict) -> jax.Array:
  """What the network sees: the image fused with its LE map, normalised for ImageNet weights."""
  inputs = fusion.fuse(batch["image"], batch.get("le"), static.fusion, static.gamma)
  return inputs if static.input_stats is None else fusion.normalize(inputs, static.input_stats)


def train_step(state: TrainState, batch: dict, rng, *, static: ClassifierSetup):
  """One Adam step on the weighted BCE of P(abnormal) (plus Inception's auxiliary head).

  `batch["inputs"]`, when present, are the model inputs already fused (`model_inputs`, jitted on
  its own): the step then compiles to the same program for every fusion and seed of a backbone,
  so with the persistent compilation cache (`launch.py --compilation_cache`) only the first of
  them pays for its compilation. Otherwise the image (and LE map) are fused here."""
  inputs = batch["inputs"] if "inputs" in batch else model_inputs(static, batch)
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


def eval_step(static: ClassifierSetup, params, batch_stats, batch):
  """P(abnormal) of every image of a batch: `[B]` (`batch["inputs"]` as in `train_step`)."""
  inputs = batch["inputs"] if "inputs" in batch else model_inputs(static, batch)
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


def make_predict_step(static: ClassifierSetup, mesh):
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


def make_fuse(static: ClassifierSetup, mesh):
  """`model_inputs` jitted on its own (batch-sharded), for `fused_batch`."""
  return jax.jit(
    functools.partial(model_inputs, static), out_shardings=sharding.batch_sharding(mesh)
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


# ----------------------------------------------------------------------------------------------
# Outputs.


def write_outputs(config, workdir: str, split: str, step: int, scores: dict, preds: dict) -> None:
  """metrics_<split>.json, predictions_<split>.csv, table2.csv and fig4_roc.png of this run."""
  info = {
    "backbone": config.backbone,
    "fusion": config.fusion,
    "seed": config.seed,
    "dataset": config.data.name,
    "split": split,
    "step": step,
    "threshold": config.threshold,
    "positive_class": "abnormal",
    **scores,
  }
  predictions.write_results(workdir, split, info, preds)
  report.table2([workdir], os.path.join(workdir, predictions.REPORT), split)


# ----------------------------------------------------------------------------------------------
# Checkpoints.


def _managers(workdir: str, config):
  options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True)
  latest = ocp.CheckpointManager(
    os.path.join(workdir, checkpointing.CHECKPOINTS),
    item_names=checkpointing.LATEST_ITEMS,
    options=options,
  )
  best = ocp.CheckpointManager(
    os.path.join(workdir, checkpointing.BEST),
    item_names=checkpointing.BEST_ITEMS,
    options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
  )
  return latest, best


def _best_so_far(best) -> tuple[int | None, float]:
  step = best.latest_step()
  if step is None:
    return None, -math.inf
  restored = best.restore(step, args=ocp.args.Composite(**{METRICS: ocp.args.JsonRestore()}))
  return step, float(restored[METRICS]["image"]["kappa"])


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
  resolve_splits(config)
  checkpointing.check_config(config, workdir, SHAPE_FIELDS)
  mesh = sharding.make_mesh()
  static = ClassifierSetup.from_config(config, class_weights(config))
  writer = writers.create(workdir, just_logging=jax.process_index() > 0)
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
  fuse = make_fuse(static, mesh)
  step_fn = jax.jit(
    functools.partial(train_step, static=static),
    in_shardings=(
      replicated,
      {k: batch_sharding for k in ("inputs", "label", "weight")},
      replicated,
    ),
    out_shardings=(replicated, replicated),
    donate_argnums=(0,),
  )
  predict_step = make_predict_step(static, mesh)
  total = config.num_train_steps
  stop = total if config.stop_at_step < 0 else min(config.stop_at_step, total)
  report_progress = writers.report_progress(total, writer)
  progress_line = progress.Progress(
    f"classifier {config.backbone}/{config.fusion}", total, config.data.batch_size
  )

  def save_latest(step: int, state: TrainState) -> None:
    items = {STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(train_iter.get_state())}
    checkpointing.save(latest, step, items)

  with preemption.watch() as should_stop:
    for step in range(start, stop):
      batch = next(train_iter)
      numeric = fused_batch(fuse, {k: batch[k] for k in keys})
      state, step_metrics = step_fn(state, numeric, jax.random.fold_in(state.rng, step))
      step_metrics = jax.device_get(step_metrics)
      checkpointing.check_finite(step_metrics, step, latest)
      report_progress(step + 1)
      progress_line.update(step + 1)
      if (step + 1) % config.log_every == 0 or step + 1 == stop:
        writer.write_scalars(step + 1, {f"train/{k}": float(v) for k, v in step_metrics.items()})
      if (step + 1) % config.eval_every == 0 or step + 1 == stop:
        scores, _ = evaluate(
          config,
          predict_step,
          state.params,
          state.batch_stats,
          mesh,
          config.data.eval_split,
          le_val,
        )
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
          weights = {"params": state.params, "batch_stats": state.batch_stats}
          items = {
            MODEL: ocp.args.StandardSave(weights),
            METRICS: ocp.args.JsonSave(_json_safe(scores)),
          }
          checkpointing.save(best, step + 1, items)
        save_latest(step + 1, state)
      if should_stop(step + 1):
        save_latest(step + 1, state)
        checkpointing.close([latest, best], writer)
        raise preemption.Preempted(step + 1, should_stop.signum)
  checkpointing.close([latest, best], writer)
  if stop == total:
    logging.info("best validation kappa %.4f at step %s", best_kappa, best_step)
    score_checkpoint(config, workdir, mesh, "best", config.eval.split, predict_step)
  return state


def _json_safe(scores: dict) -> dict:
  return json.loads(json.dumps(scores))


def score_checkpoint(config, workdir, mesh, which, split, predict_step=None) -> dict:
  """Scores checkpoint `which` ("best", "latest" or a step) of `workdir` on `split` and writes
  this run's outputs; the model is the one the workdir's stored config describes."""
  trained = checkpointing.load_classifier(workdir, which, mesh)
  if predict_step is None:
    predict_step = make_predict_step(ClassifierSetup.from_config(trained.config), mesh)
  maps = load_le_maps(config, workdir, split)
  scores, preds = evaluate(
    config, predict_step, trained.params, trained.batch_stats, mesh, split, maps
  )
  if jax.process_index() == 0:
    write_outputs(config, workdir, split, trained.step, scores, preds)
  s = scores["image"]
  logging.info(
    "%s %s (step %d) on %s: accuracy %.4f precision %.4f recall %.4f F1 %.4f kappa %.4f AUC %.4f "
    "(%d images)",
    config.backbone,
    config.fusion,
    trained.step,
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


def _resolve_scored_split(config: ml_collections.ConfigDict) -> str:
  """`eval.split` if the dataset has it, else the scored split (test, else valid); set and
  returned."""
  if config.eval.split not in input_pipeline.split_names(config.data):
    config.eval.split = input_pipeline.scored_split(config.data)
  return config.eval.split


def resolve_splits(config: ml_collections.ConfigDict) -> None:
  """Fills in the splits the dataset has: `data.eval_split` (selection, never the scored split
  unless `data.paper_selection`) and `eval.split` (scored: test, else valid)."""
  input_pipeline.resolve_eval_split(config.data, scored=_resolve_scored_split(config))


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`--mode=eval`: scores checkpoint `config.eval.checkpoint_step` (-1: the best) on
  `config.eval.split`."""
  _resolve_scored_split(config)
  which = config.eval.checkpoint_step if config.eval.checkpoint_step >= 0 else "best"
  return score_checkpoint(config, workdir, sharding.make_mesh(), which, config.eval.split)
