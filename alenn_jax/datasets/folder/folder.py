"""`folder`: your own radiographs, as a folder of PNG, JPEG or DICOM files.

Give the folder as `manual_dir`:

  normal/...      normal images, at any depth (label 0)
  abnormal/...    abnormal images, at any depth (label 1)
  masks/...       optional lesion masks under the same relative names as their images
                  (masks/abnormal/p7/a.png for abnormal/p7/a.dcm; any non-zero pixel is lesion)
  splits.csv      optional: 'path,split' rows (path relative to manual_dir) that fix the splits;
                  images it does not list are left out and counted

Without splits.csv, images go 70/15/15 to train/validation/test by hashing their relative path, or
with `group_by="parent"` their folder below normal/ or abnormal/ (one patient per folder: a
patient's images, normal and abnormal alike, then share a split). Files are PNG, JPEG or DICOM
(by suffix, or a suffix-less file with the DICOM marker); unreadable ones are skipped and counted,
truncated ones kept (as for every dataset here).

The config name is a tag of your choosing (`folder/wrist`, `folder/knee`; default `folder`), so one
data_dir holds several folders; the folder a tag was built from is recorded, and a tag built from
another folder, or from this folder before its files changed, is refused (see `check_source`).
"""

import csv
import dataclasses
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from alenn_jax import image_io
from alenn_jax.datasets import common
from alenn_jax.errors import UserInputError

CLASS_FOLDERS = ("normal", "abnormal")  # Label 0 and 1.
MASKS = "masks"
SPLITS_CSV = "splits.csv"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", *image_io.DICOM_SUFFIXES)
GROUP_BY = ("path", "parent")

INSTRUCTIONS = """\
Put your images in a folder with normal/ and abnormal/ subfolders (any depth below them; PNG, JPEG
or DICOM), optionally masks/ with lesion masks under the same relative names and a splits.csv of
'path,split' rows, and pass that folder as manual_dir.
"""


@dataclasses.dataclass(eq=False)
class FolderConfig(common.ImageBuilderConfig):
  group_by: str = "path"  # What the split hash groups: "path" (each image) or "parent" (folder).


def find_image_files(root: str) -> list[str]:
  """Every PNG, JPEG or DICOM file under `root` (a DICOM may have no suffix), sorted; hidden files
  and folders are ignored."""
  found = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    for name in sorted(files):
      path = os.path.join(directory, name)
      if name.startswith("."):
        continue
      suffix = os.path.splitext(name)[1].lower()
      if suffix in IMAGE_SUFFIXES or (not suffix and image_io.is_dicom(path)):
        found.append(path)
  return found


def image_files(manual_dir: str) -> list[tuple[str, int]]:
  """(path relative to manual_dir, label) of every image under normal/ and abnormal/, sorted."""
  return [
    (os.path.relpath(path, manual_dir).replace(os.sep, "/"), label)
    for label, name in enumerate(CLASS_FOLDERS)
    for path in find_image_files(os.path.join(manual_dir, name))
  ]


def fingerprint(files: list[tuple[str, int]]) -> str:
  """A short hash of the listing: it changes when images are added, removed or renamed."""
  digest = hashlib.sha256("\n".join(path for path, _ in files).encode("utf-8"))
  return digest.hexdigest()[:16]


def group_key(path: str, group_by: str) -> str:
  """What the split hash is taken of: the path, or the image's folder below its class folder
  (the path itself for an image lying directly in normal/ or abnormal/)."""
  if group_by == "parent":
    parts = path.split("/")
    if len(parts) > 2:
      return "/".join(parts[1:-1])
  return path


def read_splits(path: str) -> dict[str, str]:
  """splits.csv -> {relative path: split}."""
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    if not reader.fieldnames or not {"path", "split"} <= set(reader.fieldnames):
      raise UserInputError(f"{path}: needs a header 'path,split'; got {reader.fieldnames}.")
    splits = {}
    for line, row in enumerate(reader, start=2):
      split = (row["split"] or "").strip()
      rel = (row["path"] or "").strip().replace("\\", "/")
      if not split.replace("_", "").isalnum() or not split.islower():
        raise UserInputError(
          f"{path}, line {line}: split {split!r} must be lower-case letters, digits or _, e.g. "
          "train, validation, test."
        )
      if not rel or rel.startswith("/") or ".." in rel.split("/"):
        raise UserInputError(f"{path}, line {line}: {rel!r} is not a path inside the folder.")
      splits[rel] = split
  return splits


def check_source(builder, manual_dir: str | None) -> None:
  """Refuses a built `folder` dataset that was built from another folder, or whose folder has
  changed since (images added, removed or renamed)."""
  if not manual_dir:
    return
  metadata = builder.info.metadata
  built_from = metadata.get("manual_dir")
  tag = builder.builder_config.name
  if built_from and os.path.abspath(built_from) != os.path.abspath(manual_dir):
    raise UserInputError(
      f"folder/{tag} in {builder.data_dir} was built from {built_from}, not {manual_dir}; give "
      "this folder its own tag (--config.data.name=folder/<tag>) or another data_dir."
    )
  if metadata.get("fingerprint") and metadata["fingerprint"] != fingerprint(
    image_files(manual_dir)
  ):
    raise UserInputError(
      f"the images in {manual_dir} changed since folder/{tag} was built into {builder.data_dir}; "
      f"delete {builder.data_dir} to build it again, or build under a new tag "
      "(--config.data.name=folder/<tag>)."
    )


class Folder(tfds.core.GeneratorBasedBuilder):
  """A folder of normal/ and abnormal/ images; label 1 = abnormal."""

  name = "folder"

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  strict = False  # True: a corrupt or truncated image fails the build (else skipped / repaired).
  BUILDER_CONFIGS = [FolderConfig(name="default", description="A folder of your images.")]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=common.common_features(path=tfds.features.Text()),
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    group_by = self.builder_config.group_by
    if group_by not in GROUP_BY:
      raise UserInputError(f"group_by={group_by!r}; use one of {', '.join(GROUP_BY)}.")
    if not any(os.path.isdir(os.path.join(manual_dir, f)) for f in CLASS_FOLDERS):
      raise UserInputError(f"{manual_dir} has neither normal/ nor abnormal/.\n{INSTRUCTIONS}")
    files = image_files(manual_dir)
    if not files:
      raise UserInputError(
        f"no PNG, JPEG or DICOM files under {manual_dir}/normal or {manual_dir}/abnormal."
      )
    self._skips = common.SkipCounter()
    self._labels = common.LabelCounter()
    table = os.path.join(manual_dir, SPLITS_CSV)
    by_split: dict[str, list] = {}
    if os.path.isfile(table):
      fixed = read_splits(table)
      present = {path for path, _ in files}
      for path, split in fixed.items():
        if path not in present:
          self._skips.absent_file(split, os.path.join(manual_dir, path))
      self._skips.log_absent(table)
      for path, label in files:
        if path in fixed:
          by_split.setdefault(fixed[path], []).append((path, label))
        else:
          self._skips.skip(f"not listed in {SPLITS_CSV}", path)
      source = SPLITS_CSV
    else:
      for path, label in files:
        split = common.hash_split(group_key(path, group_by))
        by_split.setdefault(split, []).append((path, label))
      source = f"hash of the {group_by}"
    if not by_split:
      raise UserInputError(f"{table} lists none of the images under {manual_dir}.")
    metadata = self.info.metadata
    metadata["manual_dir"] = os.path.abspath(manual_dir)
    metadata["fingerprint"] = fingerprint(files)
    metadata["group_by"] = group_by
    metadata["splits_from"] = source
    metadata["missing_splits"] = []
    self._skips.write(metadata)
    return {
      split: self._generate_examples(manual_dir, split, items)
      for split, items in sorted(by_split.items())
    }

  def _generate_examples(self, manual_dir, split, items):
    max_side = self.builder_config.max_side
    for path, label in items:
      image = common.read_image(os.path.join(manual_dir, path), self._skips, self.strict)
      if image is None:
        continue
      grey = common.grey_fitted(image, max_side)
      mask = self._mask(manual_dir, path, image.size, grey.shape)
      if mask is None:
        continue
      example_id = os.path.splitext(path)[0]
      self._labels.add(split, label)
      yield (
        path,
        {
          "image": common.encode_grey(grey),
          "label": label,
          "id": example_id,
          "lesion_mask": common.encode_grey(mask),
          "path": path,
        },
      )
    self.info.metadata["label_counts"] = self._labels.as_dict()
    self._skips.write(self.info.metadata)

  def _mask(self, manual_dir, path, size, shape) -> np.ndarray | None:
    """The image's lesion mask at the stored size (zeros when it has none); None when the mask
    is unreadable or its size is not the image's (counted as a skip)."""
    stem = os.path.splitext(path)[0]
    candidates = [os.path.join(manual_dir, MASKS, path)] + [
      os.path.join(manual_dir, MASKS, stem + suffix) for suffix in (".png", ".PNG")
    ]
    mask_path = next((p for p in candidates if os.path.isfile(p)), None)
    if mask_path is None:
      return np.zeros(shape, np.uint8)
    mask = common.read_image(mask_path, self._skips, self.strict)
    if mask is None:
      return None
    if mask.size != size:
      self._skips.skip(
        f"mask size differs from its image's {size[0]}x{size[1]}",
        f"{mask_path} ({mask.size[0]}x{mask.size[1]})",
      )
      return None
    binary = Image.fromarray((common.to_grey_uint8(mask) > 0).astype(np.uint8))
    return np.asarray(binary.resize(shape[::-1], Image.Resampling.NEAREST), np.uint8)
