"""The trainers' metric writer: clu's (TensorBoard summaries and the log) where TensorFlow is
installed, else one that logs and appends JSON lines to `workdir/metrics.jsonl`.

clu's `metric_writers` and `periodic_actions` import TensorFlow for the summary writer. GPU and TPU
images often carry JAX without TensorFlow, and TensorFlow is used for nothing else here, so a
trainer on such a host still runs: its scalars go to `metrics.jsonl` (one `{"step", "name",
"value"}` object per line) and the log, its images only to the PNGs the trainers save anyway.
"""

import json
import os

from absl import logging

try:
  from clu import metric_writers, periodic_actions
except ImportError as e:  # Only a missing TensorFlow/TensorBoard means "no summaries".
  if (e.name or "").split(".")[0] not in ("tensorflow", "tensorboard"):
    raise
  metric_writers = periodic_actions = None


class JsonLinesWriter:
  """A clu-style writer without TensorFlow: scalars are logged and (unless `just_logging`) appended
  to `workdir/metrics.jsonl`; images are noted in the log only."""

  def __init__(self, workdir: str, just_logging: bool = False):
    self.path = None if just_logging else os.path.join(workdir, "metrics.jsonl")
    self._file = None

  def write_scalars(self, step: int, scalars) -> None:
    logging.info("[%d] %s", step, ", ".join(f"{k}={float(v):.6g}" for k, v in scalars.items()))
    if self.path is None:
      return
    if self._file is None:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      self._file = open(self.path, "a")
    for name, value in scalars.items():
      self._file.write(json.dumps({"step": int(step), "name": name, "value": float(value)}) + "\n")

  def write_images(self, step: int, images) -> None:
    logging.info("[%d] images %s: not written (no TensorBoard)", step, sorted(images))

  def write_hparams(self, hparams) -> None:
    logging.info("hparams: %s", dict(hparams))

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


_warned = False


def create(workdir: str, just_logging: bool):
  """clu's default writer for `workdir`, or a `JsonLinesWriter` where TensorFlow is missing."""
  global _warned
  if metric_writers is not None:
    return metric_writers.create_default_writer(workdir, just_logging=just_logging)
  if not _warned:
    logging.warning(
      "TensorFlow/TensorBoard not installed: metrics go to the log and %s, no TensorBoard "
      "summaries (pip install -r requirements.txt for them).",
      os.path.join(workdir, "metrics.jsonl"),
    )
    _warned = True
  return JsonLinesWriter(workdir, just_logging)


def _no_report(step: int) -> None:
  """Where TensorFlow is missing: nothing to add, `progress.Progress` already logs the rate."""


def report_progress(num_train_steps: int, writer):
  """`report(step)`: clu's `ReportProgress` (steps/s to the writer, once a minute), or one that does
  nothing where TensorFlow is missing (the trainers' `progress.Progress` logs the rate either
  way)."""
  if periodic_actions is None:
    return _no_report
  return periodic_actions.ReportProgress(num_train_steps=num_train_steps, writer=writer)
