"""Input pipeline throughput: images/s from a built dataset through the training pipeline.

  python -m benchmarks.input_bench [--data_dir DIR] [--batches 40]

Builds (once, into --data_dir) the FracAtlas hand sample from ../shared/data/fracatlas when present
(real radiographs, stored with longest side 512) and the 128 px phantoms, then times the training
iterator (decode, letterbox, augment, batch) at 64, 128 and 256 px, each after a whole epoch of
warm-up (training runs many epochs): with every example decoded on every visit
(`data.cache_mb=0`, the baseline), with each kept decoded and letterboxed after its first visit
(`data.cache_mb`'s default), and the latter with host batches turned into sharded global arrays.
"""

import argparse
import math
import os
import tempfile
import time

import jax

from alenn_jax import data_splits, datasets, input_pipeline, sharding
from benchmarks.common import machine_description

FRACATLAS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "fracatlas")


def images_per_second(iterator, warmup: int, batches: int, batch_size: int, device: bool) -> float:
  next_fn = iterator.__next__ if device else iterator._iterator.__next__
  for _ in range(warmup):  # Thread pool, first decodes: a whole epoch.
    jax.block_until_ready(next_fn()["image"])
  t0 = time.perf_counter()
  for _ in range(batches):
    jax.block_until_ready(next_fn()["image"])
  return batches * batch_size / (time.perf_counter() - t0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "alenn_bench_data"))
  parser.add_argument("--batches", type=int, default=40)
  parser.add_argument("--batch_size", type=int, default=16)
  args = parser.parse_args()
  print(f"machine: {machine_description()}\n")
  sources = [("phantoms/px128", None)]
  if os.path.isdir(os.path.join(FRACATLAS, "images")):
    sources.insert(0, ("fracatlas/hand", FRACATLAS))
  mesh = sharding.make_mesh()
  print(
    "| dataset | image size | decoded every visit, images/s | decoded once, images/s | ratio "
    "| decoded once + global arrays, images/s |"
  )
  print("|---|---|---|---|---|---|")
  for name, manual_dir in sources:
    datasets.build(name, args.data_dir, manual_dir)
    for size in (64, 128, 256):
      config = input_pipeline.data_config()
      config.update(name=name, data_dir=args.data_dir, manual_dir=manual_dir or "", image_size=size)
      config.batch_size = args.batch_size
      _, labels = data_splits.open_split(config, config.train_split)
      warmup = math.ceil(len(labels) / args.batch_size) + 3
      rates = []
      for cache_mb, device in ((0.0, False), (config.cache_mb, False), (config.cache_mb, True)):
        config.cache_mb = cache_mb
        iterator = input_pipeline.train_iterator(config, mesh)
        rates.append(images_per_second(iterator, warmup, args.batches, args.batch_size, device))
      every, once, full = rates
      print(
        f"| {name} | {size} | {every:.0f} | {once:.0f} | {once / every:.2f} | {full:.0f} |",
        flush=True,
      )


if __name__ == "__main__":
  main()
