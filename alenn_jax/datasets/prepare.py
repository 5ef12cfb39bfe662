"""Builds a dataset into `--data_dir` (idempotent: a built one is reused) and prints its summary.

  python -m alenn_jax.datasets.prepare --dataset=phantoms --data_dir=DIR
  python -m alenn_jax.datasets.prepare --dataset=mura/xr_elbow --manual_dir=DIR --data_dir=DIR
  python -m alenn_jax.datasets.prepare --dataset=fracatlas/hand --manual_dir=DIR --data_dir=DIR
  python -m alenn_jax.datasets.prepare --dataset=folder/wrist --manual_dir=DIR --data_dir=DIR \
      [--group_by=parent]     # your own normal/ and abnormal/ images (datasets/folder/folder.py)

Afterwards `tfds.data_source("mura/xr_elbow", data_dir=DIR)` reads it, with or without this package.
"""

import sys

from absl import app, flags

from alenn_jax import datasets
from alenn_jax.errors import UserInputError

_DATASET = flags.DEFINE_string("dataset", "phantoms", "name/config, e.g. mura/xr_elbow.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where built datasets are stored.")
_MANUAL_DIR = flags.DEFINE_string(
  "manual_dir", None, "The unpacked dataset (MURA, FracAtlas) or your folder of images."
)
_GROUP_BY = flags.DEFINE_enum(
  "group_by", None, ["path", "parent"], "folder datasets: what the split hash groups."
)
_MAX_SIDE = flags.DEFINE_integer("max_side", None, "Longest stored image side (default 512).")
_STRICT = flags.DEFINE_bool("strict", False, "Fail on a corrupt image instead of skipping it.")
flags.mark_flag_as_required("data_dir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    builder = datasets.build(
      _DATASET.value,
      _DATA_DIR.value,
      _MANUAL_DIR.value,
      max_side=_MAX_SIDE.value,
      strict=_STRICT.value,
      group_by=_GROUP_BY.value,
    )
  except UserInputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(datasets.summary(builder))
  print(f"stored in {builder.data_dir}")


if __name__ == "__main__":
  app.run(main)
