"""Checkpoints (orbax `CheckpointManager`) and the hand-over of trained models between stages.

A trainer's checkpoint in `W/checkpoints/` holds `state` (its whole train state, restored against an
abstract target so shardings are kept) and `data` (the input iterator's position, JSON), so a
resumed run sees exactly the batches an uninterrupted one would have seen. Stage 1 adds `generator`
(gen_s and gen_t parameters); a classifier keeps its best checkpoint apart in `W/best/` with
`model` (params and BatchNorm statistics) and `metrics` (its validation scores).

Every run stores its config as `W/config_<trainer>.json`. `load_generator(W)` and
`load_classifier(W)` rebuild a trained model from that stored config alone: the networks' shapes
come from `jax.eval_shape`, and only the weights are read (no optimizer, no discriminator), so a
later stage or a new user needs nothing but the workdir.
"""

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from alenn_jax import fusion, image_io, models, rtv, sharding
from alenn_jax.errors import UserInputError
from alenn_jax.models import inpainting

# Checkpoint item names.
STATE = "state"  # A trainer's whole train state.
DATA = "data"  # The input iterator's position.
GENERATOR = "generator"  # Stage 1: {"gen_s": params, "gen_t": params}.
MODEL = "model"  # A classifier's best checkpoint: {"params": ..., "batch_stats": ...}.
METRICS = "metrics"  # ... and its validation scores.
STAGE1_ITEMS = (STATE, GENERATOR, DATA)
LATEST_ITEMS = (STATE, DATA)
BEST_ITEMS = (MODEL, METRICS)
CHECKPOINTS, BEST = "checkpoints", "best"  # Folders of a workdir.


def abstract(tree):
  """The shapes, dtypes and shardings of `tree`: what orbax restores into."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def restore_latest(manager: ocp.CheckpointManager, state, train_iter):
  """(state, True) from the manager's latest checkpoint, with `train_iter` moved to where it was;
  (state, False) unchanged when there is none."""
  step = manager.latest_step()
  if step is None:
    return state, False
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      **{STATE: ocp.args.StandardRestore(abstract(state)), DATA: ocp.args.JsonRestore()}
    ),
  )
  train_iter.set_state(restored[DATA])
  logging.info("resumed from step %d", step)
  return restored[STATE], True


def manager(directory: str, item_names, *, timeout_s: float, **options) -> ocp.CheckpointManager:
  """An orbax manager saving into `directory` (`options`: CheckpointManagerOptions fields). Its
  barriers carry a key prefix of its own, a hash of the directory, so two managers of one run
  saving the same step at once (a classifier's latest and best) never meet at the same barrier,
  which on several processes stops both; orbax waits `timeout_s` for the other processes' writes.
  """
  prefix = "ckpt_" + hashlib.sha1(os.path.abspath(directory).encode()).hexdigest()[:12]
  opts = ocp.CheckpointManagerOptions(
    create=True,
    async_options=ocp.AsyncOptions(timeout_secs=max(1, math.ceil(timeout_s))),
    multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix),
    **options,
  )
  return ocp.CheckpointManager(directory, item_names=item_names, options=opts)


def save(manager: ocp.CheckpointManager, step: int, items: dict, force: bool = False) -> None:
  """Saves `items` (item name -> orbax save args) at `step`, unless `step` is already saved."""
  if manager.latest_step() != step:
    manager.save(step, args=ocp.args.Composite(**items), force=force)


def close(managers, writer=None) -> None:
  """Waits for every manager's pending saves, closes them and flushes `writer`: how a trainer
  ends, normally or on preemption."""
  for manager in managers:
    manager.wait_until_finished()
    manager.close()
  if writer is not None:
    writer.flush()


def check_finite(step_metrics: dict, step: int, manager: ocp.CheckpointManager) -> None:
  """Raises FloatingPointError, naming the metrics, when a loss is NaN or infinite; nothing of the
  bad step is saved, so the last good checkpoint stays the latest."""
  bad = {k: float(v) for k, v in step_metrics.items() if not math.isfinite(float(v))}
  if bad:
    manager.wait_until_finished()
    raise FloatingPointError(
      f"non-finite loss at step {step}: {bad}. Stopped without saving; the last good checkpoint "
      f"(step {manager.latest_step()}) is intact. Lower optimizer.learning_rate or check the data."
    )


def flatten_config(tree, prefix="") -> dict:
  """A nested dict (a config as JSON) as {"dotted.field": value}, tuples as lists."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten_config(value, f"{name}."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def check_config(
  config, workdir: str, shape_fields: tuple[str, ...], outputs=("checkpoints", "best")
) -> None:
  """Refuses to continue a workdir whose stored config differs in a field that changes shapes.

  The first run stores its config as `W/config_<trainer>.json`. A later run whose value of a field
  under any of `shape_fields` (dotted prefixes, e.g. "model.", "data.image_size") differs is a
  UserInputError naming the field, unless `config.force_restart` is set: then the old
  `outputs` (folders of W) are moved aside (`<folder>.replaced-<time>`, never deleted) and the run
  starts over. Other fields (step counts, learning rate, logging) may change between runs.
  """
  path = config_path(workdir, config.trainer)
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      stored = flatten_config(json.load(f))
    now = flatten_config(current)

    def rank(name):  # The first of `shape_fields` a name falls under, or None.
      return next((i for i, p in enumerate(shape_fields) if name == p or name.startswith(p)), None)

    # Named in the order of `shape_fields`, so the field that explains the others comes first.
    changed = sorted(
      (
        (rank(name), name)
        for name in set(stored) | set(now)
        if rank(name) is not None and stored.get(name) != now.get(name)
      ),
    )
    changed = [name for _, name in changed]
    if changed:
      name = changed[0]
      if not config.get("force_restart", False):
        raise UserInputError(
          f"config.{name}={now.get(name)!r} differs from the run already in {workdir} "
          f"({stored.get(name)!r}), and it changes shapes. Use a new --workdir, or add "
          f"--config.force_restart=True to move its {', '.join(outputs)} aside and start over."
        )
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for sub in outputs:
        old = os.path.join(workdir, sub)
        if os.path.isdir(old) and jax.process_index() == 0:
          os.replace(old, os.path.join(workdir, f"{sub}.replaced-{stamp}"))
          logging.warning("config.%s changed: moved %s to %s.replaced-%s", name, old, sub, stamp)
  if jax.process_index() == 0:
    image_io.write_text(path, json.dumps(current, indent=2, sort_keys=True))


# ----------------------------------------------------------------------------------------------
# Hand-over: trained models from a workdir's stored config.


def config_path(workdir: str, trainer: str) -> str:
  return os.path.join(workdir, f"config_{trainer}.json")


def read_stored_config(workdir: str, trainer: str, what: str) -> ml_collections.ConfigDict:
  """The config a `trainer` run stored in `workdir` (`what` names the run in the error)."""
  path = config_path(workdir, trainer)
  if not os.path.exists(path):
    raise UserInputError(
      f"{workdir} holds no {what} (no {os.path.basename(path)}); train it there first, or name "
      "the workdir that holds it."
    )
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _replicated_abstract(shapes, mesh):
  target = sharding.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=target), shapes)


def _steps(directory: str, items) -> tuple[int, ...]:
  if not os.path.isdir(directory):
    return ()
  with ocp.CheckpointManager(directory, item_names=items) as manager:
    return tuple(manager.all_steps())


@dataclasses.dataclass(frozen=True)
class TrainedGenerator:
  """A stage 1 generator pair loaded from its workdir: what the LE maps and predictions use."""

  workdir: str
  step: int
  config: ml_collections.ConfigDict  # The stage 1 run's stored config.
  gen_s: inpainting.Generator
  gen_t: inpainting.Generator
  params: Any  # {"gen_s": ..., "gen_t": ...}, replicated on the mesh.
  rtv: rtv.RTVParams

  @property
  def image_size(self) -> int:
    return int(self.config.data.image_size)


def load_generator(workdir: str, step: int | None = None, mesh=None) -> TrainedGenerator:
  """The stage 1 generators of `workdir` at `step` (None: the latest checkpoint), built from the
  config stored there; only the generators' weights are read."""
  workdir = os.path.abspath(workdir)  # Orbax reads absolute paths only.
  config = read_stored_config(workdir, "inpainting", "stage 1 run")
  mesh = mesh or sharding.make_mesh()
  gen_s, gen_t, _, _ = inpainting.build(config.model)
  shapes = inpainting.generator_shapes(config.model, config.data.image_size)
  directory = os.path.join(workdir, CHECKPOINTS)
  steps = _steps(directory, STAGE1_ITEMS)
  if not steps:
    raise UserInputError(f"no stage 1 checkpoint in {directory}; train stage 1 there first.")
  step = max(steps) if step is None else step
  if step not in steps:
    raise UserInputError(f"no stage 1 checkpoint of step {step} in {directory}; it has {steps}.")
  with ocp.CheckpointManager(directory, item_names=STAGE1_ITEMS) as manager:
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        **{GENERATOR: ocp.args.StandardRestore(_replicated_abstract(shapes, mesh))}
      ),
    )
  return TrainedGenerator(
    workdir=workdir,
    step=int(step),
    config=config,
    gen_s=gen_s,
    gen_t=gen_t,
    params=restored[GENERATOR],
    rtv=rtv.RTVParams.from_config(config.rtv),
  )


@dataclasses.dataclass(frozen=True)
class TrainedClassifier:
  """A stage 2b classifier loaded from its workdir."""

  workdir: str
  step: int
  config: ml_collections.ConfigDict  # The classifier run's stored config.
  model: Any  # The backbone module (1 logit).
  params: Any
  batch_stats: Any
  metrics: dict | None  # Validation scores stored with the best checkpoint (None for others).

  def probabilities(self, inputs):
    """P(abnormal) `[B]` of model inputs `[B, S, S, C]` (`train_classifier.model_inputs`)."""
    variables = {"params": self.params, "batch_stats": self.batch_stats}
    return jax.nn.sigmoid(self.model.apply(variables, inputs, train=False)[:, 0])


def classifier_shapes(model, config):
  """{"params", "batch_stats"} shapes of `model` for `config`'s image size and fusion."""
  size = config.data.image_size
  channels = fusion.num_channels(config.fusion, bool(config.model.get("pretrained", "")))
  x = jax.ShapeDtypeStruct((1, size, size, channels), "float32")
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def load_classifier(workdir: str, which: str | int = "best", mesh=None) -> TrainedClassifier:
  """The classifier of `workdir`, built from the config stored there: `which` is "best" (the
  checkpoint selected on validation), "latest", or a step number; only the weights are read."""
  workdir = os.path.abspath(workdir)  # Orbax reads absolute paths only.
  config = read_stored_config(workdir, "classifier", "classifier run")
  mesh = mesh or sharding.make_mesh()
  model = models.classifier_from_config(config)
  target = _replicated_abstract(classifier_shapes(model, config), mesh)
  best_dir, latest_dir = os.path.join(workdir, BEST), os.path.join(workdir, CHECKPOINTS)
  best_steps, latest_steps = _steps(best_dir, BEST_ITEMS), _steps(latest_dir, LATEST_ITEMS)
  if which == "best" or (not isinstance(which, str) and which in best_steps):
    if not best_steps:
      raise UserInputError(f"no best checkpoint in {best_dir}; train the classifier there first.")
    step = max(best_steps) if which == "best" else which
    with ocp.CheckpointManager(best_dir, item_names=BEST_ITEMS) as manager:
      restored = manager.restore(
        step,
        args=ocp.args.Composite(
          **{MODEL: ocp.args.StandardRestore(target), METRICS: ocp.args.JsonRestore()}
        ),
      )
    weights, stored_metrics = restored[MODEL], restored[METRICS]
  else:
    if which == "latest":
      if not latest_steps:
        raise UserInputError(f"no checkpoint in {latest_dir}; train the classifier there first.")
      step = max(latest_steps)
    elif isinstance(which, str) or which not in latest_steps:
      raise UserInputError(
        f"checkpoint {which!r} of {workdir}: use 'best', 'latest' or one of the steps "
        f"{sorted(set(latest_steps) | set(best_steps))}."
      )
    else:
      step = which
    with ocp.CheckpointManager(latest_dir, item_names=LATEST_ITEMS) as manager:
      # Only params and batch_stats of the saved train state (not the optimizer state).
      restore = ocp.args.PyTreeRestore(
        item=target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
      )
      restored = manager.restore(step, args=ocp.args.Composite(**{STATE: restore}))
    weights, stored_metrics = restored[STATE], None
  return TrainedClassifier(
    workdir=workdir,
    step=int(step),
    config=config,
    model=model,
    params=weights["params"],
    batch_stats=weights["batch_stats"],
    metrics=stored_metrics,
  )
