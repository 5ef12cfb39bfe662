"""Stage 2a, the job: LE maps for every image of every split, from a stage 1 workdir. D itself is
`difference.difference_map`; the settings it is made with, `map_settings`.

The LE map is D divided by ONE dataset-level constant (a percentile of D over the training normals,
computed once and stored in the workdir), clipped to [0, 1]. Never normalised per image: that would
invent a lesion in every normal image.

`python launch.py --config=configs/localize.py --workdir=W [--config.init_from=S]` loads the
stage 1 generator of S (default W) from the config stored there (`checkpointing.load_generator`),
writes D for every split to `W/le_maps/<split>/` (resumable: finished shards are skipped; format in
`le_maps`), the constant to `W/le_maps/scale.json`, then the report: Figure 3 and
`W/report/localization.csv` (and `localization_by_kind.csv` where the dataset records each
lesion's kind, as the phantoms do). Dataset and image size default to the stage 1 run's. With
`--multihost` each process maps its share of the missing shards on its own devices (`run`).
"""

import itertools
import os
import time
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from alenn_jax import (
  checkpointing,
  data_splits,
  image_io,
  input_pipeline,
  le_maps,
  multihost,
  normal_error,
  rtv,
  sharding,
)
from alenn_jax.errors import UserInputError
from alenn_jax.localization import difference, map_settings
from alenn_jax.reporting import localization_report


def make_map_step(config, generator: checkpointing.TrainedGenerator):
  """`(params, images, boxes, normal=None) -> D`, built once per run (`boxes`: each image's
  `valid_box` in its letterboxed square, on this process's devices or host; `normal`: a fitted
  `normal_error.Model`, which divides D by the error normals of each pixel's appearance get, or
  None for the raw D). A batch whose images all fill their square runs the program without the
  letterbox fill, so maps of square images are bit for bit those of `letterbox="zero"`."""
  inpaint_fn = difference.stage1_inpaint_fn(generator.gen_s, generator.gen_t)
  # Maps stored before the field saw the letterbox bars as stage 1 does (zeros).
  letterbox = config.get("letterbox", "zero")

  def plain(params, images, normal):
    structure = rtv.structure_of(images, generator.rtv)
    d = difference.difference_map(
      params,
      images,
      structure,
      inpaint_fn=inpaint_fn,
      window=config.window,
      stride=config.stride,
      chunk=config.chunk,
      method=config.method,
      gap=config.gap,
      context=config.context,
      pad=config.pad,
      # Maps stored before the fields existed were the plain |I - I_k|.
      highpass=config.get("highpass", 0.0),
      shift=config.get("shift", 0),
      smooth=config.get("smooth", 0.0),
    )
    if normal is None:
      return d
    return normal_error.calibrate(normal, images, d)

  plain = jax.jit(plain)
  filled = jax.jit(
    lambda p, images, boxes, n: plain(p, difference.reflect_into_letterbox(images, boxes), n)
  )

  def step(params, images, boxes, normal=None):
    if letterbox == "reflect":
      sides = np.asarray(jax.device_get(boxes))[:, 2:]
      if np.any(sides != np.asarray(images.shape[1:3])):
        return filled(params, images, boxes, normal)
    return plain(params, images, normal)

  return step


def fit_normal_error(config, step, params, mesh, fold: int | None) -> normal_error.Model:
  """`normal_error.fit` on the raw D of the first `config.normal_error.images` training normals
  (of `fold`'s when cross-fitted: images the generator of that fold did not see)."""
  ne = config.normal_error
  t0 = time.perf_counter()
  split = config.data.train_split
  chosen = input_pipeline.selected_indices(config.data, split, labels=(0,), fold=fold)
  if not len(chosen):
    raise UserInputError(
      f"no normal training images in {config.data.name} to fit config.normal_error on; set "
      "config.normal_error.patch=0 to map without it."
    )
  chosen = chosen[: ne.images]
  images, ds, valid = [], [], []
  for batch in input_pipeline.batches_alone(config.data, mesh, split, chosen):
    boxes = np.asarray(batch["valid_box"])
    d = np.asarray(jax.device_get(step(params, batch["image"], batch["valid_box"])))
    image = np.asarray(
      jax.device_get(map_settings.canvas(config, batch["image"], batch["valid_box"]))
    )
    _, h, w, _ = image.shape
    for i, weight in enumerate(np.asarray(batch["weight"])):
      if weight > 0:
        top, left, bh, bw = boxes[i]
        inside = np.zeros((h, w), bool)
        inside[top : top + bh, left : left + bw] = True
        images.append(image[i])
        ds.append(d[i])
        valid.append(inside)
  model = normal_error.fit(
    np.stack(images),
    np.stack(ds),
    np.stack(valid),
    patch=ne.patch,
    codes=ne.codes,
    pixels=ne.pixels,
    iterations=ne.iterations,
    floor_fraction=ne.floor,
    seed=config.data.seed,
  )
  logging.info(
    "normal_error: %d classes of %dx%d patches fitted on %d training normals%s in %.1f s; floor %g",
    ne.codes,
    ne.patch,
    ne.patch,
    len(images),
    "" if fold is None else f" (fold {fold})",
    time.perf_counter() - t0,
    float(model.floor),
  )
  return model


class _Shard(NamedTuple):
  """One file of maps: the images `[start, stop)` of `split`'s selected examples (of `fold`'s
  when cross-fitted)."""

  split: str
  fold: int | None
  index: int
  start: int
  stop: int


def plan_shards(config, splits, folds: int) -> tuple[list[_Shard], dict]:
  """Every shard of every split (and fold), and the selected dataset indices they index into.

  The layout depends only on the data and `batches_per_shard * data.batch_size`, never on the
  number of processes, so maps written by a run with any process count are found again."""
  size = config.batches_per_shard * config.data.batch_size
  shards, indices = [], {}
  for split in splits:
    for fold in [None] if folds <= 1 else range(folds):
      chosen = input_pipeline.selected_indices(config.data, split, labels=(0, 1), fold=fold)
      indices[split, fold] = chosen
      for index, start in enumerate(range(0, len(chosen), size)):
        shards.append(_Shard(split, fold, index, start, min(start + size, len(chosen))))
  return shards, indices


def map_shards(
  config, step, params_of, mesh, workdir: str, shards, indices, normal_of=lambda fold: None
) -> int:
  """Computes and stores D for each of `shards` with `make_map_step`'s `step` on this process's
  `mesh` (`params_of(fold)`: the generator parameters that map that fold; `normal_of(fold)`: its
  normal-error model or None); returns the images mapped."""
  t0, computed = time.perf_counter(), 0
  total = sum(s.stop - s.start for s in shards)
  masked = map_settings.keeps_foreground(config)
  local_batch = config.data.batch_size // jax.process_count()
  # One reader per run of consecutive shards of a split and fold (opening the dataset and starting
  # its threads costs about a second): a shard holds whole local batches, except the last of a
  # split, which ends its run.
  runs = [list(run) for _, run in itertools.groupby(shards, key=lambda s: (s.split, s.fold))]
  number = 0
  for run in runs:
    chosen = np.concatenate([indices[s.split, s.fold][s.start : s.stop] for s in run])
    iterator = input_pipeline.batches_alone(config.data, mesh, run[0].split, chosen)
    for shard in run:
      number += 1
      ids, maps, bodies = [], [], []
      for _ in range(-(-(shard.stop - shard.start) // local_batch)):
        batch = next(iterator)
        d = step(params_of(shard.fold), batch["image"], batch["valid_box"], normal_of(shard.fold))
        d = np.asarray(jax.device_get(d))[..., 0]
        boxes = np.asarray(batch["valid_box"])
        # The images come to the host only when their bodies are needed.
        images = np.asarray(jax.device_get(batch["image"]))[..., 0] if masked else None
        for i, weight in enumerate(np.asarray(batch["weight"])):
          if weight > 0:
            top, left, h, w = boxes[i]
            ids.append(str(batch["id"][i]))
            box = np.s_[top : top + h, left : left + w]
            image = images[i][box] if masked else None
            kept, body = map_settings.keep_to_foreground(config, image, d[i][box])
            maps.append(kept)
            bodies.append(body)
      le_maps.write_shard(
        le_maps.shard_path(workdir, shard.split, shard.index, shard.fold),
        ids,
        maps,
        bodies if masked else None,
      )
      computed += len(ids)
      rate = computed / max(time.perf_counter() - t0, 1e-9)
      logging.info(
        "le_maps %s%s: shard %d (%d/%d of this process), %d/%d images, %.2f images/s, ETA %.0f s",
        shard.split,
        "" if shard.fold is None else f" (fold {shard.fold})",
        shard.index,
        number,
        len(shards),
        computed,
        total,
        rate,
        (total - computed) / max(rate, 1e-9),
      )
  return computed


def compute_scale(config, workdir: str, labels_by_id: dict[str, int]) -> float:
  """The `config.percentile`-th percentile of D over the training normals (stored once, and
  computed again when the percentile changes)."""
  stored = le_maps.read_scale_record(workdir)
  if stored is not None and stored.get("percentile") == config.percentile:
    return float(stored["scale"])
  maps = le_maps.read_difference_maps(workdir, config.data.train_split)
  # Only what the maps score: with a foreground, the body's pixels (artefacts set no scale).
  bodies = le_maps.read_foreground(workdir, config.data.train_split)
  values = [
    m[bodies[k]] if k in bodies else m.ravel() for k, m in maps.items() if labels_by_id.get(k) == 0
  ]
  if not values:
    raise UserInputError(
      f"no normal training images in {config.data.name} to calibrate the LE scale."
    )
  scale = float(np.percentile(np.concatenate(values), config.percentile))
  scale = max(scale, 1e-6)
  le_maps.write_scale(workdir, scale, percentile=config.percentile, images=len(values))
  logging.info(
    "LE scale: %g (%g-th percentile of D over %d training normals)",
    scale,
    config.percentile,
    len(values),
  )
  return scale


def _load_generators(config, source: str, mesh) -> list:
  """The generator of every fold, each checked to have been trained without its own fold."""
  if not isinstance(config.folds, int) or config.folds < 1:
    raise UserInputError(f"config.folds={config.folds!r}: use 1 (no cross-fitting) or more.")
  generators = []
  for k, directory in enumerate(map_settings.generator_dirs(source, config.folds)):
    generator = checkpointing.load_generator(directory, mesh=mesh)
    data = generator.config.data
    if config.folds > 1 and (data.get("folds", 1), data.get("holdout_fold", -1)) != (
      config.folds,
      k,
    ):
      raise UserInputError(
        f"config.folds={config.folds}: the stage 1 run in {directory} was trained with "
        f"data.folds={data.get('folds', 1)}, data.holdout_fold={data.get('holdout_fold', -1)}; "
        f"fold {k}'s generator must be trained with data.folds={config.folds}, "
        f"data.holdout_fold={k}."
      )
    logging.info("stage 1 generator from %s, step %d", directory, generator.step)
    generators.append(generator)
  return generators


def normal_le_by_split(config, workdir: str, scale: float) -> list[dict]:
  """Mean LE over the normal images of every split (over their body's pixels where the maps were
  kept to it): a generator scores the images it was fit on lower than any held-out image
  (in-sample maps), which cross-fitting removes."""
  rows = []
  for split in data_splits.split_names(config.data):
    labels = data_splits.split_labels(config.data, split)
    maps = le_maps.read_difference_maps(workdir, split)
    bodies = le_maps.read_foreground(workdir, split)  # The kept pixels, where there are some.
    values = [
      le_maps.le_map(d[bodies[k]] if k in bodies else d, scale).mean()
      for k, d in maps.items()
      if labels.get(k) == 0
    ]
    rows.append(
      {
        "split": split,
        "normal_images": len(values),
        "mean_le": f"{np.mean(values):.4f}" if values else "nan",
        "maps": f"cross-fitted ({config.folds} folds)"
        if config.folds > 1
        else ("in-sample" if split == config.data.train_split else "held-out"),
      }
    )
  return rows


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Maps every split with the stage 1 generator of `config.init_from` (default: `workdir`; with
  `config.folds` > 1, each image with its fold's generator), calibrates the LE scale on the
  training normals, writes the report.

  On several processes (`--multihost`) each maps a contiguous share of the shards still missing,
  on its own devices and with no collective in between (the maps of one image do not depend on
  any other); then process 0 computes the scale and writes the report while the others wait."""
  # Each process maps with its own devices: no collective between processes while mapping.
  mesh = sharding.make_mesh(jax.local_devices())
  source = config.init_from or workdir
  generators = _load_generators(config, source, mesh)
  generator = generators[0]
  config = map_settings.resolve(config, generator.config)
  with config.unlocked():
    # Recorded with the maps (W/config_localize.json), so maps of another generator are stale.
    config.generator = ml_collections.ConfigDict(
      {"workdir": generator.workdir, "step": generator.step}
    )
    if config.folds > 1:
      config.generator.folds = [f"{g.workdir}@{g.step}" for g in generators]
    config.data.folds = config.folds
  checkpointing.check_config(config, workdir, map_settings.MAP_FIELDS, (le_maps.LE_MAPS,))
  multihost.barrier("localize: stale maps moved aside")
  step = make_map_step(config, generator)
  shards, indices = plan_shards(config, data_splits.split_names(config.data), config.folds)
  found = [os.path.exists(le_maps.shard_path(workdir, s.split, s.index, s.fold)) for s in shards]
  found = multihost.agreed(np.asarray(found, np.int32)).astype(bool)
  todo = [s for s, done in zip(shards, found, strict=True) if not done]
  share = np.array_split(np.arange(len(todo)), jax.process_count())[jax.process_index()]
  logging.info(
    "le_maps: %d shards, %d done before, %d for this process (%d of %d)",
    len(shards),
    int(found.sum()),
    len(share),
    jax.process_index() + 1,
    jax.process_count(),
  )
  params = [g.params for g in generators]
  models = [None] * len(generators)
  if todo and config.get("normal_error") is not None and config.normal_error.patch:
    folds = [None] if config.folds <= 1 else list(range(config.folds))
    for k, fold in enumerate(folds):
      path = map_settings.normal_error_path(workdir, fold)
      if not os.path.exists(path) and jax.process_index() == 0:
        model = fit_normal_error(config, step, params[k], mesh, fold)
        normal_error.save(path, model)
    multihost.barrier("localize: normal-error models written")
    models = [normal_error.load(map_settings.normal_error_path(workdir, fold)) for fold in folds]
  map_shards(
    config,
    step,
    lambda fold: params[fold or 0],
    mesh,
    workdir,
    [todo[i] for i in share],
    indices,
    lambda fold: models[fold or 0],
  )
  multihost.barrier("localize: every share of the maps written")
  counts = {}
  for s in shards:
    counts[s.split] = counts.get(s.split, 0) + s.stop - s.start
  if jax.process_index() == 0:
    labels = data_splits.split_labels(config.data, config.data.train_split)
    scale = compute_scale(config, workdir, labels)
    localization_report.localization_report(config, workdir, mesh, scale)
    gap = normal_le_by_split(config, workdir, scale)
    image_io.write_csv(os.path.join(workdir, "report", "normal_le.csv"), gap, list(gap[0]))
  multihost.barrier("localize: scale and report written")
  return {"images": counts, "scale": le_maps.read_scale(workdir)}
