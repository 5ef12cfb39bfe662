"""`fracatlas`: FracAtlas musculoskeletal radiographs with fracture boxes and masks.

Abedeen et al., "FracAtlas: A Dataset for Fracture Classification, Localization and Segmentation of
Musculoskeletal Radiographs", Scientific Data 10:521 (2023), CC BY 4.0. Give the folder holding
FracAtlas's own layout as `manual_dir`:

  images/{Fractured,Non_fractured}/<id>.jpg
  Annotations/YOLO/<id>.txt                      'class cx cy w h' per fracture box (normalised)
  Annotations/COCO JSON/COCO_fracture_masks.json fracture polygons
  dataset.csv                                    a row per image: region flags, hardware, fractured

`lesion_mask` is rasterised from the COCO polygons, or from the boxes where an image has none.
Splits are chosen by hashing the image id (70/15/15), so they are stable for any subset.
"""

import csv
import dataclasses
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from alenn_jax.datasets import common
from alenn_jax.errors import UserInputError

REGIONS = ("hand", "leg", "hip", "shoulder")
SPLITS = ("train", "validation", "test")
COCO_PATH = os.path.join("Annotations", "COCO JSON", "COCO_fracture_masks.json")

INSTRUCTIONS = """\
FracAtlas (CC BY 4.0) is published at doi:10.6084/m9.figshare.22363012. Unpack it and pass the
folder holding `images/`, `Annotations/` and `dataset.csv` as manual_dir.
"""


@dataclasses.dataclass(eq=False)
class FracAtlasConfig(common.ImageBuilderConfig):
  region: str = "hand"  # A column of dataset.csv, or "all".


class FracAtlas(tfds.core.GeneratorBasedBuilder):
  """FracAtlas; label 1 = fractured."""

  name = "fracatlas"

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  strict = False  # True: a corrupt or truncated image fails the build (else skipped / repaired).
  BUILDER_CONFIGS = [
    FracAtlasConfig(name="hand", description="Hand images.", region="hand"),
    FracAtlasConfig(name="shoulder", description="Shoulder images.", region="shoulder"),
    FracAtlasConfig(name="all", description="All regions.", region="all"),
  ]
  DEFAULT_CONFIG_NAME = "hand"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=common.common_features(
        boxes=tfds.features.Sequence(tfds.features.BBoxFeature()),
        hardware=np.int64,
      ),
      homepage="https://doi.org/10.1038/s41597-023-02432-4",
      citation="Abedeen et al., FracAtlas, Scientific Data 10:521, 2023.",
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    table = os.path.join(manual_dir, "dataset.csv")
    if not os.path.isfile(table):
      raise UserInputError(f"missing {table}.\n{INSTRUCTIONS}")
    rows = read_table(table, self.builder_config.region)
    polygons = read_coco_polygons(os.path.join(manual_dir, COCO_PATH))
    self._skips = common.SkipCounter()
    self._labels = common.LabelCounter()
    by_split = {split: [] for split in SPLITS}
    for row in rows:
      split = common.hash_split(os.path.splitext(row["image_id"])[0])
      path = image_path(manual_dir, row)
      if os.path.isfile(path):
        by_split[split].append(row)
      else:
        self._skips.absent_file(split, path)
    self._skips.log_absent(table)
    present = {split: r for split, r in by_split.items() if r}
    if not present:
      raise UserInputError(
        f"none of the {len(rows)} {self.builder_config.region!r} images that {table} lists is in "
        f"{os.path.join(manual_dir, 'images')}; is manual_dir the unpacked FracAtlas folder?"
      )
    self.info.metadata["missing_splits"] = sorted(set(SPLITS) - set(present))
    self.info.metadata["manual_dir"] = manual_dir
    self._skips.write(self.info.metadata)
    return {
      split: self._generate_examples(manual_dir, split, split_rows, polygons)
      for split, split_rows in present.items()
    }

  def _generate_examples(self, manual_dir, split, rows, polygons):
    cfg = self.builder_config
    for row in rows:
      name = row["image_id"]
      fractured = int(row["fractured"])
      image = common.read_image(image_path(manual_dir, row), self._skips, self.strict)
      if image is None:
        continue
      width, height = image.size
      stem = os.path.splitext(name)[0]
      boxes = read_yolo_boxes(os.path.join(manual_dir, "Annotations", "YOLO", stem + ".txt"))
      mask = rasterize(width, height, polygons.get(name, []), boxes)
      grey = common.grey_fitted(image, cfg.max_side)
      mask_small = Image.fromarray(mask).resize(grey.shape[::-1], Image.Resampling.NEAREST)
      self._labels.add(split, fractured)
      yield (
        stem,
        {
          "image": common.encode_grey(grey),
          "label": fractured,
          "id": stem,
          "lesion_mask": common.encode_grey(np.asarray(mask_small, np.uint8)),
          "boxes": [tfds.features.BBox(*b) for b in boxes],
          "hardware": int(row["hardware"]),
        },
      )
    self.info.metadata["label_counts"] = self._labels.as_dict()
    self._skips.write(self.info.metadata)


def image_path(manual_dir: str, row: dict) -> str:
  """Where FracAtlas keeps the image of a dataset.csv row."""
  folder = "Fractured" if row["fractured"] == "1" else "Non_fractured"
  return os.path.join(manual_dir, "images", folder, row["image_id"])


def read_table(path: str, region: str) -> list[dict]:
  """Rows of dataset.csv for a region ("all": every row)."""
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    needed = {"image_id", "fractured", "hardware", *REGIONS}
    missing = needed - set(reader.fieldnames or ())
    if missing:
      raise UserInputError(
        f"{path}: missing columns {sorted(missing)}; is this FracAtlas's dataset.csv?"
      )
    if region != "all" and region not in reader.fieldnames:
      raise UserInputError(f"{path}: no column {region!r}; regions: {REGIONS} or 'all'.")
    rows = []
    for line, row in enumerate(reader, start=2):
      if row["fractured"] not in ("0", "1") or row["hardware"] not in ("0", "1"):
        raise UserInputError(
          f"{path}, line {line}: 'fractured' and 'hardware' must be 0 or 1: {row}"
        )
      if os.path.basename(row["image_id"]) != row["image_id"] or row["image_id"].startswith("."):
        raise UserInputError(
          f"{path}, line {line}: image_id {row['image_id']!r} is not a file name."
        )
      if region == "all" or row[region] == "1":
        rows.append(row)
  return rows


def read_coco_polygons(path: str) -> dict[str, list[list[float]]]:
  """file name -> list of polygons [x0, y0, x1, y1, ...] in pixels; {} when the file is absent."""
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    coco = json.load(f)
  names = {image["id"]: image["file_name"] for image in coco.get("images", [])}
  polygons: dict[str, list[list[float]]] = {}
  for ann in coco.get("annotations", []):
    segmentation = ann.get("segmentation")
    if ann.get("image_id") in names and isinstance(segmentation, list):
      polygons.setdefault(names[ann["image_id"]], []).extend(p for p in segmentation if len(p) >= 6)
  return polygons


def read_yolo_boxes(path: str) -> list[tuple[float, float, float, float]]:
  """YOLO 'class cx cy w h' lines -> (ymin, xmin, ymax, xmax) normalised, clipped to [0, 1]."""
  if not os.path.isfile(path):
    return []
  boxes = []
  with open(path) as f:
    for line_no, line in enumerate(f, start=1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) != 5:
        raise UserInputError(f"{path}, line {line_no}: expected 'class cx cy w h', got {line!r}")
      cx, cy, w, h = (float(v) for v in fields[1:])
      ymin, xmin = np.clip([cy - h / 2, cx - w / 2], 0.0, 1.0)
      ymax, xmax = np.clip([cy + h / 2, cx + w / 2], 0.0, 1.0)
      boxes.append((float(ymin), float(xmin), float(ymax), float(xmax)))
  return boxes


def rasterize(width: int, height: int, polygons, boxes) -> np.ndarray:
  """uint8 [H, W] mask: the polygons filled, or the boxes where there is no polygon."""
  canvas = Image.new("L", (width, height), 0)
  draw = ImageDraw.Draw(canvas)
  if polygons:
    for polygon in polygons:
      draw.polygon([(polygon[i], polygon[i + 1]) for i in range(0, len(polygon) - 1, 2)], fill=1)
  else:
    for ymin, xmin, ymax, xmax in boxes:
      draw.rectangle([xmin * width, ymin * height, xmax * width, ymax * height], fill=1)
  return np.asarray(canvas, np.uint8)
