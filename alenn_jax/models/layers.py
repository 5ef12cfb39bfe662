"""Building blocks shared by the stage 2 backbones, and loading of torchvision-named weights.

The backbones name their submodules after torchvision's parameter names (`features.0`, `layer1.0`,
`Mixed_5b`, ...), so a flattened parameter path maps to a torchvision key by joining with "." and
renaming the leaf: Conv/Dense `kernel` -> `weight` (transposed from HWIO / (in, out) to OIHW /
(out, in)), `bias` -> `bias`, BatchNorm `scale` -> `weight`, `mean` -> `running_mean`, `var` ->
`running_var`. Convolutions pad explicitly as torchvision does (never 'SAME'), so ImageNet weights
compute what they computed there.
"""

import math

import flax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from alenn_jax.errors import UserInputError


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def scaled(channels: int, width: float) -> int:
  """`channels` times the width multiplier, at least 1."""
  return max(1, round(channels * width))


def conv(features, kernel, stride=1, padding=0, *, bias=False, name, dtype=jnp.float32):
  """A torch-style convolution: symmetric integer padding, PyTorch's default initialisation."""
  ph, pw = _pair(padding)
  return nn.Conv(
    features,
    _pair(kernel),
    strides=_pair(stride),
    padding=((ph, ph), (pw, pw)),
    use_bias=bias,
    kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
    dtype=dtype,
    name=name,
  )


def batch_norm(train: bool, *, name, epsilon=1e-5, dtype=jnp.float32):
  """torchvision's BatchNorm2d (momentum 0.1, i.e. Flax's 0.9)."""
  return nn.BatchNorm(
    use_running_average=not train, momentum=0.9, epsilon=epsilon, dtype=dtype, name=name
  )


def dense(features, *, name, dtype=jnp.float32):
  return nn.Dense(features, dtype=dtype, name=name)


def max_pool(x, window, stride, padding=0):
  p = _pair(padding)
  return nn.max_pool(x, _pair(window), _pair(stride), ((p[0], p[0]), (p[1], p[1])))


def avg_pool(x, window, stride, padding=0):
  """torch's avg_pool2d with `count_include_pad=True` (its default)."""
  p = _pair(padding)
  return nn.avg_pool(
    x, _pair(window), _pair(stride), ((p[0], p[0]), (p[1], p[1])), count_include_pad=True
  )


def adaptive_avg_pool(x, out_h: int, out_w: int):
  """torch's AdaptiveAvgPool2d: bin i covers [floor(i*H/out), ceil((i+1)*H/out))."""
  _, h, w, _ = x.shape
  _check_not_empty(x)

  def bins(n, out):
    return [(math.floor(i * n / out), math.ceil((i + 1) * n / out)) for i in range(out)]

  rows = [x[:, a:b].mean(axis=1) for a, b in bins(h, out_h)]  # out_h x [B, W, C]
  x = jnp.stack(rows, axis=1)  # [B, out_h, W, C]
  cols = [x[:, :, a:b].mean(axis=2) for a, b in bins(w, out_w)]
  return jnp.stack(cols, axis=2)  # [B, out_h, out_w, C]


def global_avg_pool(x):
  """`[B, H, W, C]` -> `[B, C]`."""
  _check_not_empty(x)
  return x.mean(axis=(1, 2))


def _check_not_empty(x) -> None:
  if 0 in x.shape[1:3]:
    raise ValueError(f"the feature map before pooling is empty ({x.shape}): input too small.")


def flatten_chw(x):
  """Flattens `[B, H, W, C]` in torch's (C, H, W) order, so torchvision's Linear weights fit."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


# ----------------------------------------------------------------------------------------------
# torchvision weights.

_LEAF = {
  ("params", "kernel"): "weight",
  ("params", "bias"): "bias",
  ("params", "scale"): "weight",
  ("batch_stats", "mean"): "running_mean",
  ("batch_stats", "var"): "running_var",
}


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """`("params", ("layer1.0", "conv1", "kernel"))` -> `"layer1.0.conv1.weight"`."""
  leaf = _LEAF.get((collection, path[-1]))
  if leaf is None:
    raise ValueError(f"no torchvision name for {collection}/{'/'.join(path)}")
  return ".".join((*path[:-1], leaf))


def _to_flax(array: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
  """A torch array in our layout: OIHW -> HWIO, (out, in) -> (in, out); other ranks unchanged."""
  if array.ndim == 4:
    array = np.transpose(array, (2, 3, 1, 0))
    in_target, in_have = target_shape[2], array.shape[2]
    if in_target != in_have and in_have == 3 and in_target == 1:
      array = array.sum(axis=2, keepdims=True)  # Grey input: the RGB filters summed.
  elif array.ndim == 2:
    array = array.T
  return array


def load_torchvision(variables: dict, path: str, skip_prefixes: tuple[str, ...] = ()) -> dict:
  """`variables` with every array replaced by its torchvision counterpart from the `.npz` `path`.

  Keys under `skip_prefixes` (the classification heads, whose class count differs) keep their
  initial values. The first convolution accepts RGB weights for a 1-channel input (summed over
  colours). A missing file, a missing key or a shape mismatch is a `UserInputError` naming the first
  bad key and the expected shape.
  """
  try:
    weights = np.load(path)
  except FileNotFoundError:
    raise UserInputError(
      f"config.model.pretrained={path!r}: no such file. Give a .npz of torchvision-named arrays "
      "or leave the field empty."
    ) from None
  except (OSError, ValueError) as e:
    raise UserInputError(f"config.model.pretrained={path!r} is not a readable .npz: {e}") from None
  with weights:
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
    out = {}
    for key, value in flat.items():
      collection, path_in = key[0], key[1:]
      name = torch_key(collection, path_in)
      if any(name.startswith(p) for p in skip_prefixes):
        out[key] = value
        continue
      if name not in weights:
        raise UserInputError(
          f"{path}: missing key {name!r} (expected shape {_torch_shape(value.shape)}); the file "
          "must hold the torchvision state_dict of the same architecture."
        )
      array = _to_flax(np.asarray(weights[name], np.float32), value.shape)
      if array.shape != tuple(value.shape):
        raise UserInputError(
          f"{path}: key {name!r} has shape {tuple(weights[name].shape)}, expected "
          f"{_torch_shape(value.shape)}; is this the same architecture and width?"
        )
      out[key] = jnp.asarray(array, value.dtype)
  return flax.traverse_util.unflatten_dict(out)


def _torch_shape(shape) -> tuple[int, ...]:
  shape = tuple(shape)
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if len(shape) == 2:
    return (shape[1], shape[0])
  return shape


def torchvision_shapes(variables: dict) -> dict[str, tuple[int, ...]]:
  """torchvision name -> torchvision shape of every array (works on abstract variables too)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  return {
    torch_key(collection, tuple(path)): _torch_shape(value.shape)
    for (collection, *path), value in flat.items()
  }


def torchvision_state(variables: dict) -> dict[str, np.ndarray]:
  """The inverse of `load_torchvision`: torchvision-named numpy arrays (for export and tests)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  out = {}
  for (collection, *path), value in flat.items():
    array = np.asarray(value)
    if array.ndim == 4:
      array = np.transpose(array, (3, 2, 0, 1))
    elif array.ndim == 2:
      array = array.T
    out[torch_key(collection, tuple(path))] = array
  return out
