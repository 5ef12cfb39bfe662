"""Lesion enhancement: how an image and its LE map become the classifier's input.

  none      I                          1 channel (the baseline)
  enhance   I * (1 + gamma * LE)       1 channel: lesion areas brightened (our reading: the
                                       paper's text enhances the lesion area, no formula)
  channels  [I, LE, I * LE]            3 channels, convenient for ImageNet-shaped stems

I and LE are in [0, 1] here; inputs and outputs of `fuse` use the models' [-1, 1] convention (an
enhanced pixel may exceed 1: that is the enhancement).

A network started from ImageNet weights gets its inputs as those weights expect them
(`normalize`): three channels (a 1-channel input copied to RGB, as torchvision's users feed a grey
radiograph), each in [0, 1] and normalised with the weights' mean and std. Its first layer then
keeps its RGB filters, so a grey image meets exactly the network torchvision would run.
"""

import jax
import jax.numpy as jnp

from alenn_jax.errors import UserInputError

MODES = ("none", "enhance", "channels")


def num_channels(mode: str, pretrained: bool = False) -> int:
  """Channels the model sees: 3 for `channels` or with ImageNet weights, else 1."""
  check_mode(mode)
  return 3 if mode == "channels" or pretrained else 1


def normalize(inputs: jax.Array, stats) -> jax.Array:
  """`[B, H, W, 1 or 3]` fused inputs in [-1, 1] -> `[B, H, W, 3]` as ImageNet weights expect them;
  `stats` is (mean, std) per channel of an RGB image in [0, 1] (`models.INPUT_STATS`)."""
  x01 = (inputs + 1.0) / 2.0
  if x01.shape[-1] == 1:
    x01 = jnp.tile(x01, (1, 1, 1, 3))
  mean, std = (jnp.asarray(v, x01.dtype) for v in stats)
  return (x01 - mean) / std


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise UserInputError(f"config.fusion={mode!r} is unknown; use one of {', '.join(MODES)}.")


def fuse(images: jax.Array, le: jax.Array | None, mode: str, gamma: float = 1.0) -> jax.Array:
  """`[B, H, W, 1]` images in [-1, 1] and LE maps in [0, 1] -> `[B, H, W, C]` model inputs."""
  check_mode(mode)
  if mode == "none":
    return images
  if le is None:
    raise ValueError(f"fusion {mode!r} needs LE maps.")
  if le.shape != images.shape:
    raise ValueError(f"LE maps {le.shape} and images {images.shape} differ in shape.")
  i01 = (images + 1.0) / 2.0
  if mode == "enhance":
    return i01 * (1.0 + gamma * le) * 2.0 - 1.0
  return jnp.concatenate([i01, le, i01 * le], axis=-1) * 2.0 - 1.0
