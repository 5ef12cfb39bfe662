"""Stage 2b: lesion-enhanced classification (VGG-19, ResNet-50, DenseNet-121, Inception-v3).

The classifier sees each image fused with its LE map (`fusion`: none, enhance or channels; the
maps come from a stage 2a workdir, `config.le_workdir`, matched by example id) and is trained with
binary cross-entropy on P(abnormal) with Adam at batch 16 (the paper's text: Adam, 1e-4, batch 16;
the CPU-sized configs use 1e-3), optionally class-balanced. Every `eval_every` steps it is scored
on the validation split; the checkpoint with the best Cohen's kappa (ties: the better AUC) is kept
apart (`W/best/`) and is what the final scores use (our choice: the paper's text names no
selection).

Reads top to bottom: `create_train_state`, `train_step`, `eval_step`, `evaluate` (runs the model
over a split and scores it: `predict`, then `scores_of`), `train_and_evaluate`,
`evaluate_checkpoint` (`--mode=eval`). Outputs, in `W/report/` (format: `predictions`):
`metrics_<split>.json` (image-level scores, and study-level ones for MURA),
`predictions_<split>.csv` (id, label, probability), `table2.csv` (this run's row) and
`fig4_roc.png`. `checkpointing.load_classifier(W)` loads the trained model elsewhere.

Resuming is automatic from `W/checkpoints/` (orbax): step, parameters, BatchNorm statistics,
optimizer state, RNG and the input iterator's position.
"""

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
  data_splits,
  fusion,
  input_pipeline,
  models,
  multihost,
  predictions,
  sharding,
  training_loop,
  writers,
)
from alenn_jax.checkpointing import DATA, METRICS, MODEL, STATE
from alenn_jax.classification import classifier_setup, inference
from alenn_jax.errors import UserInputError
from alenn_jax.models import layers
from alenn_jax.reporting import tables

# Fields whose change makes the checkpoints of a workdir unusable (checkpointing.check_config).
SHAPE_FIELDS = ("backbone", "fusion", "model.", "data.image_size")


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar.
  rng: jax.Array  # Base PRNG key; step k uses fold_in(rng, k) for dropout.
  params: Any
  batch_stats: Any
  opt_state: Any


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
  config,
  static: classifier_setup.ClassifierSetup,
  rng,
  image_size: int,
  load_pretrained: bool = True,
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


def train_step(state: TrainState, batch: dict, rng, *, static: classifier_setup.ClassifierSetup):
  """One Adam step on the weighted BCE of P(abnormal) (plus Inception's auxiliary head).

  `batch["inputs"]`, when present, are the model inputs already fused (`model_inputs`, jitted on
  its own): the step then compiles to the same program for every fusion and seed of a backbone,
  so with the persistent compilation cache (`launch.py --compilation_cache`) only the first of
  them pays for its compilation. Otherwise the image (and LE map) are fused here."""
  inputs = batch["inputs"] if "inputs" in batch else classifier_setup.model_inputs(static, batch)
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


def class_weights(config) -> tuple[float, float]:
  """(w_normal, w_abnormal) = N / (2 N_c) on the train split when class_balanced, else (1, 1)."""
  labels = np.asarray(list(data_splits.split_labels(config.data, config.data.train_split).values()))
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
  tables.table2([workdir], os.path.join(workdir, predictions.REPORT), split)


# ----------------------------------------------------------------------------------------------
# Checkpoints.


def _managers(workdir: str, config):
  timeout_s = multihost.barrier_timeout()
  latest = checkpointing.manager(
    os.path.join(workdir, checkpointing.CHECKPOINTS),
    checkpointing.LATEST_ITEMS,
    timeout_s=timeout_s,
    max_to_keep=config.keep_checkpoints,
  )
  best = checkpointing.manager(
    os.path.join(workdir, checkpointing.BEST),
    checkpointing.BEST_ITEMS,
    timeout_s=timeout_s,
    max_to_keep=1,
  )
  return latest, best


def selection_key(image_scores: dict) -> tuple[float, float]:
  """What the best checkpoint maximizes: validation kappa, ties broken by AUC. A model that calls
  every image normal has kappa 0 at every evaluation; without the tie-break the first of those
  evaluations (the least trained model) would be kept."""
  return float(image_scores["kappa"]), float(image_scores["auc"])


def _best_so_far(best) -> tuple[int | None, tuple[float, float]]:
  step = best.latest_step()
  if step is None:
    return None, (-math.inf, -math.inf)
  restored = best.restore(step, args=ocp.args.Composite(**{METRICS: ocp.args.JsonRestore()}))
  return step, selection_key(restored[METRICS]["image"])


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
  static = classifier_setup.ClassifierSetup.from_config(config, class_weights(config))
  writer = writers.create(workdir, just_logging=jax.process_index() > 0)
  replicated = sharding.replicated(mesh)
  le_train = inference.load_le_maps(config, workdir, config.data.train_split)
  le_val = inference.load_le_maps(config, workdir, config.data.eval_split)

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
  best_step, best_key = _best_so_far(best)

  batch_sharding = sharding.batch_sharding(mesh)
  keys = input_pipeline.NUMERIC_KEYS + (("le",) if le_train is not None else ())
  fuse = inference.make_fuse(static, mesh)
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
  predict_step = inference.make_predict_step(static, mesh)
  total = config.num_train_steps
  stop = total if config.stop_at_step < 0 else min(config.stop_at_step, total)
  best_so_far = {"step": best_step, "key": best_key}

  def validate(done: int, state: TrainState) -> None:
    _validate(config, predict_step, state, mesh, le_val, writer, best, best_so_far, done)

  def save(done: int, state: TrainState, force: bool) -> None:
    if force or done % config.eval_every == 0 or done == stop:
      items = {STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(train_iter.get_state())}
      checkpointing.save(latest, done, items)

  batches = (inference.fused_batch(fuse, {k: b[k] for k in keys}) for b in train_iter)
  state = training_loop.run(
    state,
    name=f"classifier {config.backbone}/{config.fusion}",
    start=start,
    stop=stop,
    total=total,
    batch_size=config.data.batch_size,
    batches=batches,
    step=lambda index, state, batch: step_fn(state, batch, jax.random.fold_in(state.rng, index)),
    evaluate=validate,
    save=save,
    managers=[latest, best],
    writer=writer,
    log_every=config.log_every,
    eval_every=config.eval_every,
  )
  if stop == total:
    kappa, auc = best_so_far["key"]
    logging.info(
      "best validation kappa %.4f (auc %.4f) at step %s", kappa, auc, best_so_far["step"]
    )
    score_checkpoint(config, workdir, mesh, "best", config.eval.split, predict_step)
  return state


def _validate(config, predict_step, state, mesh, le_val, writer, best, best_so_far, done) -> None:
  """Scores `state` on the selection split; a better `selection_key` than `best_so_far` is saved
  to `best` (the checkpoint the final scores use)."""
  scores, _ = inference.evaluate(
    config, predict_step, state.params, state.batch_stats, mesh, config.data.eval_split, le_val
  )
  writer.write_scalars(done, _flat_scores("val", scores))
  image = scores["image"]
  logging.info(
    "step %d: validation accuracy %.4f kappa %.4f auc %.4f",
    done,
    image["accuracy"],
    image["kappa"],
    image["auc"],
  )
  key = selection_key(image)
  if key > best_so_far["key"]:
    best_so_far.update(step=done, key=key)
    weights = {"params": state.params, "batch_stats": state.batch_stats}
    items = {MODEL: ocp.args.StandardSave(weights), METRICS: ocp.args.JsonSave(_json_safe(scores))}
    checkpointing.save(best, done, items)


def _json_safe(scores: dict) -> dict:
  return json.loads(json.dumps(scores))


def score_checkpoint(config, workdir, mesh, which, split, predict_step=None) -> dict:
  """Scores checkpoint `which` ("best", "latest" or a step) of `workdir` on `split` and writes
  this run's outputs; the model is the one the workdir's stored config describes."""
  trained = checkpointing.load_classifier(workdir, which, mesh)
  if predict_step is None:
    predict_step = inference.make_predict_step(
      classifier_setup.ClassifierSetup.from_config(trained.config), mesh
    )
  maps = inference.load_le_maps(config, workdir, split)
  scores, preds = inference.evaluate(
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
  if config.eval.split not in data_splits.split_names(config.data):
    config.eval.split = data_splits.scored_split(config.data)
  return config.eval.split


def resolve_splits(config: ml_collections.ConfigDict) -> None:
  """Fills in the splits the dataset has: `data.eval_split` (selection, never the scored split
  unless `data.paper_selection`) and `eval.split` (scored: test, else valid)."""
  data_splits.resolve_eval_split(config.data, scored=_resolve_scored_split(config))


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`--mode=eval`: scores checkpoint `config.eval.checkpoint_step` (-1: the best) on
  `config.eval.split`."""
  _resolve_scored_split(config)
  which = config.eval.checkpoint_step if config.eval.checkpoint_step >= 0 else "best"
  return score_checkpoint(config, workdir, sharding.make_mesh(), which, config.eval.split)
