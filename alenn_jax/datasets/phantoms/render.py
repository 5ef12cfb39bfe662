"""Procedural radiograph-like images of a limb: the built-in default data.

An image is a projection: every tissue contributes attenuation mu * (path length through it), and
the detector shows 1 - exp(-total), so bone is bright, soft tissue grey and air dark, as on a
radiograph. The limb is a soft-tissue capsule holding long bones (hollow capsules: a bright cortical
shell around a darker medullary canal with trabecular texture towards the flared ends) that meet
at a joint. Pose, sizes, exposure, scatter and noise vary with the seed. An abnormal image carries
one lesion — fracture line, lytic focus, sclerotic focus or metal hardware — and its true mask.

Everything is numpy and deterministic in the seed; `render_phantom(seed, size)` is the whole API.
"""

import dataclasses

import numpy as np

LESION_KINDS = ("fracture", "lytic", "sclerotic", "hardware")

# Attenuation per unit path length (path lengths are in units of the image side).
_MU_SOFT = 2.2
_MU_CORTEX = 14.0
_MU_MARROW = 5.0


@dataclasses.dataclass(frozen=True)
class Bone:
  p0: np.ndarray  # [2] (y, x) in [0, 1] image units; the end at the joint is p1.
  p1: np.ndarray
  radius: float
  flare: float  # How much wider the ends get (metaphysis/epiphysis).


def _segment_coords(yy, xx, p0, p1):
  """Position along the segment (s, clamped to [0, 1]) and distance to it, for every pixel."""
  d = p1 - p0
  length2 = float(d @ d)
  s = ((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / length2
  sc = np.clip(s, 0.0, 1.0)
  dist = np.hypot(yy - (p0[0] + sc * d[0]), xx - (p0[1] + sc * d[1]))
  return s, sc, dist


def _chord(radius, dist):
  """Path length through a cylinder (or sphere cap at the ends) of `radius` at distance `dist`."""
  return 2.0 * np.sqrt(np.maximum(radius**2 - dist**2, 0.0))


def _smooth_noise(rng, shape, scale_px):
  """Band-limited noise, unit std, feature size about `scale_px` pixels."""
  h, w = shape
  fy = np.fft.fftfreq(h)[:, None]
  fx = np.fft.fftfreq(w)[None, :]
  f = np.hypot(fy, fx)
  spectrum = np.exp(-((f * scale_px) ** 2)) * (
    rng.standard_normal((h, w)) + 1j * rng.standard_normal((h, w))
  )
  noise = np.real(np.fft.ifft2(spectrum))
  return noise / (noise.std() + 1e-12)


def _bone_profile(bone: Bone, s):
  """Outer radius and inner (canal) radius along the bone; ends flare and the cortex thins."""
  end = np.exp(-(((1.0 - s) / 0.12) ** 2)) + 0.6 * np.exp(-((s / 0.1) ** 2))
  outer = bone.radius * (1.0 + bone.flare * end)
  inner = outer * (0.55 + 0.3 * end)
  return outer, inner, end


def _draw_bones(yy, xx, bones, rng, size):
  """Attenuation of the bones (cortex + marrow with trabeculae): [H, W]."""
  trabeculae = _smooth_noise(rng, yy.shape, size / 90.0)
  trabeculae = np.abs(trabeculae) ** 0.7  # Sparse bright struts.
  total = np.zeros(yy.shape)
  for bone in bones:
    _, sc, dist = _segment_coords(yy, xx, bone.p0, bone.p1)
    outer, inner, end = _bone_profile(bone, sc)
    shell = _chord(outer, dist) - _chord(inner, dist)
    canal = _chord(inner, dist)
    marrow_mu = _MU_MARROW * (0.6 + 0.8 * end * trabeculae)
    total += _MU_CORTEX * shell + marrow_mu * canal
  return total


def _limb(rng, size):
  """Soft tissue and bones for one random pose: (soft attenuation, bones, limb axis)."""
  yy, xx = np.mgrid[0:size, 0:size] / size
  angle = rng.uniform(-0.5, 0.5)  # Limb axis tilt from vertical (radians).
  axis = np.array([np.cos(angle), np.sin(angle)])
  normal = np.array([-axis[1], axis[0]])
  centre = np.array([0.5, 0.5]) + rng.uniform(-0.06, 0.06, 2)
  joint = centre + axis * rng.uniform(-0.15, 0.15)
  scale = rng.uniform(0.8, 1.15)
  gap = 0.025 * scale
  r_upper = 0.055 * scale
  # The upper bone (humerus-like) ends at the joint; a pair of lower bones starts below it.
  upper = Bone(joint - axis * 0.9, joint - axis * gap, r_upper, rng.uniform(0.5, 0.8))
  spread = rng.uniform(0.035, 0.05) * scale
  lower = [
    Bone(
      joint + axis * 0.9 + normal * spread * 1.3,
      joint + axis * gap + normal * spread,
      0.036 * scale,
      rng.uniform(0.4, 0.7),
    ),
    Bone(
      joint + axis * 0.9 - normal * spread * 1.1,
      joint + axis * gap * 1.6 - normal * spread,
      0.03 * scale,
      rng.uniform(0.5, 0.9),
    ),
  ]
  bones = [upper, *lower]
  _, _, limb_dist = _segment_coords(yy, xx, centre - axis * 2.0, centre + axis * 2.0)
  soft_radius = (
    0.17 + 0.03 * np.sin(4 * (yy * axis[0] + xx * axis[1]) + rng.uniform(0, 6))
  ) * scale
  soft = _MU_SOFT * _chord(soft_radius, limb_dist)
  soft *= 1.0 + 0.08 * _smooth_noise(rng, yy.shape, size / 12.0)  # Fat / muscle inhomogeneity.
  return yy, xx, soft, bones, axis, normal


def _lesion(kind, rng, yy, xx, bones, axis, normal, size):
  """Attenuation change and true mask of one lesion on a random bone: (delta_mu_L, mask)."""
  bone = bones[rng.integers(len(bones))]
  # A place on the bone inside the central part of the image (the bones run past the edges).
  for _ in range(100):
    s = rng.uniform(0.05, 0.95)
    centre = bone.p0 + s * (bone.p1 - bone.p0)
    if np.all((centre > 0.15) & (centre < 0.85)):
      break
  _, sc, dist = _segment_coords(yy, xx, bone.p0, bone.p1)
  outer, inner, _ = _bone_profile(bone, sc)
  inside = dist < outer
  length = float(np.linalg.norm(bone.p1 - bone.p0))
  along = (yy - centre[0]) * axis[0] + (xx - centre[1]) * axis[1]
  across = (yy - centre[0]) * normal[0] + (xx - centre[1]) * normal[1]
  px = 1.0 / size
  if kind == "fracture":
    tilt = rng.uniform(-0.8, 0.8)
    width = rng.uniform(1.2, 2.2) * px
    line = np.abs(along + np.tan(tilt) * across) < width
    mask = line & inside
    # The fracture gap removes bone; a small displacement doubles the cortex on one side.
    delta = -_MU_CORTEX * 0.9 * (_chord(outer, dist) - _chord(inner, dist)) * mask
    shift = rng.uniform(1.5, 3.0) * px
    step = (np.abs(along + np.tan(tilt) * across - 3 * width) < 2.5 * width) & inside
    edge = (np.abs(dist - outer) < shift) & step
    delta = delta + _MU_CORTEX * 0.6 * 0.03 * edge
    mask = mask | edge
  elif kind in ("lytic", "sclerotic"):
    r = rng.uniform(0.5, 0.9) * float(np.mean(outer[inside])) if inside.any() else 0.02
    blob = (along / (r * rng.uniform(1.0, 1.8))) ** 2 + (across / r) ** 2
    texture = 1.0 + 0.3 * _smooth_noise(rng, yy.shape, size / 60.0)
    amount = np.clip(1.0 - blob, 0.0, 1.0) ** 0.5 * texture
    mask = (blob < 1.0) & inside
    sign = -1.0 if kind == "lytic" else 1.0
    delta = sign * (0.9 if kind == "lytic" else 1.8) * amount * mask
  elif kind == "hardware":
    half_len = rng.uniform(0.12, 0.22) * length
    half_w = rng.uniform(0.25, 0.4) * bone.radius
    offset = bone.radius * 0.9
    plate = (np.abs(along) < half_len) & (np.abs(across - offset) < half_w)
    screws = np.zeros_like(plate)
    for t in np.linspace(-0.8, 0.8, rng.integers(3, 6)):
      screws |= (np.abs(along - t * half_len) < 0.006) & (
        np.abs(across - offset / 2) < bone.radius * 1.1
      )
    mask = plate | screws
    delta = 4.0 * mask
  else:
    raise ValueError(f"unknown lesion kind {kind!r}; expected one of {LESION_KINDS}")
  del length
  return delta, mask


def render_phantom(
  seed: int, size: int = 128, lesion: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """One radiograph-like image.

  Args:
    seed: everything (pose, anatomy, exposure, noise, lesion placement) follows from it.
    size: side of the square image in pixels.
    lesion: None for a normal image, or one of `LESION_KINDS`.

  Returns:
    `(image, mask)`: `[size, size]` uint8 image and `[size, size]` uint8 lesion mask (1 inside).
  """
  if size < 16:
    raise ValueError(f"phantom size must be at least 16 pixels, got {size}")
  rng = np.random.default_rng(seed)
  # Render at 2x and downsample: smooth edges, like a detector's pixel integration.
  hi = 2 * size
  yy, xx, soft, bones, axis, normal = _limb(rng, hi)
  total = soft + _draw_bones(yy, xx, bones, rng, hi)
  mask = np.zeros((hi, hi), bool)
  if lesion is not None:
    delta, mask = _lesion(lesion, rng, yy, xx, bones, axis, normal, hi)
    total = np.maximum(total + delta, 0.0)
  exposure = rng.uniform(0.45, 0.75)
  signal = 1.0 - np.exp(-exposure * total)
  # Scatter and the heel effect: a low-frequency veil, brighter on one side.
  veil = 0.05 + 0.03 * (yy * rng.uniform(-1, 1) + xx * rng.uniform(-1, 1))
  signal = veil + (1.0 - veil) * signal
  signal = signal.reshape(size, 2, size, 2).mean(axis=(1, 3))
  mask = mask.reshape(size, 2, size, 2).any(axis=(1, 3))
  gamma = rng.uniform(0.8, 1.25)
  signal = np.clip(signal, 0, 1) ** gamma
  noise = (
    rng.standard_normal(signal.shape) * (0.01 + 0.02 * np.sqrt(signal)) * rng.uniform(0.5, 1.5)
  )
  image = np.clip(signal + noise, 0.0, 1.0)
  return np.round(image * 255).astype(np.uint8), mask.astype(np.uint8)
