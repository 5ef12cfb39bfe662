"""DenseNet-121 (Huang et al., CVPR 2017) as torchvision builds it: growth rate 32, blocks
(6, 12, 24, 16), bottleneck width 4 x growth, compression 0.5. Submodules carry torchvision's names
(`features.conv0`, `features.denseblock<k>.denselayer<i>.norm1`, `features.transition<k>.conv`,
`features.norm5`, `classifier`). 7,978,856 parameters with 1000 classes.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from alenn_jax.models import layers


class DenseLayer(nn.Module):
  growth_rate: int
  bn_size: int
  drop_rate: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    kw = dict(dtype=self.dtype)
    y = nn.relu(layers.batch_norm(train, name="norm1", **kw)(x))
    y = layers.conv(self.bn_size * self.growth_rate, 1, name="conv1", **kw)(y)
    y = nn.relu(layers.batch_norm(train, name="norm2", **kw)(y))
    y = layers.conv(self.growth_rate, 3, 1, 1, name="conv2", **kw)(y)
    if self.drop_rate > 0:
      y = nn.Dropout(self.drop_rate, deterministic=not train)(y)
    return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(layers.batch_norm(train, name="norm", dtype=self.dtype)(x))
    x = layers.conv(self.features, 1, name="conv", dtype=self.dtype)(x)
    return layers.avg_pool(x, 2, 2)


class DenseNet(nn.Module):
  """`[B, H, W, C]` -> `[B, num_classes]` logits."""

  num_classes: int = 1000
  block_config: Sequence[int] = (6, 12, 24, 16)  # Dense layers per block (DenseNet-121).
  growth_rate: int = 32
  num_init_features: int = 64
  bn_size: int = 4
  drop_rate: float = 0.0  # torchvision's default.
  width: float = 1.0  # Multiplies the growth rate and the stem (CPU variants).
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    kw = dict(dtype=self.dtype)
    growth = layers.scaled(self.growth_rate, self.width)
    features = layers.scaled(self.num_init_features, self.width)
    x = layers.conv(features, 7, 2, 3, name="features.conv0", **kw)(x)
    x = nn.relu(layers.batch_norm(train, name="features.norm0", **kw)(x))
    x = layers.max_pool(x, 3, 2, 1)
    for k, size in enumerate(self.block_config):
      for i in range(size):
        x = DenseLayer(
          growth,
          self.bn_size,
          self.drop_rate,
          name=f"features.denseblock{k + 1}.denselayer{i + 1}",
          **kw,
        )(x, train)
      features += size * growth
      if k != len(self.block_config) - 1:
        features //= 2
        x = Transition(features, name=f"features.transition{k + 1}", **kw)(x, train)
    x = nn.relu(layers.batch_norm(train, name="features.norm5", **kw)(x))
    x = layers.global_avg_pool(x)
    x = layers.dense(self.num_classes, name="classifier", **kw)(x)
    return x.astype(jnp.float32)
