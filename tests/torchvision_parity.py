"""The torchvision parity case, in numpy alone (the fixture script runs it with torch, the test
with JAX): seeded weights for every state_dict entry and a seeded grey batch.

Weights are drawn per entry from a generator seeded by the entry's name, so they do not depend on
the order or on entries only one side has (torch's `num_batches_tracked`). Convolutions and linear
layers are He-scaled and BatchNorm statistics kept near 1, so activations stay finite through the
full-depth networks.
"""

import zlib

import numpy as np

# Backbone -> the network compared: its input side (px), torchvision's constructor arguments and
# ours (the same network). ResNet and DenseNet are cut to one block per stage (and DenseNet to a
# growth rate of 8) with torchvision's own classes, so the test stays quick; VGG-19 and
# Inception-v3 are the published networks (torchvision's classes fix their sizes), Inception-v3
# without its auxiliary head (training only; it would need 299 px).
CASES = {
  "vgg19": (32, {}, {}),
  "resnet50": (64, {"layers": [1, 1, 1, 1]}, {"stage_sizes": (1, 1, 1, 1)}),
  "densenet121": (
    64,
    {"growth_rate": 8, "block_config": (1, 1, 1, 1), "num_init_features": 16},
    {"growth_rate": 8, "block_config": (1, 1, 1, 1), "num_init_features": 16},
  ),
  "inception_v3": (96, {"aux_logits": False}, {"aux_logits": False}),
}
SEED = 0
FIXTURE = "torchvision_parity.npz"


def weight(name: str, shape: tuple[int, ...]) -> np.ndarray:
  rng = np.random.default_rng([SEED, zlib.crc32(name.encode())])
  if name.endswith("num_batches_tracked"):
    return np.zeros(shape, np.int64)
  if name.endswith("running_var"):
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)
  if len(shape) >= 2:  # Convolution (O, I, H, W) or linear (out, in).
    fan_in = int(np.prod(shape[1:]))
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
  if name.endswith("weight"):  # BatchNorm scale.
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)
  return rng.normal(0.0, 0.1, shape).astype(np.float32)  # Biases, BatchNorm shifts and means.


def weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
  return {name: weight(name, tuple(shape)) for name, shape in shapes.items()}


def grey_batch(side: int) -> np.ndarray:
  """Two grey images `[2, side, side]` in [0, 1]."""
  return np.random.default_rng([SEED, side]).uniform(0.0, 1.0, (2, side, side)).astype(np.float32)
