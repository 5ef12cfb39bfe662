"""RTV structure extraction on the built-in phantoms (or on your own images).

python launch.py --config=configs/rtv_demo.py --workdir=/tmp/rtv_demo
python launch.py --config=configs/rtv_demo.py:smoke --workdir=/tmp/rtv_smoke
python launch.py --config=configs/rtv_demo.py --workdir=W --config.images='("a.png", "b.jpg")'
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.trainer = "rtv_demo"
  config.images = ()  # PNG/JPEG paths to process; empty: `num_phantoms` built-in phantoms.
  config.num_phantoms = 8  # Half normal, half with a lesion, when `images` is empty.
  config.image_size = 256  # Images are resized to image_size x image_size.
  config.seed = 0  # Seed of the phantoms.
  config.rtv = common.rtv_config()
  if arg == "smoke":
    config.image_size = 64
    config.num_phantoms = 2
  elif arg:
    raise ValueError(f"configs/rtv_demo.py: unknown argument {arg!r}; use nothing or 'smoke'.")
  return config
