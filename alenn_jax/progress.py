"""One progress line per interval: stage, step, images/s and ETA, in the log."""

import time

from absl import logging


class Progress:
  """`update(step)` logs `<stage>: step s/total, x images/s, ETA t` at most every `interval_s`
  seconds (and at the last step); rates count from the first update, so compilation is excluded."""

  def __init__(self, stage: str, total_steps: int, images_per_step: int, interval_s: float = 30.0):
    self.stage = stage
    self.total = total_steps
    self.images_per_step = images_per_step
    self.interval_s = interval_s
    self._t0 = None
    self._step0 = 0
    self._last = 0.0

  def update(self, step: int) -> None:
    now = time.perf_counter()
    if self._t0 is None:
      self._t0, self._step0, self._last = now, step, now
      return
    if now - self._last < self.interval_s and step < self.total:
      return
    self._last = now
    rate = (step - self._step0) / max(now - self._t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    logging.info(
      "%s: step %d/%d, %.1f images/s, ETA %s",
      self.stage,
      step,
      self.total,
      rate * self.images_per_step,
      format_seconds(eta),
    )


def format_seconds(seconds: float) -> str:
  if seconds != seconds or seconds == float("inf"):
    return "?"
  seconds = round(seconds)
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
