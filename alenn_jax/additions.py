"""What this implementation adds to the method as the paper's text describes it.

Each addition is one switch of the pipeline config (`configs/pipeline.py`), off in its `paper`
presets. `on(config)` lists the ones a (resolved) pipeline config has on, for report.md;
`turn_off(config)` switches every one off, for the `paper` presets. README's table "the paper /
what we add" has each one's measured effect (BENCHMARKS.md).

Gaps the text leaves (RTV parameters, the networks, the masks' shapes, the difference taken as
|I - I_k|, the fusion I * (1 + gamma * LE), the stride, checkpoint selection) are filled by stated
choices and are not additions: README's table lists them.
"""

import dataclasses

import ml_collections

# The paper's text names "random masks"; ours mix rectangles, strokes and window squares (a
# reading of that gap) and, as an addition, the grid of windows the LE maps repaint together.
_PAPER_MASK_WEIGHTS = (0.3, 0.3, 0.4, 0.0)
_NO_AUGMENT = {"flip": False, "rotate_deg": 0.0, "scale": 0.0, "brightness": 0.0, "contrast": 0.0}


@dataclasses.dataclass(frozen=True)
class Addition:
  name: str  # As README's table and report.md name it.
  field: str  # The pipeline config field that switches it ("stage2.*" for every backbone).
  off: object  # Its value when off.
  what: str  # One line: what it does.


ADDITIONS = (
  Addition(
    "multi_window",
    "localize.method",
    "per_window",
    "windows at least `gap` px apart repainted in one generator pass (RIAD-style), not one pass "
    "per window",
  ),
  Addition(
    "grid masks",
    "stage1.masks.weights",
    _PAPER_MASK_WEIGHTS,
    "stage 1 is also trained on the grids of windows the LE maps repaint",
  ),
  Addition(
    "per-image structure",
    "stage1.structure",
    "in_step",
    "RTV solved once per training image and augmented with it, not for every batch",
  ),
  Addition(
    "reflected border",
    "localize.pad",
    0,
    "a reflected border around each image, so border pixels get as many windows as inner ones",
  ),
  Addition(
    "letterbox fill",
    "localize.letterbox",
    "zero",
    "the bars around a non-square image filled by reflection before repainting",
  ),
  Addition(
    "highpass",
    "localize.highpass",
    0.0,
    "each window's error less its local mean: a wrong brightness is not a lesion",
  ),
  Addition(
    "shift",
    "localize.shift",
    0,
    "what the repainting matches a few px away along a row or column is not scored",
  ),
  Addition("smooth", "localize.smooth", 0.0, "D blurred with a Gaussian"),
  Addition(
    "normal_error",
    "localize.normal_error.patch",
    0,
    "D divided by what training normals of the same appearance also fail to repaint",
  ),
  Addition(
    "foreground",
    "localize.foreground",
    "none",
    "D kept to the patient's body; markers, labels, film-edge bands and air are not scored",
  ),
  Addition(
    "cross-fitting",
    "localize.folds",
    1,
    "K stage 1 generators; each image mapped by the one that never saw it",
  ),
  Addition(
    "selection carve",
    "data.paper_selection",
    True,
    "checkpoints selected on a patient-level part of train where the data has no validation "
    "split, never on the scored split",
  ),
  Addition(
    "augmentation",
    "*.data.augment",
    _NO_AUGMENT,
    "random flips, rotations, zooms, brightness and contrast of training images",
  ),
  Addition(
    "seeds",
    "seeds",
    1,
    "each classifier trained several times, Table 2 giving the mean",
  ),
)


def _places(config, addition: Addition) -> list[tuple[ml_collections.ConfigDict, str]]:
  """(block, path inside it) of every place the addition is switched: `*.x` is stage 1's `x` and
  every backbone's."""
  head, _, rest = addition.field.partition(".")
  if head != "*":
    return [(config, addition.field)]
  return [(config.stage1, rest)] + [(config.stage2[b], rest) for b in config.stage2]


def _get(block, path: str):
  for key in path.split("."):
    block = block[key]
  return block.to_dict() if isinstance(block, ml_collections.ConfigDict) else block


def _set(block, path: str, value) -> None:
  *head, last = path.split(".")
  for key in head:
    block = block[key]
  if isinstance(value, dict):
    block[last].update(value)
  else:
    block[last] = value


def _is_on(value, off) -> bool:
  if isinstance(off, tuple):
    return tuple(value) != off
  if isinstance(off, float):
    return float(value) != off
  return value != off


def on(config: ml_collections.ConfigDict) -> list[str]:
  """Names of the additions a pipeline config has on, in ADDITIONS' order. A `-1` (derived)
  value counts as on: the job turns the addition on at a size it derives."""
  return [
    a.name
    for a in ADDITIONS
    if any(_is_on(_get(block, path), a.off) for block, path in _places(config, a))
  ]


def turn_off(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Switches every addition off in a pipeline config (in place) and returns it."""
  for addition in ADDITIONS:
    for block, path in _places(config, addition):
      _set(block, path, addition.off)
  return config
