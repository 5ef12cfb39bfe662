"""Dataset builders: MURA (a fixture folder), FracAtlas (a subset of the real sample), phantoms."""

import csv
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow_datasets as tfds
from absl.testing import absltest
from PIL import Image

from alenn_jax import data_splits, datasets, input_pipeline
from alenn_jax.datasets import common
from alenn_jax.datasets.fracatlas import fracatlas
from alenn_jax.errors import UserInputError

REPO = os.path.join(os.path.dirname(__file__), "..")
FRACATLAS = os.path.join(REPO, "..", "shared", "data", "fracatlas")


def _png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def make_mura(root: str, *, mislabel: bool = False, escape: bool = False) -> None:
  """A tiny MURA-v1.1 folder: grey and RGB PNGs, a missing and a corrupt file, two study types."""
  rng = np.random.default_rng(0)
  base = os.path.join(root, "MURA-v1.1")
  image_rows = {"train": [], "valid": []}
  study_rows = {"train": [], "valid": []}

  def add(split, study_type, patient, study, positive, images, label_in_csv=None):
    folder = f"MURA-v1.1/{split}/{study_type}/patient{patient:05d}/study{study}_"
    folder += "positive" if positive else "negative"
    for name, array in images:
      rel = f"{folder}/{name}"
      image_rows[split].append(rel)
      if array is not None:
        if isinstance(array, bytes):
          os.makedirs(os.path.join(root, folder), exist_ok=True)
          with open(os.path.join(root, rel), "wb") as f:
            f.write(array)
        else:
          _png(os.path.join(root, rel), array)
    label = int(positive) if label_in_csv is None else label_in_csv
    study_rows[split].append((folder + "/", label))

  grey = lambda h, w: rng.integers(0, 255, (h, w), np.uint8)
  rgb = lambda h, w: rng.integers(0, 255, (h, w, 3), np.uint8)
  add(
    "train", "XR_ELBOW", 1, 1, True, [("image1.png", grey(600, 300)), ("image2.png", rgb(40, 50))]
  )
  add("train", "XR_ELBOW", 2, 1, False, [("image1.png", grey(64, 64)), ("image2.png", None)])
  add("train", "XR_ELBOW", 3, 1, False, [("image1.png", b"\x89PNG\r\n\x1a\n truncated")])
  add("train", "XR_HAND", 4, 1, True, [("image1.png", grey(32, 32))])
  add(
    "valid",
    "XR_ELBOW",
    5,
    1,
    True,
    [("image1.png", grey(48, 40))],
    label_in_csv=0 if mislabel else None,
  )
  add("valid", "XR_ELBOW", 6, 2, False, [("image1.png", grey(30, 60))])
  if escape:
    image_rows["valid"].append("MURA-v1.1/valid/../../../etc/passwd")
  os.makedirs(base, exist_ok=True)
  for split in ("train", "valid"):
    with open(os.path.join(base, f"{split}_image_paths.csv"), "w", newline="") as f:
      csv.writer(f).writerows([r] for r in image_rows[split])
    with open(os.path.join(base, f"{split}_labeled_studies.csv"), "w", newline="") as f:
      csv.writer(f).writerows(study_rows[split])


class MuraTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.tmp = self.create_tempdir().full_path
    self.manual = os.path.join(self.tmp, "manual")
    self.data = os.path.join(self.tmp, "data")

  def test_builds_elbow_skipping_missing_and_corrupt_files(self):
    make_mura(self.manual)
    builder = datasets.build("mura/xr_elbow", self.data, self.manual)
    meta = builder.info.metadata
    self.assertEqual(meta["skipped"], {"corrupt or unreadable image": 1})
    self.assertEqual(meta["absent"], {"train": 1})
    self.assertEqual(meta["missing_splits"], [])
    self.assertEqual(meta["label_counts"]["train"], {"normal": 1, "abnormal": 2})
    self.assertEqual(meta["label_counts"]["valid"], {"normal": 1, "abnormal": 1})
    summary = datasets.summary(builder)
    self.assertIn("absent: 1 listed files (train 1); first: ", summary)
    self.assertIn("patient00002/study1_negative/image2.png", summary)

    # Readable by name from the data_dir alone, as anyone else would.
    source = tfds.data_source("mura/xr_elbow", data_dir=self.data)
    train = {
      source["train"][i]["id"].decode(): source["train"][i] for i in range(len(source["train"]))
    }
    self.assertEqual(
      sorted(train),
      [
        "train/XR_ELBOW/patient00001/study1_positive/image1",
        "train/XR_ELBOW/patient00001/study1_positive/image2",
        "train/XR_ELBOW/patient00002/study1_negative/image1",
      ],
    )
    big = train["train/XR_ELBOW/patient00001/study1_positive/image1"]
    self.assertEqual(big["image"].shape, (512, 256, 1))  # Longest side 600 -> 512, aspect kept.
    self.assertEqual(big["label"], 1)
    self.assertEqual(big["study_id"].decode(), "train/XR_ELBOW/patient00001/study1")
    self.assertEqual(big["patient_id"].decode(), "patient00001")
    self.assertEqual(big["study_type"].decode(), "XR_ELBOW")
    self.assertEqual(big["lesion_mask"].max(), 0)
    colour = train["train/XR_ELBOW/patient00001/study1_positive/image2"]["image"]
    expected = np.asarray(
      Image.open(
        os.path.join(
          self.manual, "MURA-v1.1/train/XR_ELBOW/patient00001/study1_positive/image2.png"
        )
      ).convert("L")
    )
    np.testing.assert_array_equal(colour[:, :, 0], expected)

  def test_second_build_reuses_the_dataset(self):
    make_mura(self.manual)
    datasets.build("mura/xr_elbow", self.data, self.manual)
    shutil.rmtree(self.manual)  # Nothing is read again.
    builder = datasets.build("mura/xr_elbow", self.data, self.manual)
    self.assertEqual(builder.info.splits["train"].num_examples, 3)

  def test_all_config_keeps_every_study_type(self):
    make_mura(self.manual)
    builder = datasets.build("mura/all", self.data, self.manual)
    self.assertEqual(builder.info.splits["train"].num_examples, 4)

  def test_strict_build_fails_on_corrupt_image(self):
    make_mura(self.manual)
    with self.assertRaisesRegex(UserInputError, "patient00003.*strict=True"):
      datasets.build("mura/xr_elbow", self.data, self.manual, strict=True)

  def test_a_split_without_any_image_is_left_out_and_named_when_needed(self):
    make_mura(self.manual)
    shutil.rmtree(os.path.join(self.manual, "MURA-v1.1", "train"))  # Only valid/ downloaded.
    with self.assertLogs(level="WARNING") as logs:
      builder = datasets.build("mura/xr_elbow", self.data, self.manual)
    self.assertEqual(sorted(builder.info.splits), ["valid"])
    self.assertEqual(builder.info.metadata["missing_splits"], ["train"])
    self.assertEqual(builder.info.metadata["absent"], {"train": 5})
    # One summary line for the absent files, not one per file.
    absent_lines = [line for line in logs.output if "absent" in line]
    self.assertLen(absent_lines, 1)
    self.assertIn("5 files listed", absent_lines[0])
    summary = datasets.summary(builder)
    self.assertIn("train      left out: none of its listed images is present", summary)
    data = input_pipeline.data_config()
    data.name, data.data_dir = "mura/xr_elbow", self.data
    self.assertEqual(data_splits.split_names(data), ["valid"])
    with self.assertRaisesRegex(
      UserInputError,
      "mura/xr_elbow has no split 'train' \\(none of its images were in .*it has valid",
    ):
      data_splits.split_labels(data, "train")

  def test_no_image_present_at_all_is_one_error_naming_the_folder(self):
    make_mura(self.manual)
    for split in ("train", "valid"):
      shutil.rmtree(os.path.join(self.manual, "MURA-v1.1", split))
    with self.assertRaisesRegex(
      UserInputError, "no XR_ELBOW image listed in the CSVs of .*MURA-v1.1"
    ):
      datasets.build("mura/xr_elbow", self.data, self.manual)
    # A split whose CSVs were not downloaded either is simply absent.
    make_mura(self.manual)
    for kind in ("image_paths", "labeled_studies"):
      os.remove(os.path.join(self.manual, "MURA-v1.1", f"train_{kind}.csv"))
    builder = datasets.build("mura/xr_elbow", self.data, self.manual)
    self.assertEqual(sorted(builder.info.splits), ["valid"])

  def test_label_disagreement_names_the_study(self):
    make_mura(self.manual, mislabel=True)
    with self.assertRaisesRegex(
      UserInputError, "study MURA-v1.1/valid/XR_ELBOW/patient00005/study1"
    ):
      datasets.build("mura/xr_elbow", self.data, self.manual)

  def test_path_escaping_the_root_is_rejected(self):
    make_mura(self.manual, escape=True)
    with self.assertRaisesRegex(UserInputError, r"valid_image_paths.csv, line 3: .*escapes"):
      datasets.build("mura/xr_elbow", self.data, self.manual)

  def test_missing_manual_dir_explains_where_mura_comes_from(self):
    with self.assertRaisesRegex(UserInputError, "(?s)Stanford AIMI.*study<K>_"):
      datasets.build("mura/xr_elbow", self.data, os.path.join(self.tmp, "nowhere"))
    os.makedirs(self.manual)
    with self.assertRaisesRegex(UserInputError, "(?s)does not exist or is empty.*Stanford AIMI"):
      datasets.build("mura/xr_elbow", self.data, self.manual)
    with open(os.path.join(self.manual, "notes.txt"), "w") as f:
      f.write("not MURA")
    with self.assertRaisesRegex(UserInputError, "no MURA-v1.1/ folder"):
      datasets.build("mura/xr_elbow", self.data, self.manual)

  def test_unknown_names_list_the_valid_ones(self):
    with self.assertRaisesRegex(UserInputError, "known: folder, fracatlas, mura, phantoms"):
      datasets.build("murra", self.data)
    with self.assertRaisesRegex(UserInputError, "valid: xr_elbow, xr_finger"):
      datasets.build("mura/xr_knee", self.data)

  def test_prepare_command_prints_summary_and_exits_2_on_bad_input(self):
    make_mura(self.manual)
    run = lambda *a: subprocess.run(
      [sys.executable, "-m", "alenn_jax.datasets.prepare", *a],
      capture_output=True,
      text=True,
      cwd=REPO,
      check=False,
    )
    result = run(
      "--dataset=mura/xr_elbow", f"--manual_dir={self.manual}", f"--data_dir={self.data}"
    )
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    self.assertIn("train            3 images (normal 1, abnormal 2)", result.stdout)
    self.assertIn("skipped: 1 (corrupt or unreadable image)", result.stdout)
    result = run("--dataset=mura/xr_elbow", f"--data_dir={self.tmp}/other")
    self.assertEqual(result.returncode, 2)
    self.assertIn("needs --manual_dir", result.stderr)


class FracAtlasTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    if not os.path.isdir(os.path.join(FRACATLAS, "images")):
      raise absltest.SkipTest(f"no FracAtlas sample at {FRACATLAS}")
    cls.tmp = tempfile.mkdtemp()
    manual = os.path.join(cls.tmp, "manual")
    chosen = {}
    for folder in ("Fractured", "Non_fractured"):
      names = sorted(os.listdir(os.path.join(FRACATLAS, "images", folder)))[:8]
      os.makedirs(os.path.join(manual, "images", folder))
      for name in names:
        os.symlink(
          os.path.abspath(os.path.join(FRACATLAS, "images", folder, name)),
          os.path.join(manual, "images", folder, name),
        )
      chosen[folder] = names
    # A real JPEG cut short by 20 bytes, as some FracAtlas files are: kept, counted as repaired.
    cls.truncated = chosen["Non_fractured"][0]
    path = os.path.join(manual, "images", "Non_fractured", cls.truncated)
    with open(os.path.realpath(path), "rb") as f:
      data = f.read()
    os.remove(path)
    with open(path, "wb") as f:
      f.write(data[:-20])
    shutil.copytree(os.path.join(FRACATLAS, "Annotations"), os.path.join(manual, "Annotations"))
    shutil.copy(os.path.join(FRACATLAS, "dataset.csv"), manual)
    cls.chosen = chosen
    cls.manual = manual
    cls.data = os.path.join(cls.tmp, "data")
    cls.builder = datasets.build("fracatlas/hand", cls.data, manual, max_side=256)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def _examples(self):
    source = tfds.data_source("fracatlas/hand_max256", data_dir=self.data)
    return [ex for split in source.values() for ex in (split[i] for i in range(len(split)))]

  def test_counts_and_skips(self):
    rows = fracatlas.read_table(os.path.join(self.manual, "dataset.csv"), "hand")
    present = set(self.chosen["Fractured"]) | set(self.chosen["Non_fractured"])
    hand_present = [r for r in rows if r["image_id"] in present]
    examples = self._examples()
    meta = self.builder.info.metadata
    self.assertEqual(meta["skipped"], {})
    self.assertEqual(len(examples), len(hand_present))  # Every image, the truncated one too.
    self.assertEqual(sum(meta["absent"].values()), len(rows) - len(hand_present))
    self.assertEqual(self.builder.info.full_name, "fracatlas/hand_max256/1.0.0")

  def test_truncated_jpeg_is_kept_counted_and_refused_when_strict(self):
    meta = self.builder.info.metadata
    self.assertEqual(meta["repaired"], 1)
    self.assertIn(self.truncated, meta["repaired_examples"][0])
    self.assertIn(
      f"repaired: 1 truncated images kept; first: {self.truncated}", datasets.summary(self.builder)
    )
    stem = os.path.splitext(self.truncated)[0]
    (kept,) = [ex for ex in self._examples() if ex["id"].decode() == stem]
    self.assertGreater(kept["image"].std(), 10)  # A picture, not a blank.
    with self.assertRaisesRegex(UserInputError, f"{self.truncated}.*truncated.*strict=True"):
      datasets.build(
        "fracatlas/hand", os.path.join(self.tmp, "strict"), self.manual, max_side=64, strict=True
      )

  def test_boxes_on_image_and_masks_exactly_for_fractures(self):
    for ex in self._examples():
      self.assertLessEqual(max(ex["image"].shape[:2]), 256)
      self.assertEqual(ex["image"].shape, ex["lesion_mask"].shape)
      boxes = ex["boxes"]["bbox"] if isinstance(ex["boxes"], dict) else ex["boxes"]
      boxes = np.asarray(boxes).reshape(-1, 4)
      if ex["label"] == 1:
        self.assertGreater(ex["lesion_mask"].sum(), 0, ex["id"])
        self.assertGreater(len(boxes), 0, ex["id"])
        self.assertTrue(np.all((boxes >= 0) & (boxes <= 1)))
        self.assertTrue(np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1]))
        # The mask lies inside the union of the boxes (polygons are drawn within them).
        h, w = ex["lesion_mask"].shape[:2]
        inside = np.zeros((h, w), bool)
        for ymin, xmin, ymax, xmax in boxes:
          inside[
            int(ymin * h) - 2 : int(np.ceil(ymax * h)) + 2,
            int(xmin * w) - 2 : int(np.ceil(xmax * w)) + 2,
          ] = True
        self.assertGreater((ex["lesion_mask"][:, :, 0] > 0)[inside].mean(), 0)
        self.assertEqual(((ex["lesion_mask"][:, :, 0] > 0) & ~inside).sum(), 0, ex["id"])
      else:
        self.assertEqual(ex["lesion_mask"].sum(), 0)
        self.assertEqual(len(boxes), 0)

  def test_split_is_a_stable_hash_of_the_id(self):
    self.assertEqual(common.hash_split("IMG0000019"), common.hash_split("IMG0000019"))
    splits = [common.hash_split(f"IMG{i:07d}") for i in range(4000)]
    fractions = {s: splits.count(s) / len(splits) for s in ("train", "validation", "test")}
    self.assertAlmostEqual(fractions["train"], 0.70, delta=0.03)
    self.assertAlmostEqual(fractions["validation"], 0.15, delta=0.03)

  def test_rasterize_uses_boxes_without_polygons(self):
    mask = fracatlas.rasterize(10, 20, [], [(0.1, 0.2, 0.5, 0.6)])
    self.assertEqual(mask.shape, (20, 10))
    self.assertEqual(mask[2:10, 2:6].min(), 1)
    self.assertEqual(mask[15:, :].max(), 0)


class PhantomsBuilderTest(absltest.TestCase):
  def test_masks_non_empty_exactly_for_abnormal_images(self):
    data = self.create_tempdir().full_path
    builder = datasets.build("phantoms/px64", data)
    self.assertEqual(builder.info.metadata["label_counts"]["train"], {"normal": 16, "abnormal": 16})
    source = tfds.data_source("phantoms/px64", data_dir=data)
    for split in ("train", "validation", "test"):
      for i in range(len(source[split])):
        ex = source[split][i]
        self.assertEqual(ex["image"].shape, (64, 64, 1))
        self.assertEqual(ex["lesion_mask"].sum() > 0, ex["label"] == 1, ex["id"])
        self.assertEqual(ex["lesion_kind"] == b"none", ex["label"] == 0)


if __name__ == "__main__":
  absltest.main()
