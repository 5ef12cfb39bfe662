"""What every dataset builder shares: features, image fitting, skip accounting, split hashing.

All builders store `array_record` files, readable with `tfds.data_source(name, data_dir=...)` or
grain, with or without TensorFlow. Every example has:

  image        uint8 [H, W, 1], longest side at most the builder config's `max_side`, aspect kept
  label        0 normal, 1 abnormal (abnormal is the positive class everywhere in this project)
  id           a stable string naming the example
  lesion_mask  uint8 [H, W, 1], 1 inside a known lesion; all zeros where none is known
"""

import collections
import dataclasses
import hashlib
import io
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from alenn_jax import image_io
from alenn_jax.errors import UserInputError

LABEL_NAMES = ("normal", "abnormal")
DEFAULT_MAX_SIDE = 512


@dataclasses.dataclass(eq=False)
class ImageBuilderConfig(tfds.core.BuilderConfig):
  """A builder config with the longest stored image side."""

  max_side: int = DEFAULT_MAX_SIDE


def common_features(**extra) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict(
    {
      "image": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
      "label": tfds.features.ClassLabel(names=LABEL_NAMES),
      "id": tfds.features.Text(),
      "lesion_mask": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
      **extra,
    }
  )


def fit_longest_side(image: Image.Image, max_side: int, resample) -> Image.Image:
  """Shrinks so the longest side is at most `max_side` (aspect kept); never enlarges."""
  w, h = image.size
  scale = max_side / max(w, h)
  if scale >= 1.0:
    return image
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return image.resize(size, resample)


def grey_fitted(image: Image.Image, max_side: int) -> np.ndarray:
  """Any PIL image -> uint8 [H, W] grey with its longest side at most `max_side`."""
  grey = Image.fromarray(to_grey_uint8(image), mode="L")
  return np.asarray(fit_longest_side(grey, max_side, Image.Resampling.LANCZOS), np.uint8)


def to_grey_uint8(image: Image.Image) -> np.ndarray:
  """Any PIL image -> uint8 [H, W] grey (16-bit scaled down, colour converted with ITU-R 601, a
  float image ("F", as `image_io.read_dicom` gives) taken as [0, 1])."""
  if image.mode == "F":
    array = np.asarray(image, np.float64)
    return np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    array = np.asarray(image, np.float64)
    peak = 65535.0 if array.max() > 255 else 255.0
    return np.clip(np.round(array / peak * 255.0), 0, 255).astype(np.uint8)
  return np.asarray(image.convert("L"), np.uint8)


class SkipCounter:
  """What a build could not use as it is, with a few paths of each kind for the summary.

  skipped   unreadable files, by reason (each also logged: they are rare and worth a look)
  absent    files a table lists that are not on disk, by split: counted, not logged one by one,
            since a partial download lists tens of thousands
  repaired  truncated files kept, decoded as far as they go (as every viewer shows them)
  """

  EXAMPLES = 5

  def __init__(self):
    self.counts = collections.Counter()
    self.examples = collections.defaultdict(list)
    self.absent = collections.Counter()
    self.absent_examples = []
    self.repaired = []

  def skip(self, reason: str, path: str) -> None:
    self.counts[reason] += 1
    if len(self.examples[reason]) < self.EXAMPLES:
      self.examples[reason].append(path)
    logging.warning("skipping %s: %s", path, reason)

  def absent_file(self, split: str, path: str) -> None:
    self.absent[split] += 1
    if len(self.absent_examples) < self.EXAMPLES:
      self.absent_examples.append(path)

  def repair(self, path: str) -> None:
    self.repaired.append(path)

  def as_dict(self) -> dict[str, int]:
    return dict(self.counts)

  def write(self, metadata) -> None:
    """Stores the counts (and the first paths) in a dataset's metadata, for `summary_lines`."""
    metadata["skipped"] = self.as_dict()
    metadata["absent"] = dict(sorted(self.absent.items()))
    metadata["absent_examples"] = list(self.absent_examples)
    metadata["repaired"] = len(self.repaired)
    metadata["repaired_examples"] = self.repaired[: self.EXAMPLES]

  def log_absent(self, listed: str) -> None:
    """One summary line for the absent files (`listed` names the table that lists them)."""
    if self.absent:
      per_split = ", ".join(f"{split} {n}" for split, n in sorted(self.absent.items()))
      logging.warning(
        "%d files listed in %s are absent (%s); first: %s",
        sum(self.absent.values()),
        listed,
        per_split,
        ", ".join(self.absent_examples),
      )


def read_image(path: str, skips: SkipCounter, strict: bool) -> Image.Image | None:
  """Opens and fully decodes an image. A truncated file is kept (counted as repaired), a corrupt
  or unreadable one skipped; with `strict` both stop the build with a UserInputError."""
  try:
    image, repaired = image_io.open_image(path, allow_truncated=not strict)
  except OSError as e:
    if strict:
      raise UserInputError(
        f"{e}. The build stops on it because strict=True; drop --strict to keep truncated images "
        "and skip unreadable ones."
      ) from None
    skips.skip("corrupt or unreadable image", f"{path} ({e})")
    return None
  if repaired:
    skips.repair(path)
  return image


def encode_grey(array: np.ndarray) -> bytes:
  """[H, W] uint8 -> the PNG bytes an Image feature stores. Encoded here with Pillow (lossless, so
  the stored pixels are the array's) rather than by TFDS, whose numpy-array encoder needs
  TensorFlow: datasets build on hosts without it."""
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, "PNG")  # Mode L.
  return buffer.getvalue()


def hash64(text: str) -> int:
  """The first 8 bytes of the SHA-256 of `text` as an integer: a draw that is the same on every
  machine and run."""
  return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def hash_split(example_id: str, fractions=(("train", 0.70), ("validation", 0.15), ("test", 0.15))):
  """A split chosen by hashing the id: stable across machines, runs and dataset subsets."""
  u = hash64(example_id) / 2.0**64
  total = 0.0
  for name, fraction in fractions:
    total += fraction
    if u < total:
      return name
  return fractions[-1][0]


class LabelCounter:
  """Examples per split and label, written into the dataset's metadata for the build summary."""

  def __init__(self):
    self.counts = collections.defaultdict(lambda: [0, 0])

  def add(self, split: str, label: int) -> None:
    self.counts[split][label] += 1

  def as_dict(self) -> dict[str, dict[str, int]]:
    return {
      split: {LABEL_NAMES[0]: c[0], LABEL_NAMES[1]: c[1]}
      for split, c in sorted(self.counts.items())
    }


def summary_lines(name: str, metadata) -> list[str]:
  """Human-readable split sizes by label, left-out splits, and the counts of skipped, absent and
  repaired files from a built dataset's metadata."""
  lines = [f"{name}:"]
  for split, counts in metadata.get("label_counts", {}).items():
    total = sum(counts.values())
    parts = ", ".join(f"{k} {v}" for k, v in counts.items())
    lines.append(f"  {split:<10} {total:>7} images ({parts})")
  for split in metadata.get("missing_splits", []):
    lines.append(f"  {split:<10} left out: none of its listed images is present")
  skipped = metadata.get("skipped", {})
  if skipped:
    for reason, count in skipped.items():
      lines.append(f"  skipped: {count} ({reason})")
  else:
    lines.append("  skipped: none")
  absent = metadata.get("absent", {})
  if absent:
    per_split = ", ".join(f"{split} {n}" for split, n in absent.items())
    first = ", ".join(metadata.get("absent_examples", []))
    lines.append(f"  absent: {sum(absent.values())} listed files ({per_split}); first: {first}")
  repaired = metadata.get("repaired", 0)
  if repaired:
    first = ", ".join(os.path.basename(p) for p in metadata.get("repaired_examples", []))
    lines.append(f"  repaired: {repaired} truncated images kept; first: {first}")
  return lines
