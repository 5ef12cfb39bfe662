"""Checks of a whole config before any job starts: every enum-like or bounded field, wherever it
sits (a stage's own config or a block of the pipeline's), so a typo in an override or a config
argument is one line naming the field instead of a traceback minutes into a run.

`validate(config)` walks the config and checks each field it knows by name:

  backbone / backbones   one of models.BACKBONES
  fusion / fusions       one of fusion.MODES
  masks.weights          one non-negative probability per mask kind (masks.KINDS), not all zero
  rtv.*                  RTV parameters: positive (n_iter and max_cg_iters >= 1)
  model.padding          stage 1 generators': one of models.inpainting.PADDINGS
  structure              stage 1's: where the RTV structure comes from, "in_step" or "per_image"
  group_by               data.group_by: one of datasets.folder.GROUP_BY
  seeds, folds           positive integers (classifier runs per backbone and fusion; cross-fitting
                         folds of the LE maps and of the data)
  selection_fraction     data's: in (0, 0.5] (the share of train patients carved into `selection`)
  image_size, batch_size positive (a localize config's image_size may be 0: the stage 1 run's)
  crop                   data's: 0 (whole images) or a side that fits in image_size
  cache_mb               data's: MiB of decoded training examples kept, >= 0 (0: none)
  window, stride         a localize config's: 1 <= stride <= window (0: stage 1's defaults)
  foreground             a localize config's: one of foreground.MODES
  method, gap, context   a localize config's: method one of localize.METHODS; multi_window's gap
                         >= 1 (0: the window), so a group's windows never touch; context's crop
                         at least window + 2 (0: the window plus the generator's receptive field)
"""

import dataclasses

import ml_collections

from alenn_jax import foreground, fusion, masks, models, rtv
from alenn_jax.datasets.folder.folder import GROUP_BY
from alenn_jax.errors import UserInputError
from alenn_jax.localization import difference
from alenn_jax.models import inpainting


def _fail(path: str, value, expected: str):
  raise UserInputError(f"{path}={value!r} is not valid; {expected}.")


def _check_choice(path: str, value, choices) -> None:
  if value not in choices:
    _fail(path, value, f"use one of {', '.join(choices)}")


def _check_choices(path: str, values, choices) -> None:
  if isinstance(values, str) or not values:
    _fail(path, values, f"give a non-empty tuple of {', '.join(choices)}")
  for value in values:
    if value not in choices:
      _fail(path, value, f"each entry must be one of {', '.join(choices)}")


def _check_mask_weights(path: str, weights) -> None:
  expected = f"give {len(masks.KINDS)} non-negative probabilities, one per kind {masks.KINDS}"
  try:
    values = [float(w) for w in weights]
  except (TypeError, ValueError):
    _fail(path, weights, expected)
  if len(values) != len(masks.KINDS) or min(values) < 0 or sum(values) <= 0:
    _fail(path, weights, expected)


def _check_rtv(path: str, block) -> None:
  names = [f.name for f in dataclasses.fields(rtv.RTVParams)]
  for name in block:
    if name not in names:
      _fail(f"{path}.{name}", block[name], f"config.rtv has the fields {', '.join(names)}")
  for name in names:
    if name in block:
      value = block[name]
      integer = name in ("n_iter", "max_cg_iters")
      if not isinstance(value, int | float) or value <= 0 or (integer and value < 1):
        _fail(f"{path}.{name}", value, "it must be positive" + (" (an integer)" if integer else ""))


def _check_positive(path: str, value, allow_zero: bool = False) -> None:
  if not isinstance(value, int) or value < 0 or (value == 0 and not allow_zero):
    note = " (or 0: inherited)" if allow_zero else ""
    _fail(path, value, f"it must be a positive integer{note}")


def _check_crop(path: str, value, image_size) -> None:
  """A training crop is a square inside the `image_size` letterbox square (0: none)."""
  fits = isinstance(image_size, int) and image_size > 0
  if (
    not isinstance(value, int)
    or isinstance(value, bool)
    or value < 0
    or (fits and value > image_size)
  ):
    side = f"1 to {image_size} (config.data.image_size)" if fits else "a positive side"
    _fail(path, value, f"use 0 (whole images) or a crop that fits in the image: {side}")


def validate(
  config: ml_collections.ConfigDict,
  path: str = "config",
  inherits: bool = False,
  image_size: int = 0,
) -> None:
  """Raises a UserInputError naming the first invalid field of `config` (recursively).
  `inherits`: `config` is a localize job's data block, whose image_size may be 0. `image_size`:
  the enclosing config's data.image_size (a pipeline's stage blocks take the pipeline's)."""
  is_localize = config.get("trainer") == "localize"
  data = config.get("data")
  if isinstance(data, ml_collections.ConfigDict) and data.get("image_size"):
    image_size = data.image_size
  for key in config:
    value = config[key]
    where = f"{path}.{key}"
    if key == "backbone":
      _check_choice(where, value, tuple(models.BACKBONES))
    elif key == "backbones":
      _check_choices(where, value, tuple(models.BACKBONES))
    elif key == "fusion":
      _check_choice(where, value, fusion.MODES)
    elif key == "fusions":
      _check_choices(where, value, fusion.MODES)
    elif key == "masks" and isinstance(value, ml_collections.ConfigDict):
      _check_mask_weights(f"{where}.weights", value.get("weights", ()))
    elif key == "rtv" and isinstance(value, ml_collections.ConfigDict):
      _check_rtv(where, value)
    elif key == "padding" and path.endswith(".model"):
      _check_choice(where, value, inpainting.PADDINGS)
    elif key == "structure" and config.get("trainer") == "inpainting":
      _check_choice(where, value, rtv.STRUCTURE_MODES)
    elif key == "group_by":
      _check_choice(where, value, GROUP_BY)
    elif key == "holdout_fold" and (
      not isinstance(value, int) or not -1 <= value < max(1, config.get("folds", 1))
    ):
      _fail(where, value, f"use -1 (none) or a fold in [0, {config.get('folds', 1)})")
    elif key == "selection_fraction" and (
      not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 0.5
    ):
      _fail(where, value, "give the share of train patients held out for selection, in (0, 0.5]")
    elif key in ("seeds", "bootstrap_resamples", "folds"):
      _check_positive(where, value)
    elif key in ("image_size", "batch_size") and not isinstance(value, ml_collections.ConfigDict):
      _check_positive(where, value, allow_zero=key == "image_size" and inherits)
    elif key == "crop" and path.endswith(".data"):
      _check_crop(where, value, config.get("image_size") or image_size)
    elif key == "cache_mb" and (
      not isinstance(value, int | float) or isinstance(value, bool) or value < 0
    ):
      _fail(where, value, "give the MiB of decoded training examples to keep, >= 0 (0: none)")
    if isinstance(value, ml_collections.ConfigDict):
      validate(value, where, inherits=is_localize and key == "data", image_size=image_size)
  if is_localize:
    window, stride = config.get("window", 0), config.get("stride", 0)
    _check_positive(f"{path}.window", window, allow_zero=True)
    _check_positive(f"{path}.stride", stride, allow_zero=True)
    if window and stride > window:
      _fail(
        f"{path}.stride",
        stride,
        f"pixels between windows would never be repainted; use 1 <= stride <= window ({window})",
      )
    method = config.get("method", "per_window")
    _check_choice(f"{path}.method", method, difference.METHODS)
    _check_choice(f"{path}.foreground", config.get("foreground", "none"), foreground.MODES)
    gap, context = config.get("gap", 0), config.get("context", 0)
    if method == "multi_window" and (not isinstance(gap, int) or gap < 0):
      _fail(
        f"{path}.gap",
        gap,
        "windows repainted together must lie at least 1 px apart; use gap >= 1 (0: the window)",
      )
    if method == "context" and (
      not isinstance(context, int) or context < 0 or (context and window and context < window + 2)
    ):
      least = f"window + 2 = {window + 2}" if window else "window + 2"
      _fail(
        f"{path}.context",
        context,
        f"the crop must be at least {least} px (0: the window plus the generator's receptive "
        "field)",
      )
