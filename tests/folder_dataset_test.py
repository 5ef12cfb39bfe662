"""The `folder` dataset: your own normal/ and abnormal/ images (PNG, JPEG, DICOM), masks, splits."""

import csv
import os
import shutil
import tempfile

import numpy as np
from absl.testing import absltest
from PIL import Image

from alenn_jax import data_splits, datasets, input_pipeline
from alenn_jax.datasets.folder import folder
from alenn_jax.errors import UserInputError
from tests import helpers


def make_tree(root: str) -> None:
  """normal/ with every image form under two patient folders, abnormal/ with two images and a
  mask for one of them."""
  helpers.make_image_folder(os.path.join(root, "normal", "p1"))
  pic = helpers.picture()
  os.makedirs(os.path.join(root, "normal", "p2"))
  Image.fromarray(pic[::-1]).save(os.path.join(root, "normal", "p2", "a.png"))
  os.makedirs(os.path.join(root, "abnormal", "p1"))
  os.makedirs(os.path.join(root, "abnormal", "p3"))
  Image.fromarray(255 - pic).save(os.path.join(root, "abnormal", "p1", "x.png"))
  helpers.write_dicom(os.path.join(root, "abnormal", "p3", "y.dcm"), pic.astype(np.uint16) * 16)
  mask = np.zeros_like(pic)
  mask[10:20, 5:15] = 255
  os.makedirs(os.path.join(root, "masks", "abnormal", "p3"))
  Image.fromarray(mask).save(os.path.join(root, "masks", "abnormal", "p3", "y.png"))


def examples(builder):
  out = {}
  for split in builder.info.splits:
    for ex in builder.as_data_source(split):
      out[ex["id"].decode()] = {**ex, "split": split}
  return out


class FolderDatasetTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.root = os.path.join(cls.tmp, "images")
    make_tree(cls.root)
    cls.builder = datasets.build("folder", os.path.join(cls.tmp, "data"), cls.root)
    cls.examples = examples(cls.builder)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_every_readable_image_once_with_its_label(self):
    expected = {
      f"normal/p1/{os.path.splitext(n)[0]}"
      for form, n in helpers.FOLDER_FORMS.items()
      if form != "corrupt"
    } | {"normal/p2/a", "abnormal/p1/x", "abnormal/p3/y"}
    self.assertEqual(set(self.examples), expected)
    for example_id, ex in self.examples.items():
      self.assertEqual(ex["label"], int(example_id.startswith("abnormal")), example_id)
    self.assertEqual(self.builder.info.metadata["skipped"], {"corrupt or unreadable image": 1})
    self.assertEqual(self.builder.info.metadata["splits_from"], "hash of the path")

  def test_every_form_of_one_picture_is_stored_alike(self):
    png = self.examples["normal/p1/grey"]["image"].astype(int)
    for name in ("mono2", "mono1", "IM0001", "colour"):
      np.testing.assert_allclose(self.examples[f"normal/p1/{name}"]["image"], png, atol=1)
    np.testing.assert_allclose(self.examples["normal/p1/photo"]["image"], png, atol=6)

  def test_masks_under_the_same_relative_name(self):
    mask = self.examples["abnormal/p3/y"]["lesion_mask"][..., 0]
    self.assertEqual(mask.sum(), 100)
    self.assertTrue(mask[10:20, 5:15].all())
    self.assertFalse(self.examples["abnormal/p1/x"]["lesion_mask"].any())

  def test_the_input_pipeline_reads_it_by_name(self):
    config = input_pipeline.data_config()
    config.name, config.manual_dir = "folder", self.root
    config.data_dir = os.path.join(self.tmp, "data")
    self.assertEqual(sorted(data_splits.split_names(config)), sorted(set(self.builder.info.splits)))
    for split in self.builder.info.splits:  # A folder records no lesion kinds.
      self.assertIsNone(data_splits.split_lesion_kinds(config, split))

  def test_another_folder_under_the_same_tag_is_refused(self):
    other = os.path.join(self.tmp, "other")
    make_tree(other)
    with self.assertRaisesRegex(UserInputError, "was built from .*give this folder its own tag"):
      datasets.build("folder", os.path.join(self.tmp, "data"), other)
    builder = datasets.build("folder/other", os.path.join(self.tmp, "data"), other)
    self.assertEqual(builder.info.metadata["manual_dir"], os.path.abspath(other))

  def test_a_changed_folder_is_refused(self):
    root = os.path.join(self.tmp, "changing")
    make_tree(root)
    data = os.path.join(self.tmp, "data_changing")
    datasets.build("folder", data, root)
    Image.fromarray(helpers.picture()).save(os.path.join(root, "normal", "new.png"))
    with self.assertRaisesRegex(UserInputError, "changed since folder/default was built"):
      datasets.build("folder", data, root)

  def test_splits_csv_fixes_the_splits(self):
    root = os.path.join(self.tmp, "fixed")
    make_tree(root)
    rows = [
      ("normal/p1/grey.png", "train"),
      ("normal/p2/a.png", "train"),
      ("abnormal/p1/x.png", "test"),
      ("abnormal/p3/y.dcm", "validation"),
      ("normal/gone.png", "test"),
    ]
    with open(os.path.join(root, "splits.csv"), "w", newline="") as f:
      csv.writer(f).writerows([("path", "split"), *rows])
    builder = datasets.build("folder/fixed", os.path.join(self.tmp, "data"), root)
    got = {i: ex["split"] for i, ex in examples(builder).items()}
    want = {os.path.splitext(p)[0]: s for p, s in rows if "gone" not in p}
    self.assertEqual(got, want)
    metadata = builder.info.metadata
    self.assertEqual(metadata["absent"], {"test": 1})
    self.assertEqual(metadata["skipped"]["not listed in splits.csv"], 6)
    self.assertEqual(metadata["splits_from"], "splits.csv")

  def test_group_by_parent_keeps_a_patient_in_one_split(self):
    root = os.path.join(self.tmp, "grouped")
    make_tree(root)
    builder = datasets.build("folder/g", os.path.join(self.tmp, "data"), root, group_by="parent")
    self.assertEqual(builder.builder_config.name, "g_byparent")
    by_patient = {}
    for example_id, ex in examples(builder).items():
      by_patient.setdefault(example_id.split("/")[1], set()).add(ex["split"])
    self.assertEqual(set(by_patient), {"p1", "p2", "p3"})
    for patient, splits in by_patient.items():
      self.assertLen(splits, 1, patient)  # normal/p1 and abnormal/p1 share one.

  def test_bad_folders(self):
    data = os.path.join(self.tmp, "data_bad")
    empty = os.path.join(self.tmp, "empty")
    os.makedirs(os.path.join(empty, "photos"))
    with open(os.path.join(empty, "photos", "a.txt"), "w") as f:
      f.write("x")
    with self.assertRaisesRegex(UserInputError, "neither normal/ nor abnormal/"):
      datasets.build("folder/e", data, empty)
    os.makedirs(os.path.join(empty, "normal"))
    with self.assertRaisesRegex(UserInputError, "no PNG, JPEG or DICOM files"):
      datasets.build("folder/e", data, empty)
    with self.assertRaisesRegex(UserInputError, "tag is lower-case"):
      datasets.build("folder/My Data", data, self.root)
    with self.assertRaisesRegex(UserInputError, "group_by='patient'"):
      datasets.build("folder/e", data, self.root, group_by="patient")
    bad_csv = os.path.join(self.tmp, "bad_csv")
    make_tree(bad_csv)
    with open(os.path.join(bad_csv, "splits.csv"), "w") as f:
      f.write("file,fold\na.png,1\n")
    with self.assertRaisesRegex(UserInputError, "needs a header 'path,split'"):
      datasets.build("folder/b", data, bad_csv)
    self.assertFalse(datasets.get_builder("folder/b", data).is_prepared())

  def test_group_key(self):
    self.assertEqual(folder.group_key("normal/p1/s2/a.png", "parent"), "p1/s2")
    self.assertEqual(folder.group_key("normal/a.png", "parent"), "normal/a.png")
    self.assertEqual(folder.group_key("normal/p1/a.png", "path"), "normal/p1/a.png")


if __name__ == "__main__":
  absltest.main()
