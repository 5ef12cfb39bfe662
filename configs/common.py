"""Config pieces shared by several stages."""

import dataclasses

import ml_collections

from alenn_jax import rtv


def rtv_config() -> ml_collections.ConfigDict:
  """RTV structure extraction (`rtv.RTVParams`, whose fields say what each value does).
  Defaults: StructureFlow's call tsmooth(I, 0.015, 3, 0.001, 3)."""
  return ml_collections.ConfigDict(dataclasses.asdict(rtv.RTVParams()))
