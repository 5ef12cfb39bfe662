"""Stopping cleanly when a job is preempted: SIGTERM (schedulers, TPU maintenance) or SIGINT
(Ctrl-C) during training saves a checkpoint at the current step, waits for it to be written, and
ends the run with `Preempted`; the next launch resumes from that checkpoint.

On several hosts the processes must agree on the step at which to stop; there JAX's own preemption
sync point is used (`jax.distributed.initialize()` installs its SIGTERM notifier, and SIGINT is
passed on to it as a SIGTERM to the process itself), on one host a signal handler sets a flag that
the training loop reads once per step.
"""

import contextlib
import os
import signal

import jax
from absl import logging
from jax.experimental import multihost_utils


class Preempted(Exception):
  """Training stopped on a signal after saving a checkpoint at `step`."""

  def __init__(self, step: int, signum: int):
    self.step = step
    self.signum = signum
    name = signal.Signals(signum).name
    super().__init__(
      f"stopped by {name} at step {step}; the checkpoint of step {step} is saved. Run the same "
      "command again to resume."
    )


class _Watcher:
  def __init__(self):
    self.signum = None

  def __call__(self, step: int) -> bool:
    """Whether to stop after `step` (called once per step by every process)."""
    if jax.process_count() > 1:
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.signum = self.signum or signal.SIGTERM
          return True
        return False  # Only the agreed step: a process never stops alone.
      except RuntimeError:  # The preemption service is not running (no distributed init).
        pass
    return self.signum is not None


@contextlib.contextmanager
def watch():
  """Yields `should_stop(step)`; SIGTERM and SIGINT set it instead of killing the process.

  A second signal of the same kind while the checkpoint is being written is ignored; the handlers
  in place before are restored on exit.
  """
  watcher = _Watcher()

  def handler(signum, frame):
    del frame
    if watcher.signum is None:
      logging.warning(
        "received %s: saving a checkpoint, then stopping", signal.Signals(signum).name
      )
      watcher.signum = signum
      if signum == signal.SIGINT and jax.process_count() > 1:
        # Passed on to JAX's notifier (SIGTERM), which has every process stop at the same step.
        os.kill(os.getpid(), signal.SIGTERM)

  previous = {}
  # On several processes SIGTERM stays with JAX's preemption notifier: a handler here would replace
  # it, and each process would stop at the step its own signal arrived, not at the agreed one.
  caught = (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else (signal.SIGINT,)
  try:
    for signum in caught:
      previous[signum] = signal.signal(signum, handler)
  except ValueError:  # Not the main thread: signals cannot be caught here.
    previous = {}
  try:
    yield watcher
  finally:
    for signum, old in previous.items():
      signal.signal(signum, old)
