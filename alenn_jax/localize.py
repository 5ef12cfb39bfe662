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

`python launch.py --config=configs/localize.py --workdir=W` writes D for every split to
`W/le_maps/<split>/shard_XXXXX.npz` (resumable: finished shards are skipped), the constant to
`W/le_maps/scale.json`, then the report: Figure 3 and `W/report/localization.csv`. Each shard holds
`ids` (str [N]), `shapes` (int32 [N, 2]) and `offsets` (int64 [N + 1]) into `data` (float16, the
maps of all N images flattened, each cropped back to the image inside the letterbox square).
"""

import glob
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from alenn_jax import checkpointing, image_io, input_pipeline, sharding
from alenn_jax import masks as masks_lib
from alenn_jax import train_inpainting as ti
from alenn_jax.errors import UserInputError


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


def stage1_inpaint_fn(static: ti.Static):
  """The stage 1 repainting as an `inpaint_fn` for `difference_map`."""

  def inpaint(params, images, structure, mask):
    return ti.inpaint(static, params["gen_s"], params["gen_t"], images, structure, mask)[2]

  return inpaint


def le_map(d: np.ndarray, scale: float) -> np.ndarray:
  """LE = clip(D / scale, 0, 1) with the dataset-level `scale`."""
  return np.clip(np.asarray(d, np.float32) / scale, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Storage of the maps.


def _shard_path(workdir: str, split: str, index: int) -> str:
  return os.path.join(workdir, "le_maps", split, f"shard_{index:05d}.npz")


def write_shard(path: str, ids, maps) -> None:
  shapes = np.asarray([m.shape for m in maps], np.int32).reshape(-1, 2)
  offsets = np.concatenate([[0], np.cumsum([m.size for m in maps])]).astype(np.int64)
  data = (
    np.concatenate([m.ravel() for m in maps]).astype(np.float16)
    if maps
    else np.zeros(0, np.float16)
  )
  with image_io.atomic_open(path, "wb") as f:
    np.savez(f, ids=np.asarray(ids, dtype=str), shapes=shapes, offsets=offsets, data=data)


def read_difference_maps(workdir: str, split: str) -> dict[str, np.ndarray]:
  """id -> D (float32 `[h, w]`, the image's own letterboxed extent) of every shard of `split`."""
  files = sorted(glob.glob(os.path.join(workdir, "le_maps", split, "shard_*.npz")))
  if not files:
    raise UserInputError(
      f"no LE maps for split {split!r} in {workdir}/le_maps; run "
      f"python launch.py --config=configs/localize.py --workdir={workdir} first."
    )
  out = {}
  for path in files:
    with np.load(path) as shard:
      ids, shapes, offsets, data = shard["ids"], shard["shapes"], shard["offsets"], shard["data"]
    for i, example_id in enumerate(ids):
      out[str(example_id)] = data[offsets[i] : offsets[i + 1]].astype(np.float32).reshape(shapes[i])
  return out


def read_scale(workdir: str) -> float:
  path = os.path.join(workdir, "le_maps", "scale.json")
  if not os.path.exists(path):
    raise UserInputError(
      f"no {path}; run the localize job (configs/localize.py) on {workdir} first."
    )
  with open(path) as f:
    return float(json.load(f)["scale"])


def read_le_maps(workdir: str, split: str) -> dict[str, np.ndarray]:
  """id -> LE map in [0, 1] for `split`, what stage 2 fuses with the images."""
  scale = read_scale(workdir)
  return {k: le_map(v, scale) for k, v in read_difference_maps(workdir, split).items()}


# ----------------------------------------------------------------------------------------------
# The job.


def map_split(config, params, static, mesh, workdir: str, split: str) -> int:
  """Computes and stores D for every image of `split`, skipping finished shards; returns a count."""
  step = jax.jit(
    lambda params, images: difference_map(
      params,
      images,
      ti.structure_of(images, static),
      inpaint_fn=stage1_inpaint_fn(static),
      window=config.window,
      stride=config.stride,
      chunk=config.chunk,
    )
  )
  iterator = input_pipeline.eval_iterator(config.data, mesh, split, labels=(0, 1))
  per_shard = config.batches_per_shard
  num_shards = -(-iterator.num_batches // per_shard)
  done, t0, computed = 0, time.perf_counter(), 0
  for shard in range(num_shards):
    path = _shard_path(workdir, split, shard)
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
    write_shard(path, ids, maps)
    done += n_images
    computed += n_images
    rate = computed / max(time.perf_counter() - t0, 1e-9)
    remaining = sum(
      1 for s in range(shard + 1, num_shards) if not os.path.exists(_shard_path(workdir, split, s))
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
  path = os.path.join(workdir, "le_maps", "scale.json")
  if os.path.exists(path):
    return read_scale(workdir)
  maps = read_difference_maps(workdir, config.data.train_split)
  values = [m.ravel() for k, m in maps.items() if labels_by_id.get(k) == 0]
  if not values:
    raise UserInputError(
      f"no normal training images in {config.data.name} to calibrate the LE scale."
    )
  scale = float(np.percentile(np.concatenate(values), config.percentile))
  scale = max(scale, 1e-6)
  image_io.write_text(
    path, json.dumps({"scale": scale, "percentile": config.percentile, "images": len(values)})
  )
  logging.info(
    "LE scale: %g (%g-th percentile of D over %d training normals)",
    scale,
    config.percentile,
    len(values),
  )
  return scale


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Maps every split, calibrates the LE scale on the training normals, writes the report."""
  if jax.process_count() > 1:
    raise UserInputError("the localize job runs on one host; start it without --multihost.")
  from alenn_jax import report

  checkpointing.check_config(
    config,
    workdir,
    ("window", "stride", "data.name", "data.image_size", "stage1.model."),
    ("le_maps",),
  )
  mesh = sharding.make_mesh()
  stage1_config = config.stage1
  static = ti.Static.from_config(stage1_config)
  source = config.init_from or workdir
  gen_s, gen_t, step = ti.restore_generator(source, stage1_config)
  logging.info("stage 1 generator from %s, step %d", source, step)
  params = jax.device_put({"gen_s": gen_s, "gen_t": gen_t}, sharding.replicated(mesh))
  counts = {}
  for split in input_pipeline.split_names(config.data):
    counts[split] = map_split(config, params, static, mesh, workdir, split)
  labels = input_pipeline.split_labels(config.data, config.data.train_split)
  scale = compute_scale(config, workdir, labels)
  report.localization_report(config, workdir, mesh, scale)
  return {"images": counts, "scale": scale}
