"""Entry point: `python launch.py --config=configs/<stage>.py[:arg] --workdir=DIR [--mode=MODE]`.

Dispatches on `config.trainer`. Everything else lives in the `alenn_jax` package.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from alenn_jax.errors import UserInputError

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Config file, e.g. configs/rtv_demo.py or configs/rtv_demo.py:smoke.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, logs, maps and reports."
)
_MODE = flags.DEFINE_string(
  "mode", None, "What to do; each trainer lists its modes (default: its first)."
)
_MULTIHOST = flags.DEFINE_bool(
  "multihost", False, "Call jax.distributed.initialize() first (TPU pods, GPU clusters)."
)
flags.mark_flags_as_required(["config", "workdir"])


def _trainers():
  """config.trainer -> {mode: function(config, workdir)}; the first mode is the default."""
  from alenn_jax import localize, pipeline, rtv_demo, train_classifier, train_inpainting

  return {
    "inpainting": {
      "train": train_inpainting.train_and_evaluate,
      "eval": train_inpainting.evaluate_checkpoint,
    },
    "localize": {"run": localize.run},
    "classifier": {
      "train": train_classifier.train_and_evaluate,
      "eval": train_classifier.evaluate_checkpoint,
    },
    "rtv_demo": {"run": rtv_demo.run},
    "pipeline": {"run": pipeline.run},
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  trainers = _trainers()
  trainer = config.get("trainer")
  if trainer not in trainers:
    raise app.UsageError(
      f"config.trainer={trainer!r} in {flags.FLAGS['config'].config_filename} is unknown; "
      f"valid trainers: {', '.join(sorted(trainers))}."
    )
  modes = trainers[trainer]
  mode = _MODE.value or next(iter(modes))
  if mode not in modes:
    raise app.UsageError(
      f"--mode={mode!r} is not a mode of trainer {trainer!r}; valid modes: {', '.join(modes)}."
    )

  import jax

  if _MULTIHOST.value:
    jax.distributed.initialize()
  logging.info(
    "JAX process %d/%d, %d local / %d global devices (%s)",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )
  workdir = os.path.abspath(_WORKDIR.value)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
  logging.info("trainer=%s mode=%s workdir=%s\n%s", trainer, mode, workdir, config)
  try:
    modes[mode](config, workdir)
  except UserInputError as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
