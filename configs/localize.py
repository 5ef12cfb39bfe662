"""Stage 2a: LE maps for every image of every split, from a stage 1 workdir, then Figure 3 and the
localization table.

  python launch.py --config=configs/localize.py:small --workdir=W     # W holds stage 1 (small)
  python launch.py --config=configs/localize.py:smoke --workdir=W
  python launch.py --config=configs/localize.py:full --workdir=W --config.init_from=/stage1/workdir
"""

import ml_collections

from configs import stage1


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size = arg or "small"
  config = ml_collections.ConfigDict()
  config.trainer = "localize"
  config.stage1 = stage1.get_config(size)  # Must describe the stage 1 run being loaded.
  config.init_from = ""  # Stage 1 workdir to load the generator from ("": --workdir itself).
  config.data = config.stage1.data.copy_and_resolve_references()
  config.data.labels = (0, 1)  # Every image, both classes.
  config.data.batch_size = 8
  config.window = 32 if size == "full" else config.stage1.masks.window  # Sliding window side (px).
  config.stride = config.window // 2  # Step between windows (the paper: d < w).
  config.chunk = 16  # Windows inpainted together; bounds memory.
  config.batches_per_shard = 8  # Resumption granularity.
  config.force_restart = False  # Recompute (old le_maps moved aside) if window/data changed.
  config.percentile = 99.0  # LE scale: this percentile of D over the training normals.
  config.report = ml_collections.ConfigDict()
  config.report.split = config.data.eval_split  # Where Figure 3 and the scores come from.
  config.report.num_examples = 4  # Rows of each Figure 3.
  config.report.tolerance = 2  # Pointing game: pixels of slack around the lesion.
  if size == "smoke":
    config.chunk = 4
    config.batches_per_shard = 1
    config.report.num_examples = 2
  return config
