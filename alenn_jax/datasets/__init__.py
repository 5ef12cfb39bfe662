"""Dataset builders (TFDS, stored as array_record) and the `build` helper.

Importing this package registers `phantoms`, `mura`, `fracatlas` and `folder` (your own images)
with TFDS. Once built (see
`python -m alenn_jax.datasets.prepare`), a dataset is readable anywhere with
`tfds.data_source("mura/xr_elbow", data_dir=...)`, even without this package.
"""

import dataclasses
import os
import re

import tensorflow_datasets as tfds
from absl import logging

from alenn_jax.datasets import common
from alenn_jax.datasets.folder import folder
from alenn_jax.datasets.fracatlas.fracatlas import FracAtlas
from alenn_jax.datasets.mura.mura import Mura
from alenn_jax.datasets.phantoms.phantoms import Phantoms
from alenn_jax.errors import UserInputError

BUILDERS = {"phantoms": Phantoms, "mura": Mura, "fracatlas": FracAtlas, "folder": folder.Folder}
# Datasets that need files the user provides.
NEEDS_MANUAL_DIR = ("mura", "fracatlas", "folder")
# A `folder` dataset's config name is the user's tag for it.
_TAG = re.compile(r"[a-z0-9][a-z0-9_]*")


def split_name(dataset: str) -> tuple[str, str]:
  """'mura/xr_elbow' -> ('mura', 'xr_elbow'); 'mura' -> ('mura', <its default config>)."""
  name, _, config = dataset.partition("/")
  if name not in BUILDERS:
    raise UserInputError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(BUILDERS))}.")
  cls = BUILDERS[name]
  config = config or cls.DEFAULT_CONFIG_NAME
  if name == "folder":
    if not _TAG.fullmatch(config):
      raise UserInputError(
        f"folder/{config}: a folder dataset's tag is lower-case letters, digits and _ "
        "(e.g. folder/wrist)."
      )
    return name, config
  valid = [c.name for c in cls.BUILDER_CONFIGS]
  base = config.split("_max")[0] if config not in valid else config
  if base not in valid:
    raise UserInputError(f"unknown config {config!r} of {name}; valid: {', '.join(valid)}.")
  return name, config


def _folder_config(tag: str, max_side: int | None, group_by: str | None):
  """The `folder` config of a tag: '<tag>[_byparent][_max<N>]' (each variant is stored apart)."""
  base, _, side = tag.partition("_max")
  if side.isdigit() and max_side is None:
    max_side = int(side)
  if base.endswith("_byparent"):
    base, group_by = base[: -len("_byparent")], group_by or "parent"
  group_by = group_by or "path"
  if group_by not in folder.GROUP_BY:
    raise UserInputError(
      f"config.data.group_by={group_by!r}; use one of {', '.join(folder.GROUP_BY)}."
    )
  max_side = max_side or common.DEFAULT_MAX_SIDE
  if max_side < 16:
    raise UserInputError(f"max_side must be at least 16, got {max_side}.")
  name = base + ("_byparent" if group_by == "parent" else "")
  name += f"_max{max_side}" if max_side != common.DEFAULT_MAX_SIDE else ""
  for config in folder.Folder.BUILDER_CONFIGS:  # TFDS wants its own instance for these names.
    if config.name == name:
      return config
  return folder.FolderConfig(
    name=name, description="A folder of your images.", max_side=max_side, group_by=group_by
  )


def get_builder(
  dataset: str,
  data_dir: str,
  max_side: int | None = None,
  strict: bool = False,
  group_by: str | None = None,
) -> tfds.core.DatasetBuilder:
  """The builder of `dataset` ('name/config'); a `max_side` other than the config's own gives a
  config named '<config>_max<N>', stored beside the default one (and for `folder`, `group_by`
  "parent" one named '<tag>_byparent')."""
  name, config_name = split_name(dataset)
  cls = BUILDERS[name]
  if name == "folder":
    config = _folder_config(config_name, max_side, group_by)
    builder = cls(data_dir=data_dir, config=config, file_format="array_record")
    builder.strict = strict
    return builder
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
  if builder.is_prepared() and name == "folder":
    folder.check_source(builder, manual_dir)
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
