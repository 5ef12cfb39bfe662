"""Writes tests/data/torchvision_parity.npz: torchvision's logits for the parity case of
tests/torchvision_parity.py. Run once, with torch and torchvision installed (never a dependency of
the project):

  python -m venv /tmp/tv && /tmp/tv/bin/pip install torch torchvision
  /tmp/tv/bin/python tests/data/make_torchvision_fixture.py

Each network is built with torchvision's own constructor (one output class), given the seeded
weights, and fed the seeded grey images as torchvision's users feed them: copied to RGB and
normalised with the ImageNet mean and std (`transforms.Normalize`). Inception-v3 is built with
`transform_input=True`, as torchvision builds it for its ImageNet weights.
"""

import os
import sys

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torchvision_parity as case

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build(name: str, kwargs: dict) -> torch.nn.Module:
  if name == "resnet50":
    return torchvision.models.ResNet(torchvision.models.resnet.Bottleneck, num_classes=1, **kwargs)
  if name == "densenet121":
    return torchvision.models.DenseNet(num_classes=1, **kwargs)
  if name == "inception_v3":
    return torchvision.models.inception_v3(
      weights=None, num_classes=1, init_weights=False, transform_input=True, **kwargs
    )
  return torchvision.models.vgg19(weights=None, num_classes=1)


def main() -> None:
  out = {}
  for name, (side, kwargs, _) in case.CASES.items():
    model = build(name, kwargs)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = {k: torch.from_numpy(v) for k, v in case.weights(shapes).items()}
    model.load_state_dict(state)
    model.eval()
    grey = torch.from_numpy(case.grey_batch(side))[:, None].repeat(1, 3, 1, 1)
    x = torchvision.transforms.Normalize(MEAN, STD)(grey)
    with torch.no_grad():
      logits = model(x).numpy()
    out[f"{name}/logits"] = logits.astype(np.float32)
    print(name, side, logits.ravel())
  path = os.path.join(os.path.dirname(__file__), case.FIXTURE)
  np.savez(path, torchvision=torchvision.__version__, torch=torch.__version__, **out)
  print("wrote", path)


if __name__ == "__main__":
  main()
