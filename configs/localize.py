"""Stage 2a: LE maps for every image of every split, from a stage 1 workdir, then Figure 3 and the
localization table. The generator, its dataset and image size come from the config the stage 1 run
stored in its workdir: nothing about stage 1 is repeated here.

  python launch.py --config=configs/localize.py --workdir=W      # W holds stage 1
  python launch.py --config=configs/localize.py --workdir=W --config.init_from=/stage1/workdir
  python launch.py --config=configs/localize.py:smoke --workdir=W   # small shards and figures
  python launch.py --config=configs/localize.py --workdir=W --config.init_from=S \
      --config.folds=3      # cross-fitted: S/fold0..2 are stage 1 runs with data.folds=3 and
                            # data.holdout_fold=0..2
"""

import ml_collections

from alenn_jax import input_pipeline

SIZES = ("smoke", "small", "full")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size = arg or "small"
  if size not in SIZES:
    raise ValueError(f"configs/localize.py: unknown argument {arg!r}; use {', '.join(SIZES)}.")
  config = ml_collections.ConfigDict()
  config.trainer = "localize"
  config.init_from = ""  # Stage 1 workdir to load the generator from ("": --workdir itself).
  # Cross-fitting: > 1 reads K generators from init_from/fold<k>, each trained without fold k of
  # the train patients (stage 1 with data.folds=K, data.holdout_fold=k); every image is mapped by
  # the generator of its own fold, which never saw it.
  config.folds = 1
  config.data = input_pipeline.data_config()
  config.data.name = ""  # "": the stage 1 run's dataset (with its folders and splits).
  config.data.image_size = 0  # 0: the stage 1 run's image size.
  config.data.labels = (0, 1)  # Every image, both classes.
  config.data.batch_size = 8
  config.window = 0  # Sliding window side (px); 0: the stage 1 run's mask window.
  config.stride = 0  # Step between windows (px); 0: half the window (the paper's text: d < w).
  # per_window (one pass per window, as the paper's text) | multi_window | context: see localize.
  config.method = "per_window"
  config.gap = 0  # multi_window: least distance (px) between windows repainted together; 0: window.
  # context: side (px) of the crop a window is repainted from; 0: the window plus the stage 1
  # generator's receptive field (148 px for `small`), rounded up to a multiple of 2**depth.
  config.context = 0
  # Reflected border (px) added to each image before the windows are laid out, D cropped back:
  # border pixels get as many windows as inner ones, border windows context on all sides.
  # -1: the stride (rounded up to a multiple of 2**(model.depth - 1)); 0: none (as the text).
  config.pad = -1
  # The letterbox bars around a non-square image, before its windows are repainted: "reflect"
  # fills them with the image reflected about its own edges, so a window at an edge that meets a
  # bar (inside the canvas, where `pad` does not reach) also has context on every side; "zero"
  # leaves them black, as stage 1 and the classifiers see them. Square images are the same either
  # way.
  config.letterbox = "reflect"
  # Each window scores |r - m| instead of the plain |r| = |I - I_k|, m the local mean of r inside
  # the hole (a Gaussian of sigma `highpass` px): a repainting that gets a region's brightness
  # wrong but not its content scores nothing. -1: window / 8; 0: off (as the text).
  config.highpass = -1.0
  # Then a pixel of the hole keeps only what no repainted pixel up to `shift` px away along its
  # row or column matches: an edge repainted a pixel off is not a lesion, a dark line across a
  # bone still is. -1: window / 16, at least 1; 0: off (as the text); at most (window - 1) // 2.
  config.shift = -1
  # D is then blurred with a Gaussian of sigma `smooth` px. -1: window / 16; 0: off (as the text).
  # The -1s were chosen on the phantoms' validation split; what each does: BENCHMARKS.md.
  config.smooth = -1.0
  config.normal_error = _normal_error_config()
  # What D is kept on: "body" keeps the patient's body, found in each image itself (brighter than
  # the air around it; markers, labels and bright bands along the film's edge dropped:
  # alenn_jax/foreground.py), and D is zero elsewhere, so rulers, side markers and collimation
  # edges hold no maximum and set no LE scale; "none": every pixel.
  config.foreground = "none"
  config.chunk = 16  # Inpainting passes run together; bounds memory.
  config.batches_per_shard = 8  # Resumption granularity.
  config.force_restart = False  # Recompute (old le_maps moved aside) if window/data changed.
  config.percentile = 99.0  # LE scale: this percentile of D over the training normals.
  config.report = ml_collections.ConfigDict()
  config.report.split = ""  # Where Figure 3 and the scores come from ("": test, else valid).
  config.report.num_examples = 4  # Rows of each Figure 3.
  config.report.tolerance = 2  # Pointing game: pixels of slack around the lesion.
  if size == "smoke":
    config.normal_error.codes = 64
    config.normal_error.pixels = 4096
    config.normal_error.images = 8
    config.chunk = 4
    config.batches_per_shard = 1
    config.report.num_examples = 2
  return config


def _normal_error_config() -> ml_collections.ConfigDict:
  """Optionally D is then divided by what normal anatomy of the same appearance also fails to
  repaint (alenn_jax/normal_error.py): the `patch` x `patch` neighbourhoods of `pixels` pixels of
  the first `images` training normals are clustered into `codes` classes (k-means, `iterations`
  steps), each keeping its mean D, E; every pixel's D becomes D / (E + floor * the normals' mean
  D), E that of the class nearest to its own neighbourhood. patch 0: off (the default); 9 turns it
  on (`make demo` does). It helps on the phantoms and not on FracAtlas hand, so real radiographs
  keep it off (BENCHMARKS.md, "What normals of the same appearance also fail to repaint")."""
  config = ml_collections.ConfigDict()
  config.patch = 0
  config.codes = 1024
  config.pixels = 32768
  config.images = 64
  config.iterations = 10
  config.floor = 2.0
  return config
