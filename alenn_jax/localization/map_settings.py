"""What a localize job's maps are made with: its config resolved against the stage 1 run it
maps with (`resolve`), the fields whose change makes stored maps stale (`MAP_FIELDS`), where
the maps are kept to each image's body (`keep_to_foreground`) and where things are stored.
"""

import os

import ml_collections
import numpy as np
from absl import logging

from alenn_jax import data_splits, foreground, input_pipeline, le_maps
from alenn_jax.errors import UserInputError
from alenn_jax.localization import difference
from alenn_jax.models import inpainting

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
  data_splits.resolve_eval_split(config.data)
  if not config.report.split:
    config.report.split = data_splits.scored_split(config.data)
  if config.method == "multi_window" and not config.gap:
    config.gap = config.window
  if config.method != "multi_window":
    config.gap = 0  # Unused: kept out of the stored record so it never marks maps stale.
  if config.method != "context":
    config.context = 0
  _resolve_canvas(config, stage1.model)
  if config.method == "context":
    _resolve_context(config, stage1.model)
  _resolve_scores(config)
  _check_normal_error(config)
  if config.get("foreground", "none") not in foreground.MODES:
    raise UserInputError(
      f"config.foreground={config.foreground!r}: use one of {', '.join(foreground.MODES)} "
      "(body: D only inside the patient's body, found in the image itself; none: every pixel)."
    )
  with config.unlocked():  # Off: kept out of the stored record, as maps made before them.
    if config.get("foreground") == "none":
      del config["foreground"]
    if "normal_error" in config and not config.normal_error.patch:
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


def _resolve_canvas(config, model) -> None:
  """`pad` (-1: the stride, rounded up to what the generator's depth needs) and `letterbox`."""
  factor = 2 ** int(model.depth)
  half = max(1, factor // 2)  # A pad must be a multiple of this for the canvas to fit the model.
  if config.pad < 0:  # The stride, rounded up to such a multiple.
    config.pad = -(-config.stride // half) * half
  if config.pad and (config.pad >= config.data.image_size or config.pad % half):
    raise UserInputError(
      f"config.pad={config.pad}: the reflected border must be smaller than the image "
      f"({config.data.image_size} px) and a multiple of {half} (so the padded "
      f"image stays a multiple of 2**model.depth = {factor}); use -1 (the stride) or 0 (none)."
    )
  if config.letterbox not in difference.LETTERBOX:
    raise UserInputError(
      f"config.letterbox={config.letterbox!r}: use one of {', '.join(difference.LETTERBOX)} (how "
      "the bars around a non-square image are filled before its windows are repainted)."
    )


def _resolve_context(config, model) -> None:
  """`context` (0: the window plus the generator's receptive field), checked against it."""
  # What one generator computes an output pixel from: a crop that cuts into it puts the crop's
  # edge (zero or reflected padding) where the whole image has anatomy.
  factor = 2 ** int(model.depth)
  reach = inpainting.receptive_field(model)
  enough = difference.default_context(config.window, model)
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


def _resolve_scores(config) -> None:
  """`highpass`, `smooth` (-1: window / 8 and / 16) and `shift` (-1: window / 16, at least 1)."""
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
    return difference.reflect_into_letterbox(images, boxes)
  return images


def normal_error_path(workdir: str, fold: int | None = None) -> str:
  """Where the normal-error model of the maps of `fold` (None: not cross-fitted) is stored."""
  name = "normal_error.npz" if fold is None else f"normal_error_f{fold}.npz"
  return os.path.join(workdir, le_maps.LE_MAPS, name)


def generator_dirs(source: str, folds: int) -> list[str]:
  """The stage 1 workdirs the maps come from: `source`, or `source/fold<k>` when cross-fitted."""
  if folds <= 1:
    return [source]
  return [os.path.join(source, f"fold{k}") for k in range(folds)]
