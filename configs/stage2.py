"""Stage 2b: a classifier (VGG-19, ResNet-50, DenseNet-121 or Inception-v3) with or without LE.

The argument is comma-separated: a size (smoke, small, full) and `backbone=`/`fusion=` pairs.

  python launch.py --config=configs/stage2.py:smoke,backbone=resnet50,fusion=none --workdir=W
  python launch.py --config=configs/stage2.py:small,backbone=densenet121,fusion=enhance \\
      --workdir=W --config.le_workdir=/stage2a/workdir      # LE maps from a localize run
  python launch.py --config=configs/stage2.py:full,backbone=inception_v3,fusion=enhance \\
      --workdir=W --config.le_workdir=L --config.data.manual_dir=/data/mura \\
      --config.model.pretrained=/weights/inception_v3.npz   # ImageNet weights, torchvision names
  python launch.py --config=configs/stage2.py:small,backbone=vgg19 --workdir=W --mode=eval \\
      --config.eval.split=test --config.eval.checkpoint_step=400
"""

import ml_collections

from alenn_jax import fusion, input_pipeline, models

SIZES = ("smoke", "small", "full")

# CPU-sized variants of each backbone: the same modules with fewer channels and blocks.
_REDUCED = {
  "smoke": {
    "vgg19": dict(width=1 / 16, stage_sizes=(1, 1, 1, 1, 1), fc_width=16, pool_size=1),
    "resnet50": dict(width=1 / 16, stage_sizes=(1, 1, 1, 1)),
    "densenet121": dict(width=1 / 8, block_config=(1, 1, 1, 1)),
    "inception_v3": dict(width=1 / 16, small_input=True),
  },
  "small": {
    "vgg19": dict(width=1 / 8, fc_width=128, pool_size=2),
    "resnet50": dict(width=1 / 4, stage_sizes=(1, 1, 1, 1)),
    "densenet121": dict(width=1 / 4, block_config=(2, 2, 2, 2)),
    "inception_v3": dict(width=1 / 8, small_input=True),
  },
}


def parse_arg(arg: str | None) -> tuple[str, str, str]:
  """'small,backbone=vgg19,fusion=enhance' -> (size, backbone, fusion); defaults small, resnet50,
  none."""
  size, backbone, fusion_mode = "small", "resnet50", "none"
  for token in filter(None, (arg or "").split(",")):
    key, _, value = token.partition("=")
    if not value and key in SIZES:
      size = key
    elif key == "backbone" and value:
      backbone = value
    elif key == "fusion" and value:
      fusion_mode = value
    else:
      raise ValueError(
        f"configs/stage2.py: cannot read {token!r} in {arg!r}; write e.g. "
        "'small,backbone=resnet50,fusion=enhance' (sizes: smoke, small, full)."
      )
  if backbone not in models.BACKBONES:
    raise ValueError(
      f"configs/stage2.py: backbone={backbone!r}; use one of {', '.join(models.BACKBONES)}."
    )
  fusion.check_mode(fusion_mode)
  return size, backbone, fusion_mode


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, backbone, fusion_mode = parse_arg(arg)
  config = ml_collections.ConfigDict()
  config.trainer = "classifier"
  config.seed = 0
  config.backbone = backbone
  config.fusion = fusion_mode  # none | enhance (I * (1 + gamma * LE)) | channels ([I, LE, I*LE]).
  config.gamma = 1.0  # Strength of `enhance`.
  config.le_workdir = ""  # Workdir of the localize run holding le_maps/ ("": --workdir itself).
  config.model = ml_collections.ConfigDict(_REDUCED.get(size, {}).get(backbone, {}))
  config.model.pretrained = ""  # A .npz of torchvision-named ImageNet weights ("": random init).
  config.model.half_precision = False  # bfloat16 activations (accelerators); params stay float32.
  config.data = input_pipeline.data_config()
  config.data.labels = (0, 1)
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-4  # The paper's text: Adam at 1e-4 (betas: Adam's own).
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.weight_decay = 0.0  # Decoupled (AdamW) when > 0.
  config.optimizer.schedule = "constant"  # constant | cosine (decayed to 0 by num_train_steps).
  config.optimizer.warmup_steps = 0  # Linear warm-up from 0 over this many steps.
  config.optimizer.grad_clip = 0.0  # Clip the global gradient norm to this (0: no clipping).
  config.class_balanced = False  # Weight the BCE by inverse class frequency of the train split.
  config.aux_weight = 0.4  # Inception-v3's auxiliary-head loss weight (Szegedy et al.).
  config.threshold = 0.5  # P(abnormal) at or above which an image is called abnormal.
  config.num_train_steps = 3000
  config.force_restart = False  # Start over (old checkpoints moved aside) if shapes changed.
  config.stop_at_step = -1  # Stop (checkpointed) at this step, e.g. to fit a job's time limit.
  config.log_every = 50
  config.eval_every = 250  # Validation (config.data.eval_split) and checkpoint every this often.
  config.keep_checkpoints = 2  # Latest checkpoints kept for resuming (the best is kept apart).
  config.eval = ml_collections.ConfigDict()
  config.eval.split = "test"  # Where the final scores (Table 2, Figure 4) come from.
  config.eval.checkpoint_step = -1  # --mode=eval: this step (-1: the best by validation kappa).
  config.eval.max_batches = 0  # 0: the whole split.

  if size == "smoke":
    config.data.name = "phantoms/px64"
    config.data.image_size = 32
    config.data.batch_size = 8
    config.num_train_steps = 4
    config.log_every = 1
    config.eval_every = 2
    config.eval.max_batches = 2
  elif size == "small":
    config.data.name = "phantoms/px128"
    config.data.image_size = 64
    # From scratch and briefly on a CPU, 1e-3 learns where the paper's 1e-4 stays at chance.
    config.optimizer.learning_rate = 1e-3
    config.num_train_steps = 300
    config.eval_every = 50
  else:
    config.data.name = "mura/xr_elbow"
    config.data.image_size = 299 if backbone == "inception_v3" else 224
    config.eval.split = "valid"  # MURA's test set is private: its validation set is the test.
    config.num_train_steps = 30_000
    config.eval_every = 1000
  return config
