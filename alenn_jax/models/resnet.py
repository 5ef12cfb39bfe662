"""ResNet-50 (He et al., CVPR 2016) as torchvision builds it (v1.5: the stride sits on the 3x3
convolution of each bottleneck). Submodules carry torchvision's names (`conv1`, `bn1`,
`layer<k>.<i>.conv2`, `layer<k>.<i>.downsample.0`, `fc`). 25,557,032 parameters with 1000 classes.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from alenn_jax.models import layers


class Bottleneck(nn.Module):
  planes: int
  stride: int
  downsample: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    kw = dict(dtype=self.dtype)
    y = layers.conv(self.planes, 1, name="conv1", **kw)(x)
    y = nn.relu(layers.batch_norm(train, name="bn1", **kw)(y))
    y = layers.conv(self.planes, 3, self.stride, 1, name="conv2", **kw)(y)
    y = nn.relu(layers.batch_norm(train, name="bn2", **kw)(y))
    y = layers.conv(self.planes * 4, 1, name="conv3", **kw)(y)
    y = layers.batch_norm(train, name="bn3", **kw)(y)
    if self.downsample:
      x = layers.conv(self.planes * 4, 1, self.stride, name="downsample.0", **kw)(x)
      x = layers.batch_norm(train, name="downsample.1", **kw)(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """`[B, H, W, C]` -> `[B, num_classes]` logits."""

  num_classes: int = 1000
  stage_sizes: Sequence[int] = (3, 4, 6, 3)  # Bottlenecks per stage (ResNet-50).
  width: float = 1.0  # Multiplies every channel count (CPU variants).
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    stem = layers.scaled(64, self.width)
    x = layers.conv(stem, 7, 2, 3, name="conv1", dtype=self.dtype)(x)
    x = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(x))
    x = layers.max_pool(x, 3, 2, 1)
    in_features = stem
    for k, size in enumerate(self.stage_sizes):
      planes = layers.scaled(64 * 2**k, self.width)
      for i in range(size):
        stride = 2 if k > 0 and i == 0 else 1
        x = Bottleneck(
          planes,
          stride,
          downsample=i == 0 and (stride != 1 or in_features != planes * 4),
          dtype=self.dtype,
          name=f"layer{k + 1}.{i}",
        )(x, train)
        in_features = planes * 4
    x = layers.global_avg_pool(x)
    x = layers.dense(self.num_classes, name="fc", dtype=self.dtype)(x)
    return x.astype(jnp.float32)
