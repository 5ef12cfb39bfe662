"""Stage 2a: sliding-window lesion localization (the paper's Algorithm 1) and LE maps.

For every window position k the window is hidden (mask M_k), repainted as normal by stage 1
(gen_s -> gen_t, composited: I_k = I * M_k + I_hat * (1 - M_k)), and |I - I_k| is accumulated inside
the window. The difference map D is that sum divided by the number of windows covering each pixel
(windows at the border are placed flush with it, so every pixel is covered). All windows of a batch
go through the generators in one vmapped computation, `chunk` windows at a time (a `lax.scan` over
chunks), so memory stays bounded.

The LE map is D divided by ONE dataset-level constant (a percentile of D over the training normals,
computed once and stored in the workdir), clipped to [0, 1]. Never normalised per image: that would
invent a lesion in every normal image.

`python launch.py --config=configs/localize.py --workdir=W [--config.init_from=S]` loads the
stage 1 generator of S (default W) from the config stored there (`checkpointing.load_generator`),
writes D for every split to `W/le_maps/<split>/` (resumable: finished shards are skipped; format in
`le_maps`), the constant to `W/le_maps/scale.json`, then the report: Figure 3 and
`W/report/localization.csv`. Dataset and image size default to the stage 1 run's.
"""

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from alenn_jax import checkpointing, input_pipeline, le_maps, report, rtv, sharding
from alenn_jax import masks as masks_lib
from alenn_jax.errors import UserInputError
from alenn_jax.models import inpainting

# Fields whose change makes stored maps stale (checkpointing.check_config moves them aside).
MAP_FIELDS = ("window", "stride", "data.name", "data.image_size")
# Fields of the stage 1 run's config.data that the maps inherit when config.data.name is "".
INHERITED_DATA_FIELDS = (
  "name",
  "data_dir",
  "manual_dir",
  "image_size",
  "train_split",
  "eval_split",
  "seed",
)


def difference_map(params, images, structure, *, inpaint_fn, window: int, stride: int, chunk: int):
  """D of a batch: `[B, H, W, 1]` images in [-1, 1] -> `[B, H, W, 1]` mean |I - I_k| (in [0, 1]).

  Args:
    params: whatever `inpaint_fn` needs (stage 1: {"gen_s": ..., "gen_t": ...}).
    images: `[B, H, W, 1]` in [-1, 1].
    structure: `[B, H, W, 1]` RTV structure in [-1, 1] (computed once per image, not per window).
    inpaint_fn: `(params, images, structure, mask) -> composited images`, all `[N, H, W, 1]`.
    window, stride: sliding-window side and step, pixels.
    chunk: windows inpainted together (times the batch size: the generator's batch).
  """
  _, h, w, _ = images.shape
  masks = masks_lib.window_masks(h, w, window, stride)  # [K, H, W, 1]
  coverage = (1.0 - masks).sum(axis=0)  # [H, W, 1], >= 1 everywhere.
  k = len(masks)
  chunk = max(1, min(chunk, k))
  pad = -k % chunk  # Padding windows hide nothing, so they add nothing.
  masks = np.concatenate([masks, np.ones((pad, h, w, 1), np.float32)]).reshape(-1, chunk, h, w, 1)

  def one_window(mask):
    mask = jnp.broadcast_to(mask[None], images.shape)
    composite = inpaint_fn(params, images, structure, mask)
    return jnp.abs(images - composite) * (1.0 - mask) / 2.0

  def body(total, mask_chunk):
    return total + jax.vmap(one_window)(mask_chunk).sum(axis=0), None

  total, _ = jax.lax.scan(body, jnp.zeros_like(images), jnp.asarray(masks))
  return total / jnp.asarray(coverage)


def stage1_inpaint_fn(gen_s: inpainting.Generator, gen_t: inpainting.Generator):
  """The stage 1 repainting (composited) as an `inpaint_fn` for `difference_map`."""

  def inpaint(params, images, structure, mask):
    return inpainting.inpaint(gen_s, gen_t, params, images, structure, mask)[2]

  return inpaint


# ----------------------------------------------------------------------------------------------
# The job.


def resolve(config: ml_collections.ConfigDict, stage1: ml_collections.ConfigDict):
  """The job's config with what it leaves to the stage 1 run filled in: the dataset (when
  `data.name` is ""), the image size (0), the window (0: stage 1's mask window) and the stride (0:
  half the window), and the report split ("": the evaluation split)."""
  config = config.copy_and_resolve_references()
  if not config.data.name:
    for field in INHERITED_DATA_FIELDS:
      config.data[field] = stage1.data[field]
  if not config.data.image_size:
    config.data.image_size = int(stage1.data.image_size)
  if not config.window:
    config.window = int(stage1.masks.window)
  if not config.stride:
    config.stride = max(1, config.window // 2)
  if not config.report.split:
    config.report.split = config.data.eval_split
  if config.stride > config.window:
    raise UserInputError(
      f"config.stride={config.stride} is larger than config.window={config.window}: pixels "
      "between windows would never be repainted; use a stride in [1, window]."
    )
  if config.window > config.data.image_size:
    raise UserInputError(
      f"config.window={config.window} is larger than config.data.image_size="
      f"{config.data.image_size}; use a window in [1, image_size]."
    )
  return config


def make_map_step(config, generator: checkpointing.TrainedGenerator):
  """The jitted `(params, images) -> D`, built once per run."""
  inpaint_fn = stage1_inpaint_fn(generator.gen_s, generator.gen_t)

  def step(params, images):
    structure = rtv.structure_of(images, generator.rtv)
    return difference_map(
      params,
      images,
      structure,
      inpaint_fn=inpaint_fn,
      window=config.window,
      stride=config.stride,
      chunk=config.chunk,
    )

  return jax.jit(step)


def map_split(config, step, params, mesh, workdir: str, split: str) -> int:
  """Computes and stores D for every image of `split` with `make_map_step`'s `step`, skipping
  finished shards; returns a count."""
  iterator = input_pipeline.eval_iterator(config.data, mesh, split, labels=(0, 1))
  per_shard = config.batches_per_shard
  num_shards = -(-iterator.num_batches // per_shard)
  done, t0, computed = 0, time.perf_counter(), 0
  for shard in range(num_shards):
    path = le_maps.shard_path(workdir, split, shard)
    batches = [
      next(iterator) for _ in range(min(per_shard, iterator.num_batches - shard * per_shard))
    ]
    n_images = sum(int(np.sum(np.asarray(b["weight"]))) for b in batches)
    if os.path.exists(path):
      done += n_images
      continue
    ids, maps = [], []
    for batch in batches:
      d = np.asarray(jax.device_get(step(params, batch["image"])))[..., 0]
      boxes = np.asarray(batch["valid_box"])
      for i, weight in enumerate(np.asarray(batch["weight"])):
        if weight > 0:
          top, left, h, w = boxes[i]
          ids.append(str(batch["id"][i]))
          maps.append(d[i, top : top + h, left : left + w])
    le_maps.write_shard(path, ids, maps)
    done += n_images
    computed += n_images
    rate = computed / max(time.perf_counter() - t0, 1e-9)
    remaining = sum(
      1
      for s in range(shard + 1, num_shards)
      if not os.path.exists(le_maps.shard_path(workdir, split, s))
    )
    eta = remaining * per_shard * config.data.batch_size / max(rate, 1e-9)
    logging.info(
      "le_maps %s: shard %d/%d, %d images, %.2f images/s, ETA %.0f s",
      split,
      shard + 1,
      num_shards,
      done,
      rate,
      eta,
    )
  return done


def compute_scale(config, workdir: str, labels_by_id: dict[str, int]) -> float:
  """The `config.percentile`-th percentile of D over the training normals (stored once)."""
  if os.path.exists(le_maps.scale_path(workdir)):
    return le_maps.read_scale(workdir)
  maps = le_maps.read_difference_maps(workdir, config.data.train_split)
  values = [m.ravel() for k, m in maps.items() if labels_by_id.get(k) == 0]
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


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Maps every split with the stage 1 generator of `config.init_from` (default: `workdir`),
  calibrates the LE scale on the training normals, writes the report."""
  if jax.process_count() > 1:
    raise UserInputError("the localize job runs on one host; start it without --multihost.")
  mesh = sharding.make_mesh()
  source = config.init_from or workdir
  generator = checkpointing.load_generator(source, mesh=mesh)
  logging.info("stage 1 generator from %s, step %d", source, generator.step)
  config = resolve(config, generator.config)
  checkpointing.check_config(config, workdir, MAP_FIELDS, (le_maps.LE_MAPS,))
  step = make_map_step(config, generator)
  counts = {}
  for split in input_pipeline.split_names(config.data):
    counts[split] = map_split(config, step, generator.params, mesh, workdir, split)
  labels = input_pipeline.split_labels(config.data, config.data.train_split)
  scale = compute_scale(config, workdir, labels)
  report.localization_report(config, workdir, mesh, scale)
  return {"images": counts, "scale": scale}
