"""Inception-v3 (Szegedy et al., CVPR 2016) as torchvision builds it, with its auxiliary classifier.

Submodules carry torchvision's names (`Conv2d_1a_3x3`, `Mixed_5b.branch5x5_2`, `AuxLogits.fc`, ...)
so ImageNet weights load by name. 27,161,264 parameters with 1000 classes and the auxiliary head,
23,834,568 without. In training, with `aux_logits`, `__call__` returns `(logits, aux_logits)` (as
torchvision does); otherwise logits only.

The published network needs inputs of at least 75 px (it is built for 299): its stem and reduction
blocks use unpadded convolutions. `small_input=True` pads those like 'SAME' (parameters unchanged),
so CPU-sized variants run on 32-128 px images.
"""

import flax.linen as nn
import jax.numpy as jnp

from alenn_jax.models import layers


class BasicConv(nn.Module):
  """Convolution (no bias) + BatchNorm (eps 0.001) + ReLU, as `name.conv` / `name.bn`."""

  features: int
  kernel: int | tuple[int, int]
  stride: int = 1
  padding: int | tuple[int, int] = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = layers.conv(
      self.features, self.kernel, self.stride, self.padding, name="conv", dtype=self.dtype
    )(x)
    x = layers.batch_norm(train, name="bn", epsilon=1e-3, dtype=self.dtype)(x)
    return nn.relu(x)


class _Block(nn.Module):
  """Shared plumbing: `self.c(name, features, kernel, ...)` builds a scaled BasicConv."""

  width: float = 1.0
  small_input: bool = False
  dtype: jnp.dtype = jnp.float32

  def c(self, name, features, kernel, stride=1, padding=0):
    return _basic(name, features, kernel, stride, padding, self.width, self.small_input, self.dtype)

  def reduce_pool(self, x):
    return _reduce_pool(x, self.small_input)


def _basic(name, features, kernel, stride, padding, width, small_input, dtype):
  """A BasicConv with `width`-scaled channels; unpadded kernels padded when `small_input`."""
  if small_input and padding == 0 and kernel != 1:
    padding = (kernel - 1) // 2 if isinstance(kernel, int) else tuple((k - 1) // 2 for k in kernel)
  return BasicConv(layers.scaled(features, width), kernel, stride, padding, dtype=dtype, name=name)


def _reduce_pool(x, small_input: bool):
  """The 3x3 stride-2 max pooling of the stem and reduction blocks."""
  return layers.max_pool(x, 3, 2, 1 if small_input else 0)


class InceptionA(_Block):
  pool_features: int = 32

  @nn.compact
  def __call__(self, x, train):
    b1 = self.c("branch1x1", 64, 1)(x, train)
    b5 = self.c("branch5x5_1", 48, 1)(x, train)
    b5 = self.c("branch5x5_2", 64, 5, padding=2)(b5, train)
    b3 = self.c("branch3x3dbl_1", 64, 1)(x, train)
    b3 = self.c("branch3x3dbl_2", 96, 3, padding=1)(b3, train)
    b3 = self.c("branch3x3dbl_3", 96, 3, padding=1)(b3, train)
    bp = self.c("branch_pool", self.pool_features, 1)(layers.avg_pool(x, 3, 1, 1), train)
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
  @nn.compact
  def __call__(self, x, train):
    b3 = self.c("branch3x3", 384, 3, stride=2)(x, train)
    bd = self.c("branch3x3dbl_1", 64, 1)(x, train)
    bd = self.c("branch3x3dbl_2", 96, 3, padding=1)(bd, train)
    bd = self.c("branch3x3dbl_3", 96, 3, stride=2)(bd, train)
    return jnp.concatenate([b3, bd, self.reduce_pool(x)], axis=-1)


class InceptionC(_Block):
  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x, train):
    c7 = self.channels_7x7
    b1 = self.c("branch1x1", 192, 1)(x, train)
    b7 = self.c("branch7x7_1", c7, 1)(x, train)
    b7 = self.c("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7, train)
    b7 = self.c("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7, train)
    bd = self.c("branch7x7dbl_1", c7, 1)(x, train)
    bd = self.c("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd, train)
    bd = self.c("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd, train)
    bd = self.c("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd, train)
    bd = self.c("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd, train)
    bp = self.c("branch_pool", 192, 1)(layers.avg_pool(x, 3, 1, 1), train)
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
  @nn.compact
  def __call__(self, x, train):
    b3 = self.c("branch3x3_1", 192, 1)(x, train)
    b3 = self.c("branch3x3_2", 320, 3, stride=2)(b3, train)
    b7 = self.c("branch7x7x3_1", 192, 1)(x, train)
    b7 = self.c("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7, train)
    b7 = self.c("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7, train)
    b7 = self.c("branch7x7x3_4", 192, 3, stride=2)(b7, train)
    return jnp.concatenate([b3, b7, self.reduce_pool(x)], axis=-1)


class InceptionE(_Block):
  @nn.compact
  def __call__(self, x, train):
    b1 = self.c("branch1x1", 320, 1)(x, train)
    b3 = self.c("branch3x3_1", 384, 1)(x, train)
    b3 = jnp.concatenate(
      [
        self.c("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3, train),
        self.c("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3, train),
      ],
      axis=-1,
    )
    bd = self.c("branch3x3dbl_1", 448, 1)(x, train)
    bd = self.c("branch3x3dbl_2", 384, 3, padding=1)(bd, train)
    bd = jnp.concatenate(
      [
        self.c("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd, train),
        self.c("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd, train),
      ],
      axis=-1,
    )
    bp = self.c("branch_pool", 192, 1)(layers.avg_pool(x, 3, 1, 1), train)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(_Block):
  num_classes: int = 1000

  @nn.compact
  def __call__(self, x, train):
    x = layers.avg_pool(x, 5, 3, 2 if self.small_input else 0)
    x = self.c("conv0", 128, 1)(x, train)
    x = self.c("conv1", 768, 5)(x, train)
    x = layers.global_avg_pool(x)
    return layers.dense(self.num_classes, name="fc", dtype=self.dtype)(x)


class InceptionV3(nn.Module):
  """`[B, H, W, C]` -> `[B, num_classes]` logits (and auxiliary logits in training)."""

  num_classes: int = 1000
  aux_logits: bool = True
  width: float = 1.0  # Multiplies every channel count (CPU variants).
  small_input: bool = False  # Pad the unpadded convolutions, for inputs under 75 px.
  dropout: float = 0.5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    block = dict(width=self.width, small_input=self.small_input, dtype=self.dtype)
    small = self.small_input

    def c(name, features, kernel, stride=1, padding=0):
      return _basic(name, features, kernel, stride, padding, self.width, small, self.dtype)

    x = c("Conv2d_1a_3x3", 32, 3, stride=2)(x, train)
    x = c("Conv2d_2a_3x3", 32, 3)(x, train)
    x = c("Conv2d_2b_3x3", 64, 3, padding=1)(x, train)
    x = _reduce_pool(x, small)
    x = c("Conv2d_3b_1x1", 80, 1)(x, train)
    x = c("Conv2d_4a_3x3", 192, 3)(x, train)
    x = _reduce_pool(x, small)
    x = InceptionA(**block, pool_features=32, name="Mixed_5b")(x, train)
    x = InceptionA(**block, pool_features=64, name="Mixed_5c")(x, train)
    x = InceptionA(**block, pool_features=64, name="Mixed_5d")(x, train)
    x = InceptionB(**block, name="Mixed_6a")(x, train)
    x = InceptionC(**block, channels_7x7=128, name="Mixed_6b")(x, train)
    x = InceptionC(**block, channels_7x7=160, name="Mixed_6c")(x, train)
    x = InceptionC(**block, channels_7x7=160, name="Mixed_6d")(x, train)
    x = InceptionC(**block, channels_7x7=192, name="Mixed_6e")(x, train)
    aux = None
    if self.aux_logits and (train or self.is_initializing()):
      aux = InceptionAux(**block, num_classes=self.num_classes, name="AuxLogits")(x, train)
    x = InceptionD(**block, name="Mixed_7a")(x, train)
    x = InceptionE(**block, name="Mixed_7b")(x, train)
    x = InceptionE(**block, name="Mixed_7c")(x, train)
    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = layers.dense(self.num_classes, name="fc", dtype=self.dtype)(x)
    if aux is not None and train:
      return x.astype(jnp.float32), aux.astype(jnp.float32)
    return x.astype(jnp.float32)
