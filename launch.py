"""Entry point: `python launch.py --config=configs/<stage>.py[:arg] --workdir=DIR [--mode=MODE]`.

Dispatches on `config.trainer`. Everything else lives in the `alenn_jax` package.
"""

import json
import os
import re
import socket
import sys
import time

import jax
from absl import app, flags, logging
from jax.experimental.compilation_cache import compilation_cache
from ml_collections import config_flags

from alenn_jax import (
  config_checks,
  multihost,
  pipeline,
  pipeline_fields,
  rtv_demo,
  train_inpainting,
)
from alenn_jax.classification import predict, train_classifier
from alenn_jax.errors import UserInputError
from alenn_jax.localization import localize
from alenn_jax.preemption import Preempted

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
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  None,
  "With --multihost on clusters JAX does not detect: host:port of process 0's coordinator.",
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "With --multihost: the number of processes (default: detected)."
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "With --multihost: this process's index (default: detected)."
)
_MULTIHOST_TIMEOUT = flags.DEFINE_integer(
  "multihost_timeout",
  300,
  "With --multihost: seconds to wait for the coordinator and for every process to join.",
)
_BARRIER_TIMEOUT = flags.DEFINE_float(
  "barrier_timeout",
  multihost.DEFAULT_BARRIER_TIMEOUT_S,
  "With --multihost: seconds a process waits at a barrier (the end of a stage, process 0's "
  "report, a checkpoint write) for the others before it stops naming the barrier.",
)
_COMPILATION_CACHE = flags.DEFINE_string(
  "compilation_cache",
  "",
  "Directory of JAX's persistent compilation cache: a program compiled once (the same classifier "
  "step for each fusion and seed of a backbone, a rerun) is loaded instead of compiled again. "
  "Default: $JAX_COMPILATION_CACHE_DIR where it is set, else WORKDIR/compilation_cache; 'none' "
  "turns it off.",
)
flags.mark_flags_as_required(["config", "workdir"])


class _QuietCheckpointLogs(logging.logging.Filter):
  """Drops orbax's per-save INFO lines (dozens per checkpoint) unless --verbosity >= 1."""

  def filter(self, record) -> bool:
    return record.levelno >= logging.logging.WARNING or "/orbax/" not in record.pathname


def _trainers():
  """config.trainer -> {mode: function(config, workdir)}; the first mode is the default."""
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
    "predict": {"run": predict.run},
  }


def _check_writable(workdir: str) -> None:
  """Creates `workdir` if needed; a UserInputError when it cannot be written."""
  probe = os.path.join(workdir, f".write_test_{os.getpid()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserInputError(
      f"--workdir={workdir} is not a writable directory ({e.strerror or e}); choose another."
    ) from None


def _use_compilation_cache(workdir: str) -> None:
  """Points JAX's persistent compilation cache at --compilation_cache (default: the cache
  $JAX_COMPILATION_CACHE_DIR already names, e.g. one shared by several jobs, else
  W/compilation_cache). Called once the job is agreed and the workdir checked, so a refused start
  writes nothing; the reset makes it apply even after the programs the start-up compiled."""
  if _COMPILATION_CACHE.value == "none":
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()
    return
  if not _COMPILATION_CACHE.value and os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return  # JAX read it at import: in use from the first compilation.
  cache = _COMPILATION_CACHE.value or os.path.join(workdir, "compilation_cache")
  jax.config.update("jax_compilation_cache_dir", os.path.abspath(cache))
  compilation_cache.reset_cache()


def _user_error(e: UserInputError):
  """One `error:` line and exit status 2; the traceback too with --verbosity=1."""
  if logging.get_verbosity() >= 1:
    logging.exception("user input error")
  print(f"error: {e}", file=sys.stderr)
  sys.exit(2)


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

  try:
    config_checks.validate(config)
  except UserInputError as e:
    _user_error(e)

  if logging.get_verbosity() < 1:
    logging.get_absl_handler().addFilter(_QuietCheckpointLogs())
  workdir = os.path.abspath(_WORKDIR.value)
  if _MULTIHOST.value:
    try:
      _start_multihost(config, workdir, mode)
    except UserInputError as e:
      _user_error(e)
  elif _COORDINATOR.value or _NUM_PROCESSES.value or _PROCESS_ID.value is not None:
    raise app.UsageError("--coordinator_address/--num_processes/--process_id need --multihost.")
  logging.info(
    "JAX process %d/%d, %d local / %d global devices (%s)",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )
  logging.info("trainer=%s mode=%s workdir=%s\n%s", trainer, mode, workdir, config)

  try:
    if jax.process_index() == 0:
      _check_writable(workdir)
    _use_compilation_cache(workdir)
    modes[mode](config, workdir)
  except UserInputError as e:
    _user_error(e)
  except Preempted as e:
    logging.warning("%s", e)
    print(f"preempted: {e}", file=sys.stderr)
    sys.exit(128 + e.signum)


def _start_multihost(config, workdir: str, mode: str) -> None:
  """jax.distributed.initialize(), after making sure the coordinator answers (else JAX aborts the
  process with a stack trace), then checks that every process runs the same job."""
  timeout = _MULTIHOST_TIMEOUT.value
  if timeout < 1:
    raise UserInputError(f"--multihost_timeout={timeout}: use a number of seconds >= 1.")
  multihost.set_barrier_timeout(_BARRIER_TIMEOUT.value)
  address = _COORDINATOR.value
  if address and _PROCESS_ID.value not in (None, 0):
    _wait_for_coordinator(address, timeout)
  # Detected on TPU pods, SLURM and Open MPI; the three flags cover other clusters.
  jax.distributed.initialize(
    coordinator_address=address,
    num_processes=_NUM_PROCESSES.value,
    process_id=_PROCESS_ID.value,
    initialization_timeout=timeout,
  )
  job = {"config": json.loads(config.to_json_best_effort()), "workdir": workdir, "mode": mode}
  multihost.check_same_job(job)


def _wait_for_coordinator(address: str, timeout: int) -> None:
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise UserInputError(f"--coordinator_address={address}: use host:port, e.g. 10.0.0.2:1234.")
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise UserInputError(
          f"--coordinator_address={address}: no coordinator answered there within {timeout} s "
          f"({e.strerror or e}); start process 0 (--process_id=0) with the same address, or fix "
          "the host and port."
        ) from None
      time.sleep(1.0)


def _verbose(argv) -> bool:
  return any(a.startswith(("--verbosity=1", "--verbosity=2", "-v=1", "-v=2")) for a in argv)


def _last_error_line(message: str) -> str:
  """The exception line at the end of a message that embeds a traceback (ml_collections reports
  an error raised by a config file's get_config so), without its exception class."""
  lines = [line for line in message.strip().splitlines() if line.strip()]
  return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1]) if lines else message


def _parse_flags(argv):
  """absl's flag parsing, with a misspelt or mistyped `--config.` override, or a config argument
  its file refuses (`configs/stage2.py:smoke,backbone=x`), reported on one line (exit status 2)
  instead of a traceback; `--verbosity=1` keeps the traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    if "Traceback (most recent call last)" in message and not _verbose(argv):
      flag = re.match(r"flag (\S+): ", message)
      detail = re.sub(r"^configs/\w+\.py: ", "", _last_error_line(message))
      message = f"{flag.group(1)}: {detail}" if flag else detail
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if _verbose(argv):
      raise
    message = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
    overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    is_pipeline = any(a.startswith("--config=") and "pipeline" in a for a in argv[1:])
    for override in overrides if is_pipeline else ():  # A field the pipeline sets: name it.
      ruler = pipeline_fields.ruling_field(override[len("--config.") :])
      if ruler:
        own = ruler.startswith("the ")
        where, fix = (ruler, "leave it out") if own else (f"--config.{ruler}", "set that")
        print(f"error: {override}: in a pipeline config {where} sets it; {fix}.", file=sys.stderr)
        sys.exit(2)
    print(
      f"error: cannot apply the config overrides {', '.join(overrides)}: {message}",
      file=sys.stderr,
    )
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
