"""Dataset builders (TFDS, stored as array_record) and the `build` helper.

Importing this package registers `phantoms`, `mura` and `fracatlas` with TFDS. Once built (see
`python -m alenn_jax.datasets.prepare`), a dataset is readable anywhere with
`tfds.data_source("mura/xr_elbow", data_dir=...)`, even without this package.
"""

import dataclasses
import os

import tensorflow_datasets as tfds
from absl import logging

from alenn_jax.datasets import common
from alenn_jax.datasets.fracatlas.fracatlas import FracAtlas
from alenn_jax.datasets.mura.mura import Mura
from alenn_jax.datasets.phantoms.phantoms import Phantoms
from alenn_jax.errors import UserInputError

BUILDERS = {"phantoms": Phantoms, "mura": Mura, "fracatlas": FracAtlas}
# Datasets that need files the user provides.
NEEDS_MANUAL_DIR = ("mura", "fracatlas")


def split_name(dataset: str) -> tuple[str, str]:
  """'mura/xr_elbow' -> ('mura', 'xr_elbow'); 'mura' -> ('mura', <its default config>)."""
  name, _, config = dataset.partition("/")
  if name not in BUILDERS:
    raise UserInputError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(BUILDERS))}.")
  cls = BUILDERS[name]
  config = config or cls.DEFAULT_CONFIG_NAME
  valid = [c.name for c in cls.BUILDER_CONFIGS]
  base = config.split("_max")[0] if config not in valid else config
  if base not in valid:
    raise UserInputError(f"unknown config {config!r} of {name}; valid: {', '.join(valid)}.")
  return name, config


def get_builder(
  dataset: str, data_dir: str, max_side: int | None = None, strict: bool = False
) -> tfds.core.DatasetBuilder:
  """The builder of `dataset` ('name/config'); a `max_side` other than the config's own gives a
  config named '<config>_max<N>', stored beside the default one."""
  name, config_name = split_name(dataset)
  cls = BUILDERS[name]
  base_name = config_name.split("_max")[0]
  config = next(c for c in cls.BUILDER_CONFIGS if c.name == base_name)
  if config_name != base_name and max_side is None:
    max_side = int(config_name.split("_max")[1])
  if max_side is not None and max_side != config.max_side:
    if max_side < 16:
      raise UserInputError(f"max_side must be at least 16, got {max_side}.")
    config = dataclasses.replace(config, name=f"{base_name}_max{max_side}", max_side=max_side)
  builder = cls(data_dir=data_dir, config=config, file_format="array_record")
  builder.strict = strict
  return builder


def build(dataset: str, data_dir: str, manual_dir: str | None = None, **kwargs):
  """Builds `dataset` into `data_dir` unless it is already there; returns the builder."""
  builder = get_builder(dataset, data_dir, **kwargs)
  name = split_name(dataset)[0]
  if not builder.is_prepared():
    if name in NEEDS_MANUAL_DIR:
      if not manual_dir:
        raise UserInputError(
          f"{dataset} needs --manual_dir.\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
      if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
        raise UserInputError(
          f"manual_dir {manual_dir!r} does not exist or is empty.\n"
          f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    download_config = None
    if manual_dir is not None:
      download_config = tfds.download.DownloadConfig(manual_dir=os.path.abspath(manual_dir))
    builder.download_and_prepare(download_config=download_config)
    logging.info("built %s", summary(builder))
  return builder


def summary(builder: tfds.core.DatasetBuilder) -> str:
  return "\n".join(common.summary_lines(builder.info.full_name, builder.info.metadata))
