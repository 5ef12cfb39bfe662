"""The one-command pipeline: the :smoke config end to end, then again to prove nothing reruns; the
same as two processes (stopped by SIGTERM and resumed) against the one-process run."""

import csv
import glob
import math
import os
import shutil
import signal
import tempfile

import jax
import numpy as np
from absl.testing import absltest
from PIL import Image

from alenn_jax import (
  additions,
  checkpointing,
  data_splits,
  datasets,
  input_pipeline,
  le_maps,
  pipeline,
  pipeline_fields,
  predictions,
  stats,
)
from alenn_jax.classification import image_lists, predict
from alenn_jax.errors import UserInputError
from alenn_jax.reporting import lesion_scores, tables
from configs import pipeline as pipeline_config
from configs import predict as predict_config
from tests import helpers


def smoke_config(data_dir: str):
  config = pipeline_config.get_config("smoke")
  config.data.data_dir = data_dir
  config.backbones = ("resnet50", "densenet121")  # The other two run in models_test.
  return config


def mtimes(root: str) -> dict[str, float]:
  out = {}
  for directory, _, files in os.walk(root):
    for name in files:
      path = os.path.join(directory, name)
      out[path] = os.path.getmtime(path)
  return out


class PipelineTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.data_dir = os.path.join(cls.tmp, "data")
    cls.workdir = os.path.join(cls.tmp, "w")
    cls.result = pipeline.run(smoke_config(cls.data_dir), cls.workdir)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_every_report_file_exists_with_finite_numbers(self):
    report = os.path.join(self.workdir, "report")
    for name in (
      "report.md",
      "table1.csv",
      "table2.csv",
      "table2_le_effect.csv",
      "localization.csv",
      lesion_scores.BY_KIND_CSV,
      "fig3_normal.png",
      "fig3_abnormal.png",
      "fig4_roc.png",
    ):
      self.assertGreater(os.path.getsize(os.path.join(report, name)), 0, name)
    scored = ("table1.csv", "table2.csv", "table2_le_effect.csv", "localization.csv")
    for name in (*scored, lesion_scores.BY_KIND_CSV):
      with open(os.path.join(report, name)) as f:
        rows = list(csv.DictReader(f))
      self.assertNotEmpty(rows, name)
      for row in rows:
        for key, value in row.items():
          try:
            number = float(value)
          except ValueError:
            continue  # A label column.
          self.assertTrue(math.isfinite(number), f"{name}: {key}={value}")
    with open(os.path.join(report, "table2.csv")) as f:
      rows = list(csv.DictReader(f))
    with open(os.path.join(report, "table2_le_effect.csv")) as f:
      effect = list(csv.DictReader(f))
    self.assertEqual(list(effect[0]), list(tables.LE_EFFECT_COLUMNS))
    self.assertEqual(
      [(r["backbone"], r["metric"]) for r in effect if r["metric"] in ("accuracy", "auc")],
      [(b, m) for b in ("resnet50", "densenet121") for m in ("accuracy", "auc")],
    )
    for r in effect:
      self.assertLessEqual(float(r["ci_low"]), float(r["ci_high"]))
      self.assertTrue(0 <= float(r["p"]) <= 1)
      self.assertEqual(r["test"], "DeLong" if r["metric"] == "auc" else "bootstrap")
    with open(os.path.join(report, "report.md")) as f:
      self.assertIn("**ResNet-50**, LE by `enhance`: AUC", f.read())
    self.assertEqual(
      [(r["Backbone"], r["With LE"]) for r in rows],
      [
        ("ResNet-50", "no"),
        ("ResNet-50", "yes (enhance)"),
        ("DenseNet-121", "no"),
        ("DenseNet-121", "yes (enhance)"),
      ],
    )
    with open(self.result["report"]) as f:
      text = f.read()
    for needle in (
      "## Table 1",
      "## Table 2",
      "## Lesion localization",
      "fig3_abnormal.png",
      "fig4_roc.png",
      "| train |",
      "stage 2b: densenet121, fusion enhance",
      # The smoke preset's additions, the paper's tables beside ours.
      "- Method: the paper's text with these additions on: reflected border, letterbox fill, "
      "highpass, shift, smooth, augmentation (",
      "| normal | 34.7566 | 0.9708 |",
      "**In the paper's convention.**",
      "| VGG-19 | yes | 0.8559 | 0.8111 | 0.9319 | 0.8673 | 0.7113 |",
    ):
      self.assertIn(needle, text)
    # Normal as positive: the same predictions, precision and recall of the other class.
    with open(os.path.join(report, tables.TABLE2_NORMAL_CSV)) as f:
      normal = list(csv.DictReader(f))
    for a, b in zip(rows, normal, strict=True):
      self.assertEqual((a["Accuracy"], a["Kappa"], a["AUC"]), (b["Accuracy"], b["Kappa"], b["AUC"]))
      self.assertEqual(a["Specificity"], b["Recall"])

  def test_more_folds_than_normals_is_refused(self):
    config = smoke_config(self.data_dir)
    config.localize.folds = 10_000
    with self.assertRaisesRegex(UserInputError, r"config.localize.folds=10000 is more than the"):
      pipeline.resolve(config)

  def test_a_field_the_pipeline_sets_is_refused_with_its_ruler(self):
    for path, value, pattern in (
      (
        "stage1.data.name",
        "phantoms/px128",
        r"config.stage1.data.name='phantoms/px128': in a "
        r"pipeline config config.data.name sets it; set config.data.name instead",
      ),
      ("stage2.resnet50.fusion", "enhance", r"config.fusions sets it"),
      ("localize.init_from", "/elsewhere", r"the pipeline's workdir \(W/stage1\) sets it; leave"),
    ):
      config = smoke_config(self.data_dir)
      block, key = pipeline_fields.parent(config, path)
      block[key] = value
      with self.assertRaisesRegex(UserInputError, pattern):
        pipeline.resolve(config)
    resolved = pipeline.resolve(smoke_config(self.data_dir))  # Filled in, not refused.
    self.assertEqual(resolved.stage1.data.name, "phantoms/px64")
    self.assertEqual(resolved.stage2.resnet50.eval.split, "test")

  def test_paper_preset_resolves_with_every_addition_off(self):
    config = pipeline_config.get_config("paper_small")
    config.data.name, config.data.data_dir = "phantoms/px64", self.data_dir
    resolved = pipeline.resolve(config)
    self.assertEqual(additions.on(resolved), [])
    # A dataset with its own validation split selects there, carve or not.
    self.assertEqual((resolved.data.eval_split, resolved.test_split), ("validation", "test"))
    self.assertEqual(resolved.stage1.masks.weights[3], 0.0)  # No grid masks.
    self.assertEqual(resolved.localize.method, "per_window")

  def test_rerun_recomputes_nothing(self):
    before = mtimes(self.workdir)
    again = pipeline.run(smoke_config(self.data_dir), self.workdir)
    after = mtimes(self.workdir)
    self.assertEqual(sorted(p for p in after if before.get(p) != after[p]), [])
    self.assertEqual(again["timings"], self.result["timings"])

  def test_interrupted_stage_is_resumed_and_the_others_kept(self):
    workdir = os.path.join(self.tmp, "copy")
    shutil.copytree(self.workdir, workdir)
    # The last classifier died after its last checkpoint, before it was marked done.
    stage = pipeline.classifier_dir(workdir, "densenet121", "enhance")
    os.remove(os.path.join(stage, "done.json"))
    os.remove(os.path.join(workdir, "report", "done.json"))
    kept = {
      p: t
      for p, t in mtimes(workdir).items()
      if not p.startswith((stage, os.path.join(workdir, "report")))
    }
    pipeline.run(smoke_config(self.data_dir), workdir)
    self.assertTrue(os.path.exists(os.path.join(stage, "done.json")))
    now = mtimes(workdir)
    self.assertEqual({p: now[p] for p in kept}, kept)

  # --- Predicting new images with the trained pipeline (configs/predict.py).

  def predict(self, out: str, images: str, from_workdir: str | None = None):
    config = predict_config.get_config()
    config.from_workdir = from_workdir or self.workdir
    config.images = images
    return predict.run(config, out)

  def new_images(self) -> tuple[str, list[str]]:
    """A folder with one picture in every form (and a corrupt file), and 6 test-split phantoms
    as PNGs: (folder, the phantoms' ids)."""
    root = os.path.join(self.tmp, "new_images")
    if not os.path.isdir(root):
      helpers.make_image_folder(os.path.join(root, "forms"))
      source = datasets.get_builder("phantoms/px64", self.data_dir).as_data_source("test")
      for i in range(6):
        example = source[i]
        name = example["id"].decode().replace("/", "_")
        Image.fromarray(example["image"][..., 0]).save(os.path.join(root, f"{name}.png"))
    ids = sorted(os.path.splitext(f)[0].replace("_", "/", 1) for f in os.listdir(root) if "." in f)
    return root, ids

  def test_predict_every_image_form_as_the_classifiers_own_evaluation_does(self):
    root, ids = self.new_images()
    out = os.path.join(self.tmp, "predicted")
    result = self.predict(out, root)
    with open(os.path.join(out, "predictions.csv")) as f:
      rows = {os.path.relpath(r["path"], root): r for r in csv.DictReader(f)}
    forms = {form: f"forms/{name}" for form, name in helpers.FOLDER_FORMS.items()}
    self.assertEqual(len(rows), 12)  # 6 forms (not the corrupt file) and 6 phantoms.
    self.assertEqual(result["skipped"], 1)
    with open(os.path.join(out, "skipped.csv")) as f:
      (skipped,) = list(csv.DictReader(f))
    self.assertEqual(skipped["path"], os.path.join(root, forms["corrupt"]))
    self.assertIn("cannot read image", skipped["reason"])
    columns = [c for c in result["columns"] if c.startswith("p_abnormal_")]
    self.assertEqual(
      columns,
      [f"p_abnormal_{b}_{f}" for b in ("densenet121", "resnet50") for f in ("enhance", "none")],
    )
    # The two DICOMs (one stored inverted) are the same picture: same maps, same probabilities.
    mono1, mono2 = rows[forms["dicom1"]], rows[forms["dicom2"]]
    for column in [*columns, "le_max", "le_area"]:
      self.assertEqual(mono1[column], mono2[column], column)
    d1, d2 = (
      np.load(
        os.path.join(
          out, "maps", image_lists.output_name(os.path.join(root, forms[k]), root) + "_d.npy"
        )
      )
      for k in ("dicom1", "dicom2")
    )
    np.testing.assert_array_equal(d1, d2)
    self.assertEqual(d1.shape, (48, 48))  # D at the file's own resolution.
    # The phantoms: what each classifier's --mode=eval stored for the same images.
    for column in columns:
      backbone, fusion = column[len("p_abnormal_") :].rsplit("_", 1)
      stage = pipeline.classifier_dir(self.workdir, backbone, fusion)
      (stored,) = glob.glob(os.path.join(stage, "**", "predictions_test.csv"), recursive=True)
      with open(stored) as f:
        expected = {r["id"]: float(r["prob_abnormal"]) for r in csv.DictReader(f)}
      for example_id in ids:
        got = float(rows[example_id.replace("/", "_") + ".png"][column])
        self.assertAlmostEqual(got, expected[example_id], delta=1e-3, msg=(column, example_id))

  def test_predict_resumes_and_redoes_only_what_was_deleted(self):
    root, _ = self.new_images()
    out = os.path.join(self.tmp, "resumed")
    self.predict(out, root)
    with open(os.path.join(out, "predictions.csv")) as f:
      first = f.read()
    maps = os.path.join(out, "maps")
    gone = os.path.join(maps, "forms__grey_png.png")
    os.remove(gone)
    os.remove(os.path.join(out, "predictions.csv"))
    before = {p: t for p, t in mtimes(maps).items()}
    self.predict(out, root)
    after = mtimes(maps)
    self.assertEqual(
      sorted(p for p in after if before.get(p) != after[p]),
      sorted([gone, os.path.join(maps, "forms__grey_png_d.npy")]),
    )
    with open(os.path.join(out, "predictions.csv")) as f:
      self.assertEqual(f.read(), first)

  def test_predict_bad_input(self):
    root, _ = self.new_images()
    out = os.path.join(self.tmp, "bad")
    empty = os.path.join(self.tmp, "untrained")
    os.makedirs(empty, exist_ok=True)
    with self.assertRaisesRegex(UserInputError, "holds no trained pipeline.*configs/pipeline.py"):
      self.predict(out, root, from_workdir=empty)
    half = os.path.join(self.tmp, "half")
    os.makedirs(os.path.join(half, "stage1"), exist_ok=True)
    shutil.copy(os.path.join(self.workdir, "config.json"), half)
    with self.assertRaisesRegex(UserInputError, "is missing its LE maps .* and its classifiers"):
      self.predict(out, root, from_workdir=half)
    with self.assertRaisesRegex(UserInputError, "matches no image"):
      self.predict(out, os.path.join(root, "*.tiff"))
    not_image = os.path.join(self.tmp, "report.dcm")
    helpers.write_dicom(not_image, None, pixels=False)
    with self.assertRaisesRegex(UserInputError, "none of the 1 files .* could be read"):
      self.predict(out, not_image)
    with open(os.path.join(out, "skipped.csv")) as f:
      self.assertIn("holds no image", f.read())
    self.assertEqual(sorted(os.listdir(out)), [".parts", "skipped.csv"])  # No predictions.csv.

  # --- The same pipeline as two processes of 4 CPU devices (--multihost, JAX's CPU collectives).

  @helpers.slow
  def test_two_processes_stopped_and_resumed_end_as_one_process_with_8_devices(self):
    """Against this class's run (one process, 8 devices): the resnet50 stages of the same config,
    with LE (the classifier that reads the maps), stopped by SIGTERM to both processes during its
    training and resumed."""
    multi = os.path.join(self.tmp, "multi")
    args = [
      "--config=configs/pipeline.py:smoke",
      f"--workdir={multi}",
      f"--config.data.data_dir={self.data_dir}",
      "--config.backbones=('resnet50',)",
      "--config.fusions=('enhance',)",
      "--alsologtostderr",
    ]
    procs = helpers.start_processes([args, args], helpers.free_port())
    classifier_started, log = False, []
    for line in procs[0].stderr:
      log.append(line)
      classifier_started |= "stage 2b" in line and "starting" in line
      if classifier_started and "] [1] train/" in line:
        for p in procs:
          p.send_signal(signal.SIGTERM)
        break
    errors = [p.communicate(timeout=900)[1] for p in procs]
    errors[0] = "".join(log) + errors[0]
    self.assertIn("JAX process 1/2, 4 local / 8 global devices", errors[1])
    for p, err in zip(procs, errors, strict=True):
      self.assertEqual(p.returncode, 128 + signal.SIGTERM, err[-3000:])
    # Both stop at the step JAX's preemption sync point agreed on.
    stopped = {err.split("stopped by SIGTERM at step ")[1].split(";")[0] for err in errors}
    self.assertLen(stopped, 1)

    procs = helpers.start_processes([args, args], helpers.free_port())
    errors = [p.communicate(timeout=900)[1] for p in procs]
    for p, err in zip(procs, errors, strict=True):
      self.assertEqual(p.returncode, 0, err[-3000:])
    self.assertIn("stage 2a: LE maps: already done, skipped", errors[0])
    self.assertIn(f"resumed from step {stopped.pop()}", errors[0])

    # Stage 1: the same batches and masks; Adam turns rounding noise in near-zero gradients
    # (biases before instance norm) into steps of about the learning rate, so the parameters
    # agree to the learning rate per step, not to rounding.
    gen_s, gen_t, step = helpers.stage1_generator(os.path.join(multi, "stage1"))
    ref_s, ref_t, ref_step = helpers.stage1_generator(os.path.join(self.workdir, "stage1"))
    self.assertEqual(step, ref_step)
    bound = 2 * smoke_config(self.data_dir).stage1.optimizer.learning_rate * step
    for a, b in zip(jax.tree.leaves((gen_s, gen_t)), jax.tree.leaves((ref_s, ref_t)), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=bound)

    # The LE maps: every image of every split once, equal within 1e-3 (stored as float16).
    for split in ("train", "validation", "test"):
      got = le_maps.read_difference_maps(os.path.join(multi, "localize"), split)
      want = le_maps.read_difference_maps(os.path.join(self.workdir, "localize"), split)
      self.assertEqual(sorted(got), sorted(want))
      for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-3, err_msg=f"{split} {key}")
    self.assertAlmostEqual(
      le_maps.read_scale(os.path.join(multi, "localize")),
      le_maps.read_scale(os.path.join(self.workdir, "localize")),
      delta=1e-3,
    )

    # The classifier, stopped and resumed: the same test predictions within 1e-4.
    got, want = (
      predictions.read_predictions(
        predictions.predictions_path(pipeline.classifier_dir(w, "resnet50", "enhance"), "test")
      )
      for w in (multi, self.workdir)
    )
    self.assertEqual(list(got["ids"]), list(want["ids"]))
    np.testing.assert_allclose(got["probs"], want["probs"], rtol=0, atol=1e-4)

    # Process 0 wrote the markers and the report.
    for stage in ("stage1", "localize", "classifiers/resnet50_enhance", "report"):
      self.assertIsNotNone(pipeline.read_done(os.path.join(multi, stage)), stage)
    self.assertTrue(os.path.exists(os.path.join(multi, "report", "report.md")))

    # The maps of the two-process run resume in one process: a lost shard is mapped again (the
    # shard layout does not depend on the process count), the others are kept.
    shards = sorted(glob.glob(os.path.join(multi, "localize", "le_maps", "*", "shard_*.npz")))
    lost = shards[len(shards) // 2]
    before = le_maps.read_difference_maps(os.path.join(multi, "localize"), lost.split(os.sep)[-2])
    kept = {p: os.path.getmtime(p) for p in shards if p != lost}
    for path in (lost, *(os.path.join(multi, d, "done.json") for d in ("localize", "report"))):
      os.remove(path)
    config = smoke_config(self.data_dir)
    config.backbones, config.fusions = ("resnet50",), ("enhance",)
    pipeline.run(config, multi)  # This process: 8 CPU devices.
    self.assertTrue(os.path.exists(lost))
    self.assertEqual({p: os.path.getmtime(p) for p in kept}, kept)
    after = le_maps.read_difference_maps(os.path.join(multi, "localize"), lost.split(os.sep)[-2])
    self.assertEqual(sorted(after), sorted(before))
    for key, value in before.items():
      np.testing.assert_allclose(after[key], value, rtol=0, atol=1e-3, err_msg=key)


@helpers.slow
class MuraPipelineTest(absltest.TestCase):
  """A MURA-layout folder (train and valid only) with nothing but the dataset overridden."""

  def test_selects_on_a_carved_split_and_scores_on_valid(self):
    tmp = self.create_tempdir().full_path
    helpers.make_mura_cohort(f"{tmp}/manual")
    config = smoke_config(f"{tmp}/data")
    config.data.name, config.data.manual_dir = "mura/xr_elbow", f"{tmp}/manual"
    config.backbones = ("resnet50",)
    config.seeds = 2
    config.localize.folds = 2  # Cross-fitted maps: two stage 1 generators, folds by patient.
    result = pipeline.run(config, f"{tmp}/w")
    with open(result["report"]) as f:
      text = f.read()
    self.assertIn("checkpoints selected by kappa on `selection`, scored on `valid`.", text)
    self.assertIn("| selection | 4 | 2 | 6 |", text)
    for fusion_mode in ("none", "enhance"):
      for seed in (0, 1):
        run = pipeline.classifier_dir(f"{tmp}/w", "resnet50", fusion_mode, seed)
        self.assertTrue(os.path.exists(predictions.metrics_path(run, "valid")))
        self.assertFalse(os.path.exists(predictions.metrics_path(run, "selection")))
    # Two seeds: Table 2 is their mean with an sd; the LE effect compares the seed-means, per
    # image and per study.
    with open(f"{tmp}/w/report/table2.csv") as f:
      rows = list(csv.DictReader(f))
    self.assertEqual([r["Seeds"] for r in rows], ["2", "2"])
    self.assertIn("Kappa sd", rows[0])
    for level in ("", "_study"):
      with open(f"{tmp}/w/report/table2_le_effect{level}.csv") as f:
        effect = list(csv.DictReader(f))
      self.assertEqual([r["metric"] for r in effect], list(stats.METRICS))
      self.assertEqual({r["seeds"] for r in effect}, {"2/2"})
    self.assertEqual(effect[0]["n"], "8")  # Studies of valid.
    self.assertIn("each classifier trained 2 times", text)
    # Every image has one map, in the split it belongs to.
    maps = {
      s: set(le_maps.read_difference_maps(f"{tmp}/w/localize", s)) for s in ("train", "selection")
    }
    self.assertLen(maps["train"] | maps["selection"], 100)
    self.assertEmpty(maps["train"] & maps["selection"])
    self.assertTrue(os.path.exists(f"{tmp}/w/report/table2_study.csv"))
    # Cross-fitted: generator k never saw fold k's patients, and maps exactly those.
    data = input_pipeline.data_config()
    data.name, data.data_dir, data.folds = "mura/xr_elbow", f"{tmp}/data", 2
    patient = lambda i: i.split("/")[2]
    for split in ("train", "selection", "valid"):
      folds = data_splits.split_folds(data, split)
      by_patient = {}
      for i, k in folds.items():
        by_patient.setdefault(patient(i), set()).add(k)
      self.assertEqual({len(v) for v in by_patient.values()}, {1})  # A patient is in one fold.
      for k in (0, 1):
        for path in glob.glob(f"{tmp}/w/localize/le_maps/{split}/shard_f{k}_*.npz"):
          with np.load(path) as shard:
            self.assertEqual({folds[str(i)] for i in shard["ids"]}, {k})
      self.assertEqual(set(le_maps.read_difference_maps(f"{tmp}/w/localize", split)), set(folds))
    for k in (0, 1):
      stage1 = checkpointing.read_stored_config(f"{tmp}/w/stage1/fold{k}", "inpainting", "stage 1")
      self.assertEqual((stage1.data.folds, stage1.data.holdout_fold), (2, k))
    with open(f"{tmp}/w/report/normal_le.csv") as f:
      rows = list(csv.DictReader(f))
    self.assertEqual([r["split"] for r in rows], ["train", "selection", "valid"])
    self.assertEqual({r["maps"] for r in rows}, {"cross-fitted (2 folds)"})


if __name__ == "__main__":
  absltest.main()
