"""The step loop both trainers run (stage 1 and the classifiers): steps `start` to `stop`, each
batch through the jitted step, metrics checked and logged, an evaluation every `eval_every` steps,
a checkpoint after each step the trainer's `save` decides, and a clean stop on SIGTERM or Ctrl-C
(a checkpoint at that step, then `preemption.Preempted`).

What differs between the trainers stays in them: which step function a step runs (stage 1's
phase), what an evaluation does (an image grid; validation scores and the best checkpoint), and
which steps are checkpointed.
"""

from collections.abc import Callable, Iterator

import jax
from clu import metric_writers

from alenn_jax import checkpointing, preemption, progress, writers


def run(
  state,
  *,
  name: str,
  start: int,
  stop: int,
  total: int,
  batch_size: int,
  batches: Iterator[dict],
  step: Callable,
  evaluate: Callable[[int, object], None],
  save: Callable[[int, object, bool], None],
  managers: list,
  writer: metric_writers.MetricWriter,
  log_every: int,
  eval_every: int,
):
  """Runs steps `start` .. `stop - 1` of a `total`-step run and returns the state.

  Args:
    state: the train state (replicated).
    name: the progress line's name ("stage 1", "classifier resnet50/none").
    batches: the numeric batches the step takes, one per step.
    step: `(index, state, batch) -> (state, metrics)`, index counting from 0.
    evaluate: `(steps done, state)`, called every `eval_every` steps and at `stop`.
    save: `(steps done, state, force)`, called after every step (`force` when stopping on a
      signal); the trainer decides what to write.
    managers: the orbax managers closed at the end (the first is the one a non-finite loss
      names as the last good checkpoint).
  """
  report = writers.report_progress(total, writer)
  progress_line = progress.Progress(name, total, batch_size)
  with preemption.watch() as should_stop:
    for index in range(start, stop):
      state, metrics = step(index, state, next(batches))
      metrics = jax.device_get(metrics)
      checkpointing.check_finite(metrics, index, managers[0])
      done = index + 1
      report(done)
      progress_line.update(done)
      if done % log_every == 0 or done == stop:
        writer.write_scalars(done, {f"train/{k}": float(v) for k, v in metrics.items()})
      if done % eval_every == 0 or done == stop:
        evaluate(done, state)
      save(done, state, False)
      if should_stop(done):
        save(done, state, True)
        checkpointing.close(managers, writer)
        raise preemption.Preempted(done, should_stop.signum)
  checkpointing.close(managers, writer)
  return state
