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

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

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
  """Any PIL image -> uint8 [H, W] grey (16-bit scaled down, colour converted with ITU-R 601)."""
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    array = np.asarray(image, np.float64)
    peak = 65535.0 if array.max() > 255 else 255.0
    return np.clip(np.round(array / peak * 255.0), 0, 255).astype(np.uint8)
  return np.asarray(image.convert("L"), np.uint8)


class SkipCounter:
  """Counts files a build skipped, by reason, and remembers a few paths of each for the summary."""

  def __init__(self):
    self.counts = collections.Counter()
    self.examples = collections.defaultdict(list)

  def skip(self, reason: str, path: str) -> None:
    self.counts[reason] += 1
    if len(self.examples[reason]) < 5:
      self.examples[reason].append(path)
    logging.warning("skipping %s: %s", path, reason)

  def as_dict(self) -> dict[str, int]:
    return dict(self.counts)


def read_image(path: str, skips: SkipCounter, strict: bool) -> Image.Image | None:
  """Opens and fully decodes an image; a corrupt or truncated file is skipped (raises if strict)."""
  try:
    with open(path, "rb") as f:
      data = f.read()
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
  except (OSError, ValueError, SyntaxError) as e:
    if strict:
      raise ValueError(f"corrupt or unreadable image {path}: {e} (strict=True)") from e
    skips.skip("corrupt or unreadable image", f"{path} ({e})")
    return None


def encode_grey(array: np.ndarray) -> np.ndarray:
  """[H, W] uint8 -> [H, W, 1] uint8 as the Image features store it."""
  return np.ascontiguousarray(array[:, :, None], dtype=np.uint8)


def hash_split(example_id: str, fractions=(("train", 0.70), ("validation", 0.15), ("test", 0.15))):
  """A split chosen by hashing the id: stable across machines, runs and dataset subsets."""
  digest = hashlib.sha256(example_id.encode("utf-8")).digest()
  u = int.from_bytes(digest[:8], "big") / 2.0**64
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
  """Human-readable split sizes by label and skipped-file counts from a built dataset's metadata."""
  lines = [f"{name}:"]
  for split, counts in metadata.get("label_counts", {}).items():
    total = sum(counts.values())
    parts = ", ".join(f"{k} {v}" for k, v in counts.items())
    lines.append(f"  {split:<10} {total:>7} images ({parts})")
  skipped = metadata.get("skipped", {})
  if skipped:
    for reason, count in skipped.items():
      lines.append(f"  skipped: {count} ({reason})")
  else:
    lines.append("  skipped: none")
  return lines
