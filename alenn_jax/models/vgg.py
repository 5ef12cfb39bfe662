"""VGG-19 (Simonyan & Zisserman, ICLR 2015), configuration E, as torchvision builds it.

Sixteen 3x3 convolutions (with bias, ReLU) in five stages separated by 2x2 max pooling, adaptive
average pooling to 7x7, then Linear-ReLU-Dropout twice and the classifier. Submodules carry
torchvision's names (`features.<i>`, `classifier.<i>`), so ImageNet weights load by name.
143,667,240 parameters with 1000 classes.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from alenn_jax.models import layers


class VGG(nn.Module):
  """`[B, H, W, C]` -> `[B, num_classes]` logits."""

  num_classes: int = 1000
  stage_sizes: Sequence[int] = (2, 2, 4, 4, 4)  # Convolutions per stage (VGG-19).
  stage_widths: Sequence[int] = (64, 128, 256, 512, 512)
  width: float = 1.0  # Multiplies every channel count (CPU variants).
  fc_width: int = 4096
  pool_size: int = 7  # Side of the adaptive pooling before the classifier.
  dropout: float = 0.5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    index = 0  # torchvision numbers conv, ReLU and pool layers alike.
    for size, features in zip(self.stage_sizes, self.stage_widths, strict=True):
      for _ in range(size):
        x = layers.conv(
          layers.scaled(features, self.width),
          3,
          padding=1,
          bias=True,
          name=f"features.{index}",
          dtype=self.dtype,
        )(x)
        x = nn.relu(x)
        index += 2
      x = layers.max_pool(x, 2, 2)
      index += 1
    x = layers.adaptive_avg_pool(x, self.pool_size, self.pool_size)
    x = layers.flatten_chw(x)
    for i in (0, 3):
      x = layers.dense(self.fc_width, name=f"classifier.{i}", dtype=self.dtype)(x)
      x = nn.relu(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = layers.dense(self.num_classes, name="classifier.6", dtype=self.dtype)(x)
    return x.astype(jnp.float32)
