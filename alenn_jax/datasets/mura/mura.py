"""`mura`: MURA v1.1, musculoskeletal radiographs labelled per study (Rajpurkar et al., 2017).

MURA is distributed by the Stanford AIMI Center after registration; it cannot be downloaded by this
code. Give its parent folder as `manual_dir`: the folder that holds `MURA-v1.1/`, laid out as
Stanford ships it.
"""

import csv
import dataclasses
import os

import tensorflow_datasets as tfds
from absl import logging

from alenn_jax.datasets import common
from alenn_jax.errors import UserInputError

STUDY_TYPES = (
  "XR_ELBOW",
  "XR_FINGER",
  "XR_FOREARM",
  "XR_HAND",
  "XR_HUMERUS",
  "XR_SHOULDER",
  "XR_WRIST",
)
ROOT = "MURA-v1.1"
SPLITS = ("train", "valid")
CSV_KINDS = ("image_paths", "labeled_studies")

INSTRUCTIONS = f"""\
MURA v1.1 is distributed by the Stanford AIMI Center (aimi.stanford.edu, "MURA" dataset) to users
who register and accept its research-use agreement; it cannot be downloaded automatically.
Unpack it and pass the folder that CONTAINS `{ROOT}/` as manual_dir. Expected layout:

  <manual_dir>/{ROOT}/train_image_paths.csv        one image path per line
  <manual_dir>/{ROOT}/train_labeled_studies.csv    '<study folder>/,<0|1>' per line
  <manual_dir>/{ROOT}/valid_image_paths.csv
  <manual_dir>/{ROOT}/valid_labeled_studies.csv
  <manual_dir>/{ROOT}/{{train,valid}}/XR_<TYPE>/patient<N>/study<K>_{{positive,negative}}/image<J>.png
"""


@dataclasses.dataclass(eq=False)
class MuraConfig(common.ImageBuilderConfig):
  study_types: tuple[str, ...] = ("XR_ELBOW",)


def _configs():
  configs = [
    MuraConfig(name=t.lower(), description=f"{t} studies only.", study_types=(t,))
    for t in STUDY_TYPES
  ]
  configs.append(
    MuraConfig(name="all", description="All seven study types.", study_types=STUDY_TYPES)
  )
  return configs


def checked_relative_path(path: str, csv_path: str, line: int) -> str:
  """A CSV path, refused when it is absolute or climbs out of the data root with '..'."""
  norm = os.path.normpath(path)
  if os.path.isabs(path) or norm.startswith("..") or ".." in path.replace("\\", "/").split("/"):
    raise UserInputError(
      f"{csv_path}, line {line}: path {path!r} escapes the data root (absolute or '..'); "
      "MURA's CSVs hold paths relative to the folder containing MURA-v1.1/. Fix or remove the row."
    )
  return norm


def _study_parts(rel_path: str, csv_path: str, line: int):
  """MURA-v1.1/<split>/XR_<TYPE>/patient<N>/study<K>_<positive|negative>/... -> pieces."""
  parts = rel_path.replace("\\", "/").split("/")
  if (
    len(parts) < 5
    or parts[0] != ROOT
    or parts[4].rsplit("_", 1)[-1] not in ("positive", "negative")
  ):
    raise UserInputError(
      f"{csv_path}, line {line}: {rel_path!r} does not follow "
      f"{ROOT}/<split>/XR_<TYPE>/patient<N>/study<K>_<positive|negative>/..."
    )
  split, study_type, patient, study_dir = parts[1:5]
  study, outcome = study_dir.rsplit("_", 1)
  return split, study_type, patient, study, int(outcome == "positive")


def read_labeled_studies(manual_dir: str, split: str) -> dict[str, int]:
  """Study folder (relative, without trailing slash) -> label, from <split>_labeled_studies.csv."""
  csv_path = os.path.join(manual_dir, ROOT, f"{split}_labeled_studies.csv")
  labels = {}
  with open(csv_path, newline="") as f:
    for line, row in enumerate(csv.reader(f), start=1):
      if not row:
        continue
      if len(row) != 2 or row[1].strip() not in ("0", "1"):
        raise UserInputError(
          f"{csv_path}, line {line}: expected '<study folder>/,<0|1>', got {row}"
        )
      study = checked_relative_path(row[0].strip().rstrip("/"), csv_path, line)
      labels[study] = int(row[1])
  return labels


class Mura(tfds.core.GeneratorBasedBuilder):
  """MURA v1.1 radiographs; label 1 = abnormal study."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "MURA v1.1."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  strict = False  # True: a corrupt or truncated image fails the build (else skipped / repaired).
  BUILDER_CONFIGS = _configs()
  DEFAULT_CONFIG_NAME = "xr_elbow"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=common.common_features(
        study_id=tfds.features.Text(),
        patient_id=tfds.features.Text(),
        study_type=tfds.features.Text(),
      ),
      homepage="https://stanfordmlgroup.github.io/competitions/mura/",
      citation="Rajpurkar et al., MURA: Large Dataset for Abnormality Detection in "
      "Musculoskeletal Radiographs, arXiv:1712.06957, 2017.",
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    root = os.path.join(manual_dir, ROOT)
    if not os.path.isdir(root):
      raise UserInputError(f"no {ROOT}/ folder in manual_dir {manual_dir!r}.\n{INSTRUCTIONS}")
    self._skips = common.SkipCounter()
    self._labels = common.LabelCounter()
    listed, present = {}, {}
    for split in SPLITS:
      tables = [os.path.join(root, f"{split}_{kind}.csv") for kind in CSV_KINDS]
      found = [os.path.isfile(t) for t in tables]
      if not any(found):
        continue  # A split not downloaded at all (its CSVs are absent too).
      if not all(found):
        missing = tables[found.index(False)]
        raise UserInputError(f"missing {missing} (its {split} twin is there).\n{INSTRUCTIONS}")
      listed[split] = self._listed_images(manual_dir, split)
      present[split] = []
      for entry in listed[split]:
        if os.path.isfile(entry["path"]):
          present[split].append(entry)
        else:
          self._skips.absent_file(split, entry["path"])
    self._skips.log_absent(f"{root}/<split>_image_paths.csv")
    present = {split: entries for split, entries in present.items() if entries}
    if not present:
      types = ", ".join(self.builder_config.study_types)
      raise UserInputError(
        f"no {types} image listed in the CSVs of {root} is present (splits listed: "
        f"{', '.join(listed) or 'none'}); download MURA's images into {root}.\n{INSTRUCTIONS}"
      )
    missing = sorted(set(SPLITS) - set(present))
    for split in missing:
      logging.warning(
        "%s: split %r left out: none of its %d listed images is present",
        self.builder_config.name,
        split,
        len(listed.get(split, ())),
      )
    self.info.metadata["missing_splits"] = missing
    self.info.metadata["manual_dir"] = manual_dir
    self._skips.write(self.info.metadata)
    return {split: self._generate_examples(split, entries) for split, entries in present.items()}

  def _listed_images(self, manual_dir: str, split: str) -> list[dict]:
    """The images of this config's study types that <split>_image_paths.csv lists, checked."""
    cfg = self.builder_config
    studies = read_labeled_studies(manual_dir, split)
    csv_path = os.path.join(manual_dir, ROOT, f"{split}_image_paths.csv")
    with open(csv_path, newline="") as f:
      rows = [(i, row[0].strip()) for i, row in enumerate(csv.reader(f), start=1) if row]
    entries = []
    for line, raw in rows:
      rel = checked_relative_path(raw, csv_path, line)
      path_split, study_type, patient, study, label = _study_parts(rel, csv_path, line)
      if study_type not in cfg.study_types:
        continue
      study_folder = os.path.dirname(rel)
      if study_folder in studies and studies[study_folder] != label:
        raise UserInputError(
          f"study {study_folder}: its folder name says label {label} but "
          f"{split}_labeled_studies.csv says {studies[study_folder]}. The two must agree; "
          "check which one is right and fix the other."
        )
      example_id = os.path.splitext("/".join(rel.replace("\\", "/").split("/")[1:]))[0]
      entries.append(
        {
          "path": os.path.join(manual_dir, rel),
          "id": example_id,
          "label": label,
          "study_id": f"{path_split}/{study_type}/{patient}/{study}",
          "patient_id": patient,
          "study_type": study_type,
        }
      )
    return entries

  def _generate_examples(self, split: str, entries: list[dict]):
    for entry in entries:
      image = common.read_image(entry["path"], self._skips, self.strict)
      if image is None:
        continue
      grey = common.grey_fitted(image, self.builder_config.max_side)
      self._labels.add(split, entry["label"])
      yield (
        entry["id"],
        {
          "image": common.encode_grey(grey),
          "label": entry["label"],
          "id": entry["id"],
          "lesion_mask": common.encode_grey(grey * 0),
          "study_id": entry["study_id"],
          "patient_id": entry["patient_id"],
          "study_type": entry["study_type"],
        },
      )
    self.info.metadata["label_counts"] = self._labels.as_dict()
    self._skips.write(self.info.metadata)
