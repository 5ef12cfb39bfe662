"""Flax Linen models: the stage 1 inpainting networks and the stage 2 backbones.

`get_backbone(name, num_classes, **overrides)` builds a classifier: `vgg19`, `resnet50`,
`densenet121` or `inception_v3`, called as `model.apply(variables, x, train=...)` with `x`
`[B, H, W, C]`. Overrides are the module's fields (`width`, `stage_sizes`, `block_config`, ...), so
CPU-sized variants run the same code as the published networks.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from alenn_jax.errors import UserInputError
from alenn_jax.models.densenet import DenseNet
from alenn_jax.models.inception import InceptionV3
from alenn_jax.models.resnet import ResNet
from alenn_jax.models.vgg import VGG

# How reports name the backbones, in the paper's Table 2 order.
BACKBONE_NAMES = {
  "vgg19": "VGG-19",
  "resnet50": "ResNet-50",
  "densenet121": "DenseNet-121",
  "inception_v3": "Inception-v3",
}
BACKBONES = {
  "vgg19": VGG,
  "resnet50": ResNet,
  "densenet121": DenseNet,
  "inception_v3": InceptionV3,
}

# Each backbone's classification heads: never loaded from ImageNet weights (other class count).
HEADS = {
  "vgg19": ("classifier.6.",),
  "resnet50": ("fc.",),
  "densenet121": ("classifier.",),
  "inception_v3": ("fc.", "AuxLogits.fc."),
}

# What each backbone's torchvision ImageNet weights expect of an RGB image in [0, 1]: (mean, std)
# per channel. VGG, ResNet and DenseNet: the ImageNet statistics (`transforms.Normalize`).
# Inception-v3: torchvision builds it with `transform_input=True`, which turns those normalised
# inputs back into (x - 0.5) / 0.5 per channel, the range Google's weights were trained on.
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
INPUT_STATS = {
  "vgg19": IMAGENET_STATS,
  "resnet50": IMAGENET_STATS,
  "densenet121": IMAGENET_STATS,
  "inception_v3": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def get_backbone(name: str, num_classes: int, **overrides) -> nn.Module:
  """The backbone `name` with a `num_classes`-way head and the given field overrides."""
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; use one of {', '.join(BACKBONES)}.")
  cls = BACKBONES[name]
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(
      f"backbone {name!r} has no field(s) {', '.join(unknown)}; its fields: "
      f"{', '.join(sorted(fields))}."
    )
  return cls(num_classes=num_classes, **overrides)


# Fields of a classifier's `config.model` that are not the backbone module's own.
_NOT_MODULE_FIELDS = ("pretrained", "half_precision")


def classifier_from_config(config) -> nn.Module:
  """The 1-logit backbone a classifier config describes (`config.backbone`, `config.model`)."""
  overrides = {
    k: tuple(v) if isinstance(v, list) else v
    for k, v in config.model.items()
    if k not in _NOT_MODULE_FIELDS
  }
  if config.model.half_precision:
    overrides["dtype"] = jnp.bfloat16
  try:
    return get_backbone(config.backbone, 1, **overrides)
  except (ValueError, TypeError) as e:
    raise UserInputError(f"config.model: {e}") from None
