"""The input pipeline on a built phantoms dataset, with 8 emulated devices."""

import shutil
import tempfile

import jax
import numpy as np
from absl.testing import absltest

from alenn_jax import data_splits, datasets, input_pipeline, sharding
from alenn_jax.errors import UserInputError
from tests import helpers


def ids(batch):
  return [str(i) for i in batch["id"]]


class LetterboxTest(absltest.TestCase):
  def test_landscape_image_is_centred_with_aspect_kept(self):
    image = np.full((20, 40), 200, np.uint8)
    out, box = input_pipeline.letterbox(image, 32)
    self.assertEqual(out.shape, (32, 32))
    self.assertEqual(box, (8, 0, 16, 32))
    self.assertTrue(np.all(out[8:24] == 200))
    self.assertTrue(np.all(out[:8] == 0) and np.all(out[24:] == 0))

  def test_augmentation_moves_mask_with_image(self):
    rng = np.random.default_rng(0)
    image = np.zeros((48, 48), np.uint8)
    image[10:20, 5:30] = 255
    example = {
      "image": image[:, :, None],
      "lesion_mask": (image > 0).astype(np.uint8)[:, :, None],
      "label": 1,
      "id": b"x",
    }
    config = input_pipeline.data_config().augment
    config.brightness = 0.0
    config.contrast = 0.0
    preprocess = input_pipeline._Preprocess(48, config)
    for _ in range(5):
      out = preprocess(example, rng)
      bright = out["image"][:, :, 0] > 0.0
      mask = out["lesion_mask"][:, :, 0] > 0
      iou = (bright & mask).sum() / (bright | mask).sum()
      self.assertGreater(iou, 0.85)
      self.assertEqual(out["id"], "x")

  def test_a_structure_is_augmented_exactly_as_its_image(self):
    rng = np.random.default_rng(1)
    image = np.zeros((48, 48), np.uint8)
    image[8:40, 14:30] = np.linspace(60, 250, 16).astype(np.uint8)
    example = {
      "image": image[:, :, None],
      "lesion_mask": np.zeros((48, 48, 1), np.uint8),
      "label": 0,
      "id": b"x",
    }
    # A structure equal to its own image must come out as the augmented image (rotation, zoom,
    # flip, contrast, brightness) up to the image's uint8 rounding.
    preprocess = input_pipeline._Preprocess(
      48, input_pipeline.data_config().augment, structures={"x": image / 255.0}
    )
    for _ in range(5):
      out = preprocess(example, rng)
      self.assertEqual(out["structure"].shape, (48, 48, 1))
      np.testing.assert_allclose(out["structure"], out["image"], atol=0.012)
    with self.assertRaisesRegex(UserInputError, "no RTV structure for example 'x'"):
      input_pipeline._Preprocess(48, None, structures={})(example, rng)


class PipelineTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = tempfile.mkdtemp()
    datasets.build("phantoms/px64", cls.data_dir)
    cls.mesh = sharding.make_mesh()

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.data_dir, ignore_errors=True)
    super().tearDownClass()

  def config(self, **overrides):
    config = input_pipeline.data_config()
    config.name = "phantoms/px64"
    config.data_dir = self.data_dir
    config.image_size = 48
    config.batch_size = 8
    config.update(overrides)
    return config

  def test_train_batches_are_global_sharded_arrays_in_range(self):
    batch = next(input_pipeline.train_iterator(self.config(), self.mesh))
    self.assertEqual(jax.device_count(), 8)
    self.assertEqual(batch["image"].shape, (8, 48, 48, 1))
    self.assertEqual(batch["image"].sharding, sharding.batch_sharding(self.mesh))
    self.assertLen(batch["image"].addressable_shards, 8)
    image = np.asarray(batch["image"])
    self.assertGreaterEqual(image.min(), -1.0)
    self.assertLessEqual(image.max(), 1.0)
    self.assertEqual(np.asarray(batch["weight"]).tolist(), [1.0] * 8)
    self.assertLen(batch["id"], 8)

  def test_training_crops_cut_image_and_masks_alike(self):
    config = self.config(crop=16)
    config.augment.rotate_deg, config.augment.scale = 0.0, 0.0
    config.augment.brightness, config.augment.contrast, config.augment.flip = 0.0, 0.0, False
    batch = next(input_pipeline.train_iterator(config, self.mesh))
    self.assertEqual(batch["image"].shape, (8, 16, 16, 1))
    self.assertEqual(batch["lesion_mask"].shape, (8, 16, 16, 1))
    # Each crop is a window of the whole (unaugmented) letterboxed image.
    whole = {
      ex_id: image
      for b in input_pipeline.eval_iterator(self.config(), self.mesh, "train")
      for ex_id, image in zip(ids(b), np.asarray(b["image"]), strict=True)
    }
    for ex_id, crop in zip(ids(batch), np.asarray(batch["image"]), strict=True):
      full = whole[ex_id][..., 0]
      found = any(
        np.allclose(full[y : y + 16, x : x + 16], crop[..., 0], atol=1e-5)
        for y in range(33)
        for x in range(33)
      )
      self.assertTrue(found, ex_id)
    boxes = np.asarray(batch["valid_box"])
    self.assertTrue(np.all((boxes[:, 2:] >= 0) & (boxes[:, :2] + boxes[:, 2:] <= 16)))

  def test_per_image_structures_are_cropped_and_sharded_with_their_images(self):
    config = self.config(crop=16)
    # Each example's "structure" is its own letterboxed image: after augmentation and cropping
    # it must still be the image.
    structures = {
      ex_id: (image[..., 0] + 1.0) / 2.0
      for b in input_pipeline.eval_iterator(self.config(), self.mesh, "train")
      for ex_id, image in zip(ids(b), np.asarray(b["image"]), strict=True)
    }
    batch = next(input_pipeline.train_iterator(config, self.mesh, structures=structures))
    self.assertEqual(batch["structure"].shape, (8, 16, 16, 1))
    self.assertEqual(batch["structure"].sharding, sharding.batch_sharding(self.mesh))
    np.testing.assert_allclose(
      np.asarray(batch["structure"]), np.asarray(batch["image"]), atol=0.012
    )

  def test_labels_keep_only_normals(self):
    iterator = input_pipeline.train_iterator(self.config(labels=(0,)), self.mesh)
    for _ in range(3):
      batch = next(iterator)
      self.assertEqual(np.asarray(batch["label"]).tolist(), [0] * 8)
      self.assertTrue(all(i.endswith("normal") for i in ids(batch)))

  def test_same_seed_same_batches_and_other_seed_differs(self):
    a = input_pipeline.train_iterator(self.config(), self.mesh)
    b = input_pipeline.train_iterator(self.config(), self.mesh)
    c = input_pipeline.train_iterator(self.config(seed=1), self.mesh)
    for _ in range(3):
      ba, bb, bc = next(a), next(b), next(c)
      np.testing.assert_array_equal(np.asarray(ba["image"]), np.asarray(bb["image"]))
      self.assertEqual(ids(ba), ids(bb))
    self.assertNotEqual(ids(ba), ids(bc))

  def test_restored_state_resumes_the_same_stream(self):
    config = self.config()
    reference = input_pipeline.train_iterator(config, self.mesh)
    expected = [next(reference) for _ in range(5)]  # Crosses an epoch boundary (32 examples).
    resumed = input_pipeline.train_iterator(config, self.mesh)
    next(resumed), next(resumed)
    state = resumed.get_state()
    fresh = input_pipeline.train_iterator(config, self.mesh)
    fresh.set_state(state)
    for want in expected[2:]:
      got = next(fresh)
      self.assertEqual(ids(got), ids(want))
      np.testing.assert_array_equal(np.asarray(got["image"]), np.asarray(want["image"]))

  def test_examples_decoded_once_give_the_same_batches(self):
    # The train split holds 32 examples: 10 batches of 8 are two and a half epochs, so most
    # examples come back from the kept letterboxed squares. A budget of 10 KiB keeps two of the
    # 48-px examples (4.5 KiB each, image and mask): the rest are decoded on every visit.
    structures = {
      ex_id: (image[..., 0] + 1.0) / 2.0
      for b in input_pipeline.eval_iterator(self.config(), self.mesh, "train")
      for ex_id, image in zip(ids(b), np.asarray(b["image"]), strict=True)
    }
    streams = [
      input_pipeline.train_iterator(self.config(cache_mb=mb), self.mesh, structures=structures)
      for mb in (0, 10 / 1024, 512)
    ]
    for _ in range(10):
      plain, *kept = [next(s) for s in streams]
      for batch in kept:
        self.assertEqual(ids(batch), ids(plain))
        for key in ("image", "lesion_mask", "valid_box", "label", "structure"):
          np.testing.assert_array_equal(np.asarray(batch[key]), np.asarray(plain[key]), key)

  def test_decoded_examples_are_kept_within_the_budget(self):
    image = np.full((40, 20, 1), 200, np.uint8)
    mask = np.zeros((40, 20, 1), np.uint8)
    reads = []

    class Source:
      def __len__(self):
        return 5

      def __getitem__(self, i):
        reads.append(i)
        return {"id": f"ex{i}", "label": 0, "image": image, "lesion_mask": mask}

    # Two 16-px examples (256 bytes of image and 256 of mask each) fit in 1,100 bytes.
    source = input_pipeline._DecodedOnce(Source(), 16, 1100)
    for _ in range(3):
      for i in range(5):
        square, _, box = source[i][input_pipeline.LETTERBOXED]
        self.assertEqual(square.shape, (16, 16))
        self.assertEqual(tuple(box), (0, 4, 16, 8))
    self.assertEqual([reads.count(i) for i in range(5)], [1, 1, 3, 3, 3])

  def test_eval_visits_every_example_once_padding_the_last_batch(self):
    config = self.config(batch_size=24)
    iterator = input_pipeline.eval_iterator(config, self.mesh, "validation")
    seen, weights = [], []
    for batch in iterator:
      self.assertEqual(batch["image"].shape[0], 24)
      w = np.asarray(batch["weight"])
      seen += [i for i, wi in zip(ids(batch), w, strict=True) if wi > 0]
      weights += w.tolist()
    self.assertEqual(iterator.num_batches, 1)
    self.assertLen(seen, 16)
    self.assertLen(set(seen), 16)
    self.assertEqual(sum(weights), 16)
    abnormal = input_pipeline.eval_iterator(config, self.mesh, "test", labels=(1,))
    seen = [i for b in abnormal for i, w in zip(ids(b), np.asarray(b["weight"]), strict=True) if w]
    self.assertLen(seen, 8)
    self.assertFalse(any(i.endswith("normal") for i in seen))

  def test_eval_is_not_augmented_and_keeps_the_box(self):
    batch = next(input_pipeline.eval_iterator(self.config(), self.mesh, "validation"))
    again = next(input_pipeline.eval_iterator(self.config(seed=5), self.mesh, "validation"))
    np.testing.assert_array_equal(np.asarray(batch["image"]), np.asarray(again["image"]))
    np.testing.assert_array_equal(np.asarray(batch["valid_box"])[0], [0, 0, 48, 48])

  def test_lesion_kinds_of_every_example_where_the_data_records_them(self):
    kinds = data_splits.split_lesion_kinds(self.config(), "test")
    labels = data_splits.split_labels(self.config(), "test")
    self.assertEqual(set(kinds), set(labels))
    self.assertGreater(len(set(kinds.values())), 2)
    for example_id, kind in kinds.items():
      self.assertEqual(kind == "none", labels[example_id] == 0, example_id)
      self.assertTrue(example_id.endswith("normal" if kind == "none" else kind), example_id)

  def test_a_held_out_fold_is_left_out_of_train_only(self):
    folds = data_splits.split_folds(self.config(folds=3), "train")
    self.assertEqual(sorted(set(folds.values())), [0, 1, 2])
    for k in range(3):
      config = self.config(folds=3, holdout_fold=k)
      train = data_splits.split_labels(config, "train")
      self.assertEqual(set(train), {i for i, f in folds.items() if f != k})
      seen = set()
      iterator = input_pipeline.train_iterator(config, self.mesh)
      for _ in range(8):
        seen.update(ids(next(iterator)))
      self.assertEmpty({i for i in seen if folds[i] == k})
      # Other splits are whole; mapping one fold of a split (no fold held out) reads that fold.
      self.assertEqual(
        data_splits.split_labels(config, "test"),
        data_splits.split_labels(self.config(), "test"),
      )
      mapped = [
        i
        for b in input_pipeline.eval_iterator(
          self.config(folds=3), self.mesh, "train", labels=(0, 1), fold=k
        )
        for i in ids(b)
        if i
      ]
      self.assertEqual(sorted(mapped), sorted(i for i, f in folds.items() if f == k))

  def test_bad_config_is_a_clear_error(self):
    with self.assertRaisesRegex(
      UserInputError, "config.data.batch_size=12 is not divisible by the 8"
    ):
      input_pipeline.train_iterator(self.config(batch_size=12), self.mesh)
    with self.assertRaisesRegex(UserInputError, "no split 'valid'"):
      input_pipeline.eval_iterator(self.config(), self.mesh, "valid")
    with self.assertRaisesRegex(UserInputError, r"labels=\(2,\) selects no example"):
      input_pipeline.train_iterator(self.config(labels=(2,)), self.mesh)


if __name__ == "__main__":
  absltest.main()


class SelectionSplitTest(absltest.TestCase):
  """MURA has only train and valid: `selection` is carved from train by patient."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    helpers.make_mura_cohort(f"{cls.tmp}/manual")
    datasets.build("mura/xr_elbow", f"{cls.tmp}/data", f"{cls.tmp}/manual")

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def config(self, **fields):
    config = input_pipeline.data_config()
    config.name, config.data_dir = "mura/xr_elbow", f"{self.tmp}/data"
    config.update(fields)
    return config

  def test_selection_is_a_patient_disjoint_part_of_train(self):
    config = self.config()
    self.assertEqual(data_splits.split_names(config), ["train", "selection", "valid"])
    train = data_splits.split_labels(config, "train")
    selection = data_splits.split_labels(config, "selection")
    whole = data_splits.split_labels(self.config(paper_selection=True), "train")
    self.assertEqual(set(train) | set(selection), set(whole))
    patient = lambda i: i.split("/")[2]  # train/XR_ELBOW/patient00042/study1_positive/image1
    self.assertEmpty({patient(i) for i in train} & {patient(i) for i in selection})
    self.assertEqual(sorted(set(selection.values())), [0, 1])
    self.assertEqual(
      {patient(i) for i in selection},
      {p for p in map(patient, whole) if data_splits.in_selection(p, 0.1)},
    )
    # Batches read the carved rows only.
    mesh = sharding.make_mesh()
    seen = [i for b in input_pipeline.eval_iterator(config, mesh, "selection") for i in ids(b)]
    self.assertEqual(sorted(filter(None, seen)), sorted(selection))

  def test_eval_split_is_resolved_from_the_dataset(self):
    config = self.config()  # eval_split "validation", which MURA does not have.
    self.assertEqual(data_splits.scored_split(config), "valid")
    self.assertEqual(data_splits.resolve_eval_split(config), "selection")
    self.assertEqual(config.eval_split, "selection")
    # Asking to select on the scored split still selects on the carved one...
    self.assertEqual(data_splits.resolve_eval_split(self.config(eval_split="valid")), "selection")
    # ...unless the paper's protocol is asked for: nothing carved, selected on valid.
    paper = self.config(paper_selection=True)
    self.assertEqual(data_splits.split_names(paper), ["train", "valid"])
    self.assertEqual(data_splits.resolve_eval_split(paper), "valid")

  def test_a_carve_without_both_classes_is_refused(self):
    config = self.config(selection_fraction=0.01)
    with self.assertRaisesRegex(
      UserInputError, r"config.data.selection_fraction=0.01: .* 0 normal and 0 abnormal"
    ):
      data_splits.resolve_eval_split(config)

  def test_datasets_with_a_validation_split_carve_nothing(self):
    self.assertFalse(data_splits.carves_selection(self.config(), ["train", "validation", "test"]))
    self.assertTrue(data_splits.carves_selection(self.config(), ["train", "valid"]))
    # A split of its own named as the selection split: nothing carved.
    val = self.config(eval_split="val")
    self.assertFalse(data_splits.carves_selection(val, ["train", "val", "test"]))
    self.assertTrue(data_splits.carves_selection(self.config(), ["train", "val", "test"]))
