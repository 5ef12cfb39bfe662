"""The metric writer: clu's where TensorFlow is installed, JSON lines and the log where not."""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

from alenn_jax import writers

ROOT = os.path.join(os.path.dirname(__file__), "..")


class JsonLinesWriterTest(absltest.TestCase):
  def test_scalars_are_appended_one_json_object_per_value(self):
    workdir = self.create_tempdir().full_path
    writer = writers.JsonLinesWriter(workdir)
    writer.write_scalars(3, {"train/g_loss": 1.5, "train/d_loss": 0.25})
    writer.write_images(3, {"train/grid": None})
    writer.flush()
    writer.close()
    writers.JsonLinesWriter(workdir).write_scalars(4, {"eval/psnr": 20.0})  # Appends.
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f]
    self.assertEqual(
      rows,
      [
        {"step": 3, "name": "train/g_loss", "value": 1.5},
        {"step": 3, "name": "train/d_loss", "value": 0.25},
        {"step": 4, "name": "eval/psnr", "value": 20.0},
      ],
    )

  def test_just_logging_writes_no_file(self):
    workdir = self.create_tempdir().full_path
    writer = writers.JsonLinesWriter(workdir, just_logging=True)
    writer.write_scalars(1, {"a": 1.0})
    writer.close()
    self.assertEqual(os.listdir(workdir), [])


class FallbackTest(absltest.TestCase):
  def test_without_tensorflow_the_trainers_get_the_json_lines_writer(self):
    # A fresh interpreter in which TensorFlow and TensorBoard cannot be imported.
    code = (
      "import sys; sys.modules['tensorflow'] = None; sys.modules['tensorboard'] = None\n"
      "from alenn_jax import writers\n"
      "w = writers.create(sys.argv[1], just_logging=False)\n"
      "assert isinstance(w, writers.JsonLinesWriter), type(w)\n"
      "assert writers.report_progress(10, w)(5) is None\n"  # Does nothing, writes nothing.
      "w.write_scalars(2, {'x': 0.5}); w.close()\n"
    )
    with tempfile.TemporaryDirectory() as workdir:
      subprocess.run([sys.executable, "-c", code, workdir], cwd=ROOT, check=True)
      with open(os.path.join(workdir, "metrics.jsonl")) as f:
        self.assertEqual(json.loads(f.read()), {"step": 2, "name": "x", "value": 0.5})

  def test_with_tensorflow_the_trainers_get_clus_writer(self):
    if writers.metric_writers is None:
      self.skipTest("TensorFlow is not installed here")
    workdir = self.create_tempdir().full_path
    writer = writers.create(workdir, just_logging=False)
    self.assertNotIsInstance(writer, writers.JsonLinesWriter)
    self.assertIsNotNone(writers.report_progress(10, writer))
    writer.close()


if __name__ == "__main__":
  absltest.main()
