"""Checkpoint helpers shared by the trainers (orbax `CheckpointManager`).

A trainer's checkpoint holds two items: `state` (its whole train state, restored against an
abstract target so shardings are kept) and `data` (the input iterator's position, JSON), so a
resumed run sees exactly the batches an uninterrupted one would have seen.
"""

import json
import math
import os
import time

import jax
import orbax.checkpoint as ocp
from absl import logging

from alenn_jax import image_io
from alenn_jax.errors import UserInputError


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
      state=ocp.args.StandardRestore(abstract(state)), data=ocp.args.JsonRestore()
    ),
  )
  train_iter.set_state(restored.data)
  logging.info("resumed from step %d", step)
  return restored.state, True


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


def _flatten(tree, prefix="") -> dict:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, f"{name}."))
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
  path = os.path.join(workdir, f"config_{config.trainer}.json")
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      stored = _flatten(json.load(f))
    now = _flatten(current)
    changed = [
      name
      for name in sorted(set(stored) | set(now))
      if any(name == p or name.startswith(p) for p in shape_fields)
      and stored.get(name) != now.get(name)
    ]
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
