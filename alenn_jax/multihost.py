"""What the processes of a `--multihost` job agree on: the job itself, decisions read from disk,
and the points they wait for each other at. On one process every function is a no-op.

Barriers go through the coordination service with a timeout (`--barrier_timeout`, default an
hour): the processes run every stage together, so a barrier waits only for the slowest process to
finish the same work (or for process 0's report), and a process still waiting after that long
names the barrier (and so the stage) on one line instead of hanging or failing deep in a
collective.
"""

import hashlib
import json
import math
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from orbax.checkpoint import multihost as ocp_multihost

from alenn_jax import checkpointing
from alenn_jax.errors import UserInputError

# Bytes of one process's description of the first field where its job differs from process 0's.
_MESSAGE_BYTES = 512
_MISSING = "<missing>"  # A field only the other process's job has.


def agreed(values):
  """Process 0's `values` (a numpy array or scalar) on every process: what process 0 found (on
  disk, say) decides for all, so processes never take different branches around a collective."""
  if jax.process_count() == 1:
    return values
  return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(values)))


DEFAULT_BARRIER_TIMEOUT_S = 3600.0
_state = {"timeout_s": DEFAULT_BARRIER_TIMEOUT_S, "passed": 0}


def set_barrier_timeout(seconds: float) -> None:
  """How long a process waits at a barrier (and orbax for the other processes' checkpoint
  writes) before it stops; `launch.py --barrier_timeout`."""
  if not seconds >= 1:
    raise UserInputError(f"--barrier_timeout={seconds}: use a number of seconds >= 1.")
  _state["timeout_s"] = float(seconds)


def barrier_timeout() -> float:
  return _state["timeout_s"]


class BarrierTimeout(UserInputError):
  """A process waited longer than the barrier timeout for the others."""


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (nothing to wait for on one process).
  Raises BarrierTimeout, naming it, when the others have not arrived within `barrier_timeout()`.
  Every process passes the same barriers in the same order, so their count makes each key unique
  even when a name repeats."""
  if jax.process_count() == 1:
    return
  key = f"alenn_jax barrier {_state['passed']}: {name}"
  _state["passed"] += 1
  start = time.monotonic()
  try:
    ocp_multihost.sync_global_processes(
      key,
      timeout=math.ceil(_state["timeout_s"]),
      processes=set(range(jax.process_count())),
    )
  except jax.errors.JaxRuntimeError as e:
    detail = str(e).strip().split(". ")[0][:120] or type(e).__name__  # "DEADLINE_EXCEEDED: ..."
    raise BarrierTimeout(
      f"--multihost: process {jax.process_index()} waited {time.monotonic() - start:.0f} s at "
      f"barrier {name!r} and not every process reached it ({detail}); if a process is only "
      f"slower, raise --barrier_timeout (now {_state['timeout_s']:g} s); if one stopped, its log "
      "says why."
    ) from e


def first_difference(mine: dict, theirs: dict) -> str | None:
  """The first (sorted) dotted field whose value differs between two nested dicts, or None."""
  a, b = checkpointing.flatten_config(mine), checkpointing.flatten_config(theirs)
  for name in sorted(set(a) | set(b)):
    if a.get(name, _MISSING) != b.get(name, _MISSING):
      return name
  return None


def _to_bytes(text: str, size: int) -> np.ndarray:
  data = text.encode()[:size]
  out = np.zeros(size, np.uint8)
  out[: len(data)] = np.frombuffer(data, np.uint8)
  return out


def _from_bytes(data: np.ndarray) -> str:
  return bytes(np.asarray(data, np.uint8)).rstrip(b"\0").decode(errors="replace")


def check_same_job(job: dict) -> None:
  """Stops every process with one line naming the first differing field when the processes were
  started with different jobs (`job`: the config, workdir and mode as JSON-able dicts). Compares a
  hash first; only on a mismatch is process 0's job sent to the others."""
  if jax.process_count() == 1:
    return
  text = json.dumps(job, sort_keys=True)
  digest = np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], np.int64)
  digests = np.asarray(multihost_utils.process_allgather(digest)).reshape(-1)
  if np.all(digests == digests[0]):
    return
  length = int(agreed(np.int64(len(text.encode()))))
  reference = json.loads(_from_bytes(agreed(_to_bytes(text, length))))
  field = first_difference(job, reference)
  here = ""
  if field is not None:
    mine = checkpointing.flatten_config(job).get(field, _MISSING)
    theirs = checkpointing.flatten_config(reference).get(field, _MISSING)
    here = f"{field}={mine!r} on process {jax.process_index()}, {theirs!r} on process 0"
  notes = np.asarray(multihost_utils.process_allgather(_to_bytes(here, _MESSAGE_BYTES)))
  differences = [_from_bytes(n) for n in notes.reshape(jax.process_count(), -1)]
  first = next(d for d in differences if d)
  raise UserInputError(
    f"--multihost: the processes were started with different jobs: {first}; start every process "
    "with the same --config, overrides, --workdir and --mode."
  )
