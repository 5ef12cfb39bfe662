"""Predict new radiographs with a trained pipeline: P(abnormal) per classifier and the LE maps.

  python launch.py --config=configs/predict.py --workdir=OUT \\
      --config.from_workdir=W --config.images=/path/to/folder     # or a glob, or a list file

W is a pipeline workdir (or a single localize or classifier workdir); everything else comes from
the configs stored there. See alenn_jax/classification/predict.py for what OUT holds.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"configs/predict.py takes no argument, got {arg!r}.")
  config = ml_collections.ConfigDict()
  config.trainer = "predict"
  config.from_workdir = ""  # The trained pipeline (or localize / classifier) workdir.
  config.images = ""  # A folder (recursive), a glob, or a .txt/.csv list of image paths.
  config.num_threads = 4  # Host threads reading images ahead of the accelerator.
  return config
