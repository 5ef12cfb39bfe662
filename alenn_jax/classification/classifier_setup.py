"""What a classifier's step functions close over: its model, optimizer and constants
(`ClassifierSetup`), and how an image and its LE map become the model's input (`model_inputs`).
"""

import dataclasses
from typing import Any

import jax
import optax

from alenn_jax import fusion, models


@dataclasses.dataclass(frozen=True)
class ClassifierSetup:
  """What the classifier's step functions close over: model, optimizer and constants."""

  model: Any
  tx: optax.GradientTransformation
  fusion: str
  gamma: float
  class_weights: tuple[float, float]  # BCE weight of a normal and of an abnormal example.
  aux_weight: float
  in_channels: int
  input_stats: tuple | None  # (mean, std) the ImageNet weights expect (fusion.normalize), or None.

  @classmethod
  def from_config(cls, config, class_weights=(1.0, 1.0)):
    model = models.classifier_from_config(config)
    tx = make_optimizer(config.optimizer, config.num_train_steps)
    return cls(
      model=model,
      tx=tx,
      fusion=config.fusion,
      gamma=config.gamma,
      class_weights=tuple(float(w) for w in class_weights),
      aux_weight=config.aux_weight,
      in_channels=fusion.num_channels(config.fusion, bool(config.model.pretrained)),
      input_stats=models.INPUT_STATS[config.backbone] if config.model.pretrained else None,
    )


def learning_rate(opt, total_steps: int):
  """The learning rate per step: `opt.learning_rate`, constant (our reading of the text's
  "initialized to 0.0001") or, with `opt.schedule="cosine"`, warmed up linearly over
  `opt.warmup_steps` and then decayed to 0 along a cosine by `total_steps`."""
  if opt.get("schedule", "constant") == "constant":
    if opt.get("warmup_steps", 0):
      return optax.linear_schedule(0.0, opt.learning_rate, opt.warmup_steps)
    return opt.learning_rate
  return optax.warmup_cosine_decay_schedule(
    0.0, opt.learning_rate, max(1, opt.get("warmup_steps", 0)), max(total_steps, 2)
  )


def make_optimizer(opt, total_steps: int) -> optax.GradientTransformation:
  """Adam (AdamW when `weight_decay` > 0) on `learning_rate`'s schedule, after clipping the
  global gradient norm to `grad_clip` (0: no clipping)."""
  rate = learning_rate(opt, total_steps)
  if opt.weight_decay > 0:
    adam = optax.adamw(rate, opt.b1, opt.b2, weight_decay=opt.weight_decay)
  else:
    adam = optax.adam(rate, opt.b1, opt.b2)
  clip = opt.get("grad_clip", 0.0)
  return optax.chain(optax.clip_by_global_norm(clip), adam) if clip > 0 else adam


def model_inputs(static: ClassifierSetup, batch: dict) -> jax.Array:
  """What the network sees: the image fused with its LE map, normalised for ImageNet weights."""
  inputs = fusion.fuse(batch["image"], batch.get("le"), static.fusion, static.gamma)
  return inputs if static.input_stats is None else fusion.normalize(inputs, static.input_stats)
