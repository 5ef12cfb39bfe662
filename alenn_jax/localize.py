"""Stage 2a: sliding-window lesion localization and LE maps. The paper's text names an
"Algorithm 1" for it without printing it; what follows is our reading of its description (a
window of side w slid with step d < w, each position repainted as normal).

For every window position k the window is hidden (mask M_k), repainted as normal by stage 1
(gen_s -> gen_t, composited: I_k = I * M_k + I_hat * (1 - M_k)), and |I - I_k| is accumulated inside
the window. The difference map D is that sum divided by the number of windows covering each pixel
(windows at the border are placed flush with it, so every pixel is covered). By default each
window's error is first taken less its local mean inside the window, then only what no repainted
pixel within `shift` px matches is kept, and D is lightly blurred (`highpass`, `shift`, `smooth`:
a wrong guess of a hidden region's brightness, or an edge repainted a pixel off, is not a lesion;
all 0 give the plain |I - I_k|; see `difference_map`). The paper's text speaks of the "relative
error" between an image and its repainting without a formula; |I - I_k| is our reading). All windows of a batch
go through the generators in one vmapped computation, `chunk` windows at a time (a `lax.scan` over
chunks), so memory stays bounded.

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
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from alenn_jax import (
  checkpointing,
  foreground,
  image_io,
  input_pipeline,
  le_maps,
  multihost,
  normal_error,
  report,
  rtv,
  sharding,
)
from alenn_jax import masks as masks_lib
from alenn_jax.errors import UserInputError
from alenn_jax.models import inpainting

METHODS = ("per_window", "multi_window", "context")
LETTERBOX = ("reflect", "zero")  # How the bars around a non-square image are filled for the maps.
# Fields whose change makes stored maps stale: refused, or moved aside with force_restart
# (checkpointing.check_config). The generator is named by its workdir and checkpoint step.
MAP_FIELDS = (
  "generator.",
  "method",
  "window",
  "stride",
  "gap",
  "context",
  "pad",
  "letterbox",
  "highpass",
  "shift",
  "smooth",
  "normal_error.",
  "foreground",
  "data.name",
  "data.image_size",
  "data.selection_fraction",  # Which training images are carved into `selection`.
  # Shard k holds the images [k, k + 1) * batches_per_shard * batch_size of a split: finished
  # shards are skipped on resumption only while the layout stays the same.
  "data.batch_size",
  "batches_per_shard",
)
# Fields of the stage 1 run's config.data that the maps inherit when config.data.name is "".
INHERITED_DATA_FIELDS = (
  "name",
  "data_dir",
  "manual_dir",
  "group_by",
  "image_size",
  "train_split",
  "eval_split",
  "selection_fraction",
  "paper_selection",
  "seed",
)


def _chunked(arrays, chunk: int, pad_values):
  """Each `[K, ...]` array padded along axis 0 to a multiple of `chunk` (with its pad value) and
  reshaped to `[K / chunk, chunk, ...]`."""
  k = len(arrays[0])
  chunk = max(1, min(chunk, k))
  pad = -k % chunk
  out = []
  for a, value in zip(arrays, pad_values, strict=True):
    filler = np.full((pad, *a.shape[1:]), value, a.dtype)
    out.append(jnp.asarray(np.concatenate([a, filler]).reshape(-1, chunk, *a.shape[1:])))
  return out


def difference_map(
  params,
  images,
  structure,
  *,
  inpaint_fn,
  window: int,
  stride: int,
  chunk: int,
  method: str = "per_window",
  gap: int = 0,
  context: int = 0,
  pad: int = 0,
  highpass: float = 0.0,
  shift: int = 0,
  smooth: float = 0.0,
):
  """D of a batch: `[B, H, W, 1]` images in [-1, 1] -> `[B, H, W, 1]` mean |I - I_k| (in [0, 1]).

  D is always the mean, over the sliding windows k covering a pixel, of |I - I_k| at that pixel,
  where I_k is the image with window k repainted; the methods differ in how I_k is obtained:

    per_window    one generator pass over the whole image per window (the paper's text)
    multi_window  one pass repaints a whole group of windows lying at least `gap` pixels apart
                  (`masks.window_groups`); window k's difference is still taken inside window k
                  only, so a group of one window is exactly `per_window` (RIAD's disjoint cells,
                  Zavrtanik et al. 2021). Passes per image: about ceil((window + gap) / stride)**2.
    context       one pass per window over a `context` x `context` crop around it (clamped to the
                  image), as InTra (Pirnay & Chai 2021) repaints patches from a neighbourhood;
                  `context` >= the image side is the whole image, i.e. `per_window`. A crop
                  smaller than the window plus the generator's receptive field
                  (`default_context`) cuts off context the generator uses: whatever size of
                  crop it was trained on, its repaintings then depart from the whole image's.

  With `pad` > 0 the images (and structure) are first extended by `pad` reflected pixels on every
  side, the windows are laid out over that larger canvas and D is cropped back to the images. With
  `pad` = stride every pixel is covered by as many windows as an inner one (without it a corner
  pixel has one window where an inner pixel has (window / stride)**2, so its mean is the noisiest),
  and a window at the image's border is repainted with context on all sides instead of against
  the generator's own padding. On the demo's phantoms the maxima of D that missed the lesion lay
  on the image border in 30 of 41 cases without it (BENCHMARKS.md).

  With `highpass` = sigma > 0, what window k contributes is |r_k - m_k| instead of |r_k|, where
  r_k = I - I_k is the signed repainting error and m_k its local mean inside the hole (a Gaussian
  of that sigma, normalised over the hole's pixels): a repainting that gets the brightness of a
  region wrong but its content right scores nothing there. On the demo's phantoms most of |r_k|
  on normal anatomy is such an offset (the bright condyle, whose brightness a hidden window cannot
  tell), while a lesion is a local deviation from its surroundings, so this lifted the pointing
  game from 0.41 to 0.63 (BENCHMARKS.md). With `shift` = s > 0, a pixel of the hole scores the
  smallest difference between I there and the (brightness-corrected) repainting at any pixel up to
  s px away along a row or a column: min over |d| <= s of |I(x) - I_k'(x + d)|, I_k' = I - r_k. A
  cortex edge repainted a pixel off then scores nothing, while a lesion, which the repainting has
  nowhere near, keeps its difference: a thin line as well as a blob, since the repainting has no
  such line a pixel away either (on the demo's phantoms, `test` pointing game 0.609 -> 0.703,
  BENCHMARKS.md). With `smooth` = sigma > 0, D (the mean over windows) is then blurred with a
  Gaussian of that sigma, so a lesion's pixels share the evidence of their neighbours (pixel AUROC
  0.92 -> 0.97 there). All 0: the plain |I - I_k|.

  Args:
    params: whatever `inpaint_fn` needs (stage 1: {"gen_s": ..., "gen_t": ...}).
    images: `[B, H, W, 1]` in [-1, 1].
    structure: `[B, H, W, 1]` RTV structure in [-1, 1] (computed once per image, not per window).
    inpaint_fn: `(params, images, structure, mask) -> composited images`, all `[N, h, w, 1]`.
    window, stride: sliding-window side and step, pixels.
    chunk: passes run together (times the batch size: the generator's batch).
    method, gap, context: see above.
    pad: reflected border (px) added before the windows are laid out; 0: none (the paper's text
      has none).
    highpass, smooth: Gaussian sigmas (px), see above; 0: off.
    shift: how far (px) the repainting may be off before a difference counts, see above; 0: off.
  """
  if method not in METHODS:
    raise ValueError(f"method={method!r}; use one of {', '.join(METHODS)}.")
  same = dict(
    inpaint_fn=inpaint_fn,
    window=window,
    stride=stride,
    chunk=chunk,
    method=method,
    gap=gap,
    context=context,
    highpass=highpass,
    shift=shift,
  )
  if pad:
    _, h, w, _ = images.shape
    widths = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    padded = (jnp.pad(images, widths, mode="reflect"), jnp.pad(structure, widths, mode="reflect"))
    # Blurred on the reflected canvas, so the border is blurred with real neighbours.
    d = difference_map(params, *padded, **same, smooth=smooth)
    return d[:, pad : pad + h, pad : pad + w]
  if smooth:
    d = difference_map(params, images, structure, **same)
    return gaussian_blur(d, smooth, mode="symmetric")
  _, h, w, _ = images.shape
  positions = masks_lib.window_positions(h, w, window, stride)
  holes = masks_lib.window_masks(h, w, window, stride)  # [K, H, W, 1]: one window per pass.
  coverage = (1.0 - holes).sum(axis=0)  # [H, W, 1], >= 1 everywhere.
  if method == "context" and (context < h or context < w):
    total = _context_sum(
      params, images, structure, inpaint_fn, window, positions, chunk, context, highpass, shift
    )
    return total / jnp.asarray(coverage)
  if method == "multi_window":  # [G, H, W, 1]: each pass hides a group of windows.
    groups = masks_lib.window_groups(h, w, window, stride, gap)
    holes = np.stack([masks_lib.hole_masks(h, w, window, positions[g]) for g in groups])
  (holes,) = _chunked([holes], chunk, [1.0])  # Padding passes hide nothing, so add nothing.

  def body(total, mask_chunk):  # [n, H, W, 1]: n passes, each over the whole batch.
    n = mask_chunk.shape[0]
    masks = _same_for_each_image(len(images), mask_chunk)
    composite = inpaint_fn(params, *_by_image(n, images, structure), masks)
    diff = hole_difference(images[:, None], _split(composite, n), mask_chunk[None], highpass, shift)
    return total + diff.sum(axis=1), None

  total, _ = jax.lax.scan(body, jnp.zeros_like(images), holes)
  return total / jnp.asarray(coverage)


def _reflected_index(i, start, length):
  """Positions `i` (any integers) reflected into `[start, start + length)` about its edges, the
  edge pixel not repeated (numpy's and `jnp.pad`'s "reflect", repeated for any distance)."""
  period = jnp.maximum(2 * (length - 1), 1)
  j = jnp.mod(i - start, period)
  j = jnp.where(j >= length, period - j, j)
  return start + jnp.where(length > 1, j, 0)


def reflect_into_letterbox(images, boxes):
  """`[B, S, S, C]` letterboxed images with the bars around each image's extent (`boxes` `[B, 4]`:
  top, left, height, width) filled by reflecting the image about its own edges, as `jnp.pad`'s
  "reflect" would extend the extent alone; the extent itself is unchanged.

  An image that is not square meets its letterbox bars inside the canvas, where the reflected
  border of `difference_map`'s `pad` never reaches: a window there is repainted against a black
  bar, and D of such edges was the maximum of most FracAtlas maps (BENCHMARKS.md)."""
  _, height, width, _ = images.shape

  def one(image, box):
    rows = _reflected_index(jnp.arange(height), box[0], box[2])
    cols = _reflected_index(jnp.arange(width), box[1], box[3])
    return image[rows][:, cols]

  return jax.vmap(one)(images, jnp.asarray(boxes, jnp.int32))


def gaussian_blur(x, sigma: float, mode: str = "constant"):
  """`[..., H, W, C]` blurred by a Gaussian of `sigma` px truncated as scipy's `gaussian_filter`
  (radius int(3 sigma + 0.5); `rtv.gaussian_blur` truncates as MATLAB's fspecial), the border
  extended by `jnp.pad`'s `mode` ("constant": zeros)."""
  radius = int(3.0 * sigma + 0.5)
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  return rtv.separable_filter(x, taps / taps.sum(), mode)


def _merge(x):
  """`[B, n, ...]` -> `[B * n, ...]`, image-major: the batch axis, the one sharded over devices,
  stays the outer one, so each device keeps its own images' passes. (`jax.vmap` over passes
  would put the pass axis outside instead, and every pass would gather the batch across devices;
  on emulated CPU devices that made maps 5x slower and could hang.)"""
  return x.reshape((-1, *x.shape[2:]))


def _split(x, n: int):
  """`[B * n, ...]` -> `[B, n, ...]`, the inverse of `_merge`."""
  return x.reshape((-1, n, *x.shape[1:]))


def _by_image(n: int, *arrays):
  """Each `[B, ...]` array repeated for `n` passes as `[B * n, ...]` (image-major, `_merge`)."""
  return [_merge(jnp.broadcast_to(a[:, None], (a.shape[0], n, *a.shape[1:]))) for a in arrays]


def _same_for_each_image(b: int, masks):
  """`[n, ...]` masks of n passes, the same for each of `b` images, as `[b * n, ...]` (image-major,
  `_merge`)."""
  return _merge(jnp.broadcast_to(masks[None], (b, *masks.shape)))


def hole_difference(images, composite, mask, highpass: float = 0.0, shift: int = 0):
  """What one pass contributes, inside its hole (mask 0) and zero elsewhere, in [0, 1]: |r| / 2,
  r = images - composite, or with `highpass` = sigma > 0, |r - m| / 2 with m the Gaussian mean of r
  over the hole's pixels, and with `shift` = s > 0 the least |images(x) - c(x + d)| / 2 over the
  offsets d up to s px along a row or column, c = images - r the (corrected) repainting
  (`difference_map`). Arrays are `[..., H, W, C]` and broadcast: `mask` without the batch axis
  (e.g. `[1, n, H, W, 1]` for n passes), so each hole's normalising weight is computed once, not
  once per image."""
  hole = 1.0 - mask
  r = (images - composite) * hole
  if highpass:
    weight = gaussian_blur(hole, highpass)
    r = (r - gaussian_blur(r, highpass) / jnp.maximum(weight, 1e-6)) * hole
  if shift:
    # Outside the hole c is the image itself, so near the hole's rim the image's own pixels count
    # as matches too: what the window hides is judged against everything around it.
    repainted = images - r
    error = jnp.abs(r)
    for offset in _cross_offsets(shift):
      error = jnp.minimum(error, jnp.abs(images - _shifted(repainted, *offset)))
    r = error * hole
  return jnp.abs(r) / 2.0


def _cross_offsets(radius: int) -> list[tuple[int, int]]:
  """The nonzero (dy, dx) up to `radius` px along a row or a column: 4 * radius offsets."""
  steps = [d for d in range(-radius, radius + 1) if d]
  return [(d, 0) for d in steps] + [(0, d) for d in steps]


def _shifted(x, dy: int, dx: int):
  """`[..., H, W, C]` -> y with y[..., i, j, :] = x[..., i + dy, j + dx, :], the edge pixels
  repeated beyond the border."""
  h, w = x.shape[-3:-1]
  p = max(abs(dy), abs(dx))
  widths = [(0, 0)] * (x.ndim - 3) + [(p, p), (p, p), (0, 0)]
  x = jnp.pad(x, widths, mode="edge")
  return x[..., p + dy : p + dy + h, p + dx : p + dx + w, :]


def _context_sum(
  params, images, structure, inpaint_fn, window, positions, chunk, context, highpass, shift
):
  """Sum over windows of |I - I_k| inside window k, each I_k repainted from a crop around k."""
  b, h, w, c = images.shape
  ch, cw = min(context, h), min(context, w)
  tops = np.clip(positions[:, 0] + window // 2 - ch // 2, 0, h - ch)
  lefts = np.clip(positions[:, 1] + window // 2 - cw // 2, 0, w - cw)
  offsets = np.stack([tops, lefts], axis=1).astype(np.int32)  # [K, 2] crop corners.
  local = np.stack(
    [
      masks_lib.hole_masks(ch, cw, window, (pos - off)[None])
      for pos, off in zip(positions, offsets, strict=True)
    ]
  )  # [K, ch, cw, 1]: each window's hole inside its crop.
  offsets, local = _chunked([offsets, local], chunk, [0, 1.0])

  def crops(x, offsets):  # [B, H, W, c] -> [B, n, ch, cw, c]: each image's n crops.
    one = lambda o: jax.lax.dynamic_slice(x, (0, o[0], o[1], 0), (b, ch, cw, c))
    return jnp.swapaxes(jax.vmap(one)(offsets), 0, 1)

  def place(diff, offset):  # [B, ch, cw, c] at `offset` of a zero `[B, H, W, c]`.
    return jax.lax.dynamic_update_slice(jnp.zeros_like(images), diff, (0, offset[0], offset[1], 0))

  def body(total, chunk_args):  # n windows, each over the whole batch (image-major, `_merge`).
    offsets, mask_chunk = chunk_args
    n = len(offsets)
    crop, crop_structure = crops(images, offsets), crops(structure, offsets)
    masks = _same_for_each_image(b, mask_chunk)
    composite = inpaint_fn(params, _merge(crop), _merge(crop_structure), masks)
    diff = hole_difference(crop, _split(composite, n), mask_chunk[None], highpass, shift)
    return total + jax.vmap(place)(jnp.swapaxes(diff, 0, 1), offsets).sum(axis=0), None

  total, _ = jax.lax.scan(body, jnp.zeros_like(images), (offsets, local))
  return total


def stage1_inpaint_fn(gen_s: inpainting.Generator, gen_t: inpainting.Generator):
  """The stage 1 repainting (composited) as an `inpaint_fn` for `difference_map`."""

  def inpaint(params, images, structure, mask):
    return inpainting.inpaint(gen_s, gen_t, params, images, structure, mask)[2]

  return inpaint


# ----------------------------------------------------------------------------------------------
# The job.


def default_context(window: int, model: ml_collections.ConfigDict) -> int:
  """The `context` crop (px) that holds a window and all a generator of `model` computes its
  pixels from: window + `inpainting.receptive_field`, rounded up to a multiple of 2**depth."""
  factor = 2 ** int(model.depth)
  return -(-(window + inpainting.receptive_field(model)) // factor) * factor


def resolve(config: ml_collections.ConfigDict, stage1: ml_collections.ConfigDict):
  """The job's config with what it leaves to the stage 1 run filled in: the dataset (when
  `data.name` is ""), the image size (0), the window (0: stage 1's mask window) and the stride (0:
  half the window), the split thresholds are chosen on (`data.eval_split`, resolved from the
  dataset) and the report split ("": the scored split, `input_pipeline.scored_split`)."""
  config = config.copy_and_resolve_references()
  if not config.data.name:
    for field in INHERITED_DATA_FIELDS:
      default = input_pipeline.data_config()[field]  # For runs stored before the field existed.
      config.data[field] = stage1.data.get(field, default)
  if not config.data.image_size:
    config.data.image_size = int(stage1.data.image_size)
  if not config.window:
    config.window = int(stage1.masks.window)
  if not config.stride:
    config.stride = max(1, config.window // 2)
  input_pipeline.resolve_eval_split(config.data)
  if not config.report.split:
    config.report.split = input_pipeline.scored_split(config.data)
  if config.method == "multi_window" and not config.gap:
    config.gap = config.window
  if config.method != "multi_window":
    config.gap = 0  # Unused: kept out of the stored record so it never marks maps stale.
  if config.method != "context":
    config.context = 0
  factor = 2 ** int(stage1.model.depth)
  half = max(1, factor // 2)  # A pad must be a multiple of this for the canvas to fit the model.
  if config.pad < 0:  # The stride, rounded up to such a multiple.
    config.pad = -(-config.stride // half) * half
  if config.pad and (config.pad >= config.data.image_size or config.pad % half):
    raise UserInputError(
      f"config.pad={config.pad}: the reflected border must be smaller than the image "
      f"({config.data.image_size} px) and a multiple of {half} (so the padded "
      f"image stays a multiple of 2**model.depth = {factor}); use -1 (the stride) or 0 (none)."
    )
  if config.letterbox not in LETTERBOX:
    raise UserInputError(
      f"config.letterbox={config.letterbox!r}: use one of {', '.join(LETTERBOX)} (how the bars "
      "around a non-square image are filled before its windows are repainted)."
    )
  if config.method == "context":
    # What one generator computes an output pixel from: a crop that cuts into it puts the crop's
    # edge (zero or reflected padding) where the whole image has anatomy.
    reach = inpainting.receptive_field(stage1.model)
    enough = default_context(config.window, stage1.model)
    if not config.context:
      config.context = enough
    elif config.context < config.window + 2 or config.context % factor:
      raise UserInputError(
        f"config.context={config.context}: the crop a window is repainted from must be at least "
        f"window + 2 = {config.window + 2} px and a multiple of {factor} (2**model.depth of the "
        f"stage 1 generator); 0 picks {enough} (the window plus the generator's {reach}-px "
        "receptive field)."
      )
    elif config.context < enough:
      logging.warning(
        "config.context=%d is smaller than the window plus the stage 1 generator's receptive "
        "field (%d + %d px): each window's repainting loses context the generator would use, "
        "and D departs from per_window's (BENCHMARKS.md: agreement by crop size). 0 picks %d.",
        config.context,
        config.window,
        reach,
        enough,
      )
  for field, fraction in (("highpass", 8), ("smooth", 16)):
    value = config[field]
    if value == -1:  # A fraction of the window: the scale the generator repaints at.
      config[field] = config.window / fraction
    elif value < 0:
      raise UserInputError(
        f"config.{field}={value}: use a Gaussian sigma in px (> 0), 0 (off: the plain "
        f"|I - I_k|) or -1 (window / {fraction})."
      )
  largest = max(0, (config.window - 1) // 2)  # Beyond it a hole's centre is matched from outside.
  if config.shift == -1:  # A fraction of the window, as the high-pass.
    config.shift = min(largest, max(1, round(config.window / 16)))
  elif not (isinstance(config.shift, int) and 0 <= config.shift <= largest):
    raise UserInputError(
      f"config.shift={config.shift}: use a whole number of px in [0, {largest}] (less than half "
      f"the {config.window}-px window; 0: off) or -1 (window / 16, at least 1)."
    )
  _check_normal_error(config)
  if config.get("foreground", "none") not in foreground.MODES:
    raise UserInputError(
      f"config.foreground={config.foreground!r}: use one of {', '.join(foreground.MODES)} "
      "(body: D only inside the patient's body, found in the image itself; none: every pixel)."
    )
  if config.get("foreground") == "none":
    with config.unlocked():  # Off: kept out of the stored record, as maps made before it.
      del config["foreground"]
  if "normal_error" in config and not config.normal_error.patch:
    with config.unlocked():  # Off: kept out of the stored record, as maps made before it.
      del config["normal_error"]
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


def _check_normal_error(config) -> None:
  """One `error:` line for a `config.normal_error` field out of its range."""
  ne = config.get("normal_error")
  if ne is None or ne.patch == 0:
    return

  def whole(value, least):
    return isinstance(value, int) and not isinstance(value, bool) and value >= least

  checks = (
    (
      "patch",
      whole(ne.patch, 1) and ne.patch % 2 == 1,
      "an odd number of px (the side of the neighbourhood a pixel is described by), or 0 (off)",
    ),
    ("codes", whole(ne.codes, 2), "a whole number >= 2 (k-means classes)"),
    (
      "pixels",
      whole(ne.pixels, ne.codes if whole(ne.codes, 2) else 2),
      f"a whole number >= codes ({ne.codes}): the normal pixels the classes are fitted on",
    ),
    ("images", whole(ne.images, 1), "a whole number >= 1: the training normals mapped to fit them"),
    ("iterations", whole(ne.iterations, 0), "a whole number >= 0 (k-means steps)"),
    (
      "floor",
      isinstance(ne.floor, (int, float)) and ne.floor > 0,
      "a number > 0: the fraction of the normals' mean D added to E",
    ),
  )
  for field, ok, what in checks:
    if not ok:
      raise UserInputError(f"config.normal_error.{field}={ne[field]!r}: use {what}.")


def make_map_step(config, generator: checkpointing.TrainedGenerator):
  """`(params, images, boxes, normal=None) -> D`, built once per run (`boxes`: each image's
  `valid_box` in its letterboxed square, on this process's devices or host; `normal`: a fitted
  `normal_error.Model`, which divides D by the error normals of each pixel's appearance get, or
  None for the raw D). A batch whose images all fill their square runs the program without the
  letterbox fill, so maps of square images are bit for bit those of `letterbox="zero"`."""
  inpaint_fn = stage1_inpaint_fn(generator.gen_s, generator.gen_t)
  # Maps stored before the field saw the letterbox bars as stage 1 does (zeros).
  letterbox = config.get("letterbox", "zero")

  def plain(params, images, normal):
    structure = rtv.structure_of(images, generator.rtv)
    d = difference_map(
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
  filled = jax.jit(lambda p, images, boxes, n: plain(p, reflect_into_letterbox(images, boxes), n))

  def step(params, images, boxes, normal=None):
    if letterbox == "reflect":
      sides = np.asarray(jax.device_get(boxes))[:, 2:]
      if np.any(sides != np.asarray(images.shape[1:3])):
        return filled(params, images, boxes, normal)
    return plain(params, images, normal)

  return step


def keeps_foreground(config) -> bool:
  """Whether the maps of `config` (a localize config) are kept to each image's body."""
  return config.get("foreground", "none") == "body"


def keep_to_foreground(config, image: np.ndarray, d: np.ndarray):
  """`(D, body)`: D (`[h, w]`, one image's extent) zero outside the image's body
  (`foreground.body_mask` of `image`, its `[h, w]` pixels) when `config.foreground` is "body";
  else D as it is and None."""
  if not keeps_foreground(config):
    return d, None
  body = foreground.body_mask(image)
  return np.where(body, d, 0.0).astype(d.dtype), body


def canvas(config, images, boxes):
  """The images as `make_map_step` repaints them: with the letterbox bars reflected when
  `config.letterbox` is "reflect" (square images are unchanged either way)."""
  if config.get("letterbox", "zero") == "reflect":
    return reflect_into_letterbox(images, boxes)
  return images


def normal_error_path(workdir: str, fold: int | None = None) -> str:
  """Where the normal-error model of the maps of `fold` (None: not cross-fitted) is stored."""
  name = "normal_error.npz" if fold is None else f"normal_error_f{fold}.npz"
  return os.path.join(workdir, le_maps.LE_MAPS, name)


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
    image = np.asarray(jax.device_get(canvas(config, batch["image"], batch["valid_box"])))
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
  masked = keeps_foreground(config)
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
            kept, body = keep_to_foreground(config, image, d[i][box])
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


def generator_dirs(source: str, folds: int) -> list[str]:
  """The stage 1 workdirs the maps come from: `source`, or `source/fold<k>` when cross-fitted."""
  if folds <= 1:
    return [source]
  return [os.path.join(source, f"fold{k}") for k in range(folds)]


def _load_generators(config, source: str, mesh) -> list:
  """The generator of every fold, each checked to have been trained without its own fold."""
  if not isinstance(config.folds, int) or config.folds < 1:
    raise UserInputError(f"config.folds={config.folds!r}: use 1 (no cross-fitting) or more.")
  generators = []
  for k, directory in enumerate(generator_dirs(source, config.folds)):
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
  for split in input_pipeline.split_names(config.data):
    labels = input_pipeline.split_labels(config.data, split)
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
  config = resolve(config, generator.config)
  with config.unlocked():
    # Recorded with the maps (W/config_localize.json), so maps of another generator are stale.
    config.generator = ml_collections.ConfigDict(
      {"workdir": generator.workdir, "step": generator.step}
    )
    if config.folds > 1:
      config.generator.folds = [f"{g.workdir}@{g.step}" for g in generators]
    config.data.folds = config.folds
  checkpointing.check_config(config, workdir, MAP_FIELDS, (le_maps.LE_MAPS,))
  multihost.barrier("localize: stale maps moved aside")
  step = make_map_step(config, generator)
  shards, indices = plan_shards(config, input_pipeline.split_names(config.data), config.folds)
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
      path = normal_error_path(workdir, fold)
      if not os.path.exists(path) and jax.process_index() == 0:
        model = fit_normal_error(config, step, params[k], mesh, fold)
        normal_error.save(path, model)
    multihost.barrier("localize: normal-error models written")
    models = [normal_error.load(normal_error_path(workdir, fold)) for fold in folds]
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
    labels = input_pipeline.split_labels(config.data, config.data.train_split)
    scale = compute_scale(config, workdir, labels)
    report.localization_report(config, workdir, mesh, scale)
    gap = normal_le_by_split(config, workdir, scale)
    image_io.write_csv(os.path.join(workdir, "report", "normal_le.csv"), gap, list(gap[0]))
  multihost.barrier("localize: scale and report written")
  return {"images": counts, "scale": le_maps.read_scale(workdir)}
