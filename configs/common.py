"""Config pieces shared by several stages."""

import ml_collections

from alenn_jax import rtv


def rtv_config() -> ml_collections.ConfigDict:
  """RTV structure extraction. Defaults: StructureFlow's call tsmooth(I, 0.015, 3, 0.001, 3)."""
  config = ml_collections.ConfigDict()
  config.lam = (
    rtv.DEFAULT_LAM
  )  # Smoothing weight lambda (halved internally, as the reference does).
  config.sigma = rtv.DEFAULT_SIGMA  # Initial texture-window scale; halves each outer iteration.
  config.sharpness = rtv.DEFAULT_SHARPNESS  # Gradient floor: smaller keeps sharper edges.
  config.n_iter = rtv.DEFAULT_N_ITER  # Outer re-weighting iterations.
  config.tol = rtv.DEFAULT_TOL  # Relative residual at which each CG solve stops.
  config.max_cg_iters = rtv.DEFAULT_MAX_CG_ITERS  # CG iteration cap per solve.
  return config
