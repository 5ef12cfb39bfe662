"""Helpers shared by the benchmarks: machine description and timing."""

import os
import platform
import time

import jax


def machine_description() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  devices = jax.devices()
  return (
    f"{cpu}; {os.cpu_count()} cores; JAX {jax.__version__} on {devices[0].platform} "
    f"({devices[0].device_kind}) x{len(devices)}; Python {platform.python_version()}"
  )


def best_time(fn, repeats: int = 3) -> float:
  """Best wall time of `repeats` calls of `fn` (which must block until its result is ready)."""
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best
