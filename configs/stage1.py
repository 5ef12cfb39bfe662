"""Stage 1: the two-step inpainting GAN, trained on normal images only.

  python launch.py --config=configs/stage1.py:smoke --workdir=W   # tests: tiny, seconds
  python launch.py --config=configs/stage1.py:small --workdir=W   # CPU: phantoms at 64 px
  python launch.py --config=configs/stage1.py:full --workdir=W \\
      --config.data.manual_dir=/data/mura                         # accelerators: MURA elbow, 256 px
  python launch.py --config=configs/stage1.py:small --workdir=W --mode=eval   # Table 1 only
"""

import ml_collections

from alenn_jax import input_pipeline, masks
from alenn_jax.models import inpainting
from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size = arg or "small"
  if size not in ("smoke", "small", "full"):
    raise ValueError(f"configs/stage1.py: unknown argument {arg!r}; use smoke, small or full.")
  config = ml_collections.ConfigDict()
  config.trainer = "inpainting"
  config.seed = 0
  config.model = inpainting.model_config(size)
  config.data = input_pipeline.data_config()
  config.data.labels = (0,)  # Stage 1 sees normal images only.
  config.masks = masks.mask_config()
  config.rtv = common.rtv_config()
  # Where the RTV structure S comes from (rtv.STRUCTURE_MODES): "in_step" (of every
  # augmented batch, inside the jitted step: exact) or "per_image" (once per training image before
  # training, then augmented with its image: no solve per step).
  config.structure = "in_step"
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-4  # The paper's Adam learning rate.
  config.optimizer.b1 = 0.5  # Adam betas (the paper gives none; 0.5 is usual for GANs).
  config.optimizer.b2 = 0.999
  config.alpha = 0.8  # L_S = alpha * L1 + (1 - alpha) * adversarial (eq. 11).
  config.beta = 0.85  # L_I = beta * L1 + (1 - beta) * adversarial (eq. 12).
  config.d_steps = 1  # Discriminator updates per generator update.
  config.finetune_gen_s = False  # Phase 2 also trains gen_s (through L_I) instead of freezing it.
  config.phase1_steps = 2000  # Steps training gen_s/disc_s...
  config.phase2_steps = 2000  # ... then gen_t/disc_t.
  config.force_restart = False  # Start over (old checkpoints moved aside) if shapes changed.
  config.stop_at_step = -1  # Stop (checkpointed) at this step, e.g. to fit a job's time limit.
  config.log_every = 50
  config.eval_every = 500  # Image grid every this many steps (Table 1 at the end).
  config.checkpoint_every = 500
  config.keep_checkpoints = 3
  config.grid_examples = 4  # Rows of the image grid.
  config.eval = ml_collections.ConfigDict()
  config.eval.split = "validation"  # Held-out normal and abnormal images for Table 1.
  config.eval.window = 16  # Side of the fixed windows that tile each image for Table 1.
  config.eval.max_batches = 0  # 0: the whole split.
  config.eval.checkpoint_step = -1  # --mode=eval: this step (-1: the latest).

  if size == "smoke":
    config.data.name = "phantoms/px64"
    config.data.image_size = 32
    config.data.batch_size = 8
    config.masks.window = 8
    config.eval.window = 8
    config.eval.max_batches = 1
    config.phase1_steps = 3
    config.phase2_steps = 3
    config.log_every = 1
    config.eval_every = 3
    config.checkpoint_every = 2
    config.grid_examples = 2
  elif size == "small":  # About half an hour on a 2-core CPU.
    config.data.name = "phantoms/px128"
    config.data.image_size = 64
    config.masks.window = 16
    # RTV once per image instead of in every step: the demo's stage 1 about 1.3x faster, its maps
    # scoring as before (BENCHMARKS.md, "The whole pipeline").
    config.structure = "per_image"
    config.phase1_steps = 1200
    config.phase2_steps = 1800
  else:
    config.data.name = "mura/xr_elbow"
    config.data.image_size = 256
    config.eval.split = "valid"
    config.eval.window = 32
    config.masks.window = 32
    config.phase1_steps = 100_000
    config.phase2_steps = 100_000
    config.eval_every = 5000
    config.checkpoint_every = 5000
  return config
