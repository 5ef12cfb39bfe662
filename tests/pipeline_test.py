"""The one-command pipeline: the :smoke config end to end, then again to prove nothing reruns."""

import csv
import math
import os
import shutil
import tempfile

from absl.testing import absltest

from alenn_jax import pipeline
from configs import pipeline as pipeline_config


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
      "localization.csv",
      "fig3_normal.png",
      "fig3_abnormal.png",
      "fig4_roc.png",
    ):
      self.assertGreater(os.path.getsize(os.path.join(report, name)), 0, name)
    for name in ("table1.csv", "table2.csv", "localization.csv"):
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
    ):
      self.assertIn(needle, text)

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


if __name__ == "__main__":
  absltest.main()
