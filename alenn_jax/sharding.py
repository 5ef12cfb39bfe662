"""Device mesh and shardings: one mesh axis, "data"; parameters replicated, batches split on axis 0.

The same code runs on one CPU, 8 emulated CPU devices, a GPU or a TPU pod.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from alenn_jax.errors import UserInputError

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all (global) devices, axis name "data"."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Splits axis 0 over the "data" axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_divisible(global_batch_size: int, mesh: Mesh, field: str = "batch_size") -> None:
  """Raises a UserInputError naming `field` when the batch cannot be split evenly over the
  devices."""
  n = mesh.devices.size
  if global_batch_size % n:
    raise UserInputError(
      f"{field}={global_batch_size} is not divisible by the {n} devices of the mesh; "
      f"use a multiple of {n}."
    )


def to_global(tree, mesh: Mesh):
  """Host-local arrays (this process's slice of the batch) -> global arrays sharded on "data"."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
  )
