"""Stage 1 networks: structure generator, texture generator and their patch discriminators.

gen_s([E(I, M), E(S, M), M]) -> S_hat   (the structure, from the known image and structure)
gen_t([E(I, M), S_hat, M])   -> I_hat   (the texture, on top of the reconstructed structure)
disc_s(S) and disc_t(I)      -> a map of real/fake logits (PatchGAN, spectral normalisation)

E(X, M) = X * M hides the hole (inputs are in [-1, 1], so the hole reads as mid grey). Generators
are encoder (strided convolutions) -> residual blocks with dilation -> decoder (nearest upsampling
+ convolution) with skip connections from the encoder, instance norm, and a tanh output; in the
spirit of StructureFlow (Ren et al., ICCV 2019) but with plain convolutions.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from alenn_jax import masks

# Sizes: width (channels of the first layer), depth (stride-2 downsamplings), residual blocks.
SIZES = {
  "full": dict(width=64, depth=3, num_res=7, disc_width=64),  # Near StructureFlow's (~36 M).
  "small": dict(width=16, depth=3, num_res=2, disc_width=16),  # For CPU runs.
  "smoke": dict(width=8, depth=2, num_res=1, disc_width=8),  # For tests.
}


def model_config(size: str) -> ml_collections.ConfigDict:
  if size not in SIZES:
    raise ValueError(f"unknown model size {size!r}; use one of {sorted(SIZES)}.")
  config = ml_collections.ConfigDict(dict(SIZES[size]))
  config.max_width = 512  # Channel cap of the generators' deepest layers.
  config.dilation = 2  # Dilation of the residual blocks' first convolution.
  # How the generators' convolutions pad: "reflect" (mirrored borders, as StructureFlow and
  # EdgeConnect pad theirs, so a window at the image border is not repainted against zeros), or
  # "zero". BENCHMARKS.md has what it does to the LE maps. The smoke model (tests) pads with zeros:
  # reflection doubles the compile and run time of such tiny models.
  config.padding = "zero" if size == "smoke" else "reflect"
  config.disc_layers = 3  # Stride-2 layers of the discriminators.
  return config


PADDINGS = ("zero", "reflect")


def _conv(x, features, kernel, *, name, padding, strides=1, dilation=1):
  """A convolution whose output is `ceil(input / strides)` (as 'SAME'), padded with zeros or by
  reflection. The parameters are the same either way."""
  if padding == "zero":
    return nn.Conv(
      features, (kernel, kernel), strides=strides, kernel_dilation=dilation, name=name
    )(x)
  if padding != "reflect":
    raise ValueError(f"model.padding={padding!r}; use one of {', '.join(PADDINGS)}.")
  total = dilation * (kernel - 1) + 1 - strides  # What 'SAME' pads, for sides divisible by strides.
  lo, hi = total // 2, total - total // 2
  x = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)), mode="reflect")
  # The unpadded ('VALID') convolution of the reflected input, computed as one with `strides`
  # zeros more on every side and cropped: XLA's CPU convolution runs several times faster so.
  extent = dilation * (kernel - 1) + 1
  height, width = (x.shape[1] - extent) // strides + 1, (x.shape[2] - extent) // strides + 1
  y = nn.Conv(
    features,
    (kernel, kernel),
    strides=strides,
    kernel_dilation=dilation,
    padding=((strides, 0), (strides, 0)),
    name=name,
  )(x)
  return y[:, 1 : 1 + height, 1 : 1 + width]


class ResidualBlock(nn.Module):
  features: int
  dilation: int
  padding: str = "zero"

  @nn.compact
  def __call__(self, x):
    y = _conv(
      x, self.features, 3, dilation=self.dilation, name="conv_dilated", padding=self.padding
    )
    y = nn.relu(nn.InstanceNorm(name="norm1")(y))
    y = _conv(y, self.features, 3, name="conv", padding=self.padding)
    y = nn.InstanceNorm(name="norm2")(y)
    return x + y


class Generator(nn.Module):
  """Encoder, residual blocks, decoder with skips: `[B, H, W, Cin]` -> `[B, H, W, 1]` in [-1, 1]."""

  width: int
  depth: int
  num_res: int
  max_width: int = 512
  dilation: int = 2
  out_channels: int = 1
  padding: str = "zero"  # Or "reflect": see model_config.

  @nn.compact
  def __call__(self, x):
    factor = 2**self.depth
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(
        f"generator input {x.shape[1]}x{x.shape[2]} must be divisible by 2**depth = {factor}; "
        "change data.image_size or the model depth."
      )
    channels = [min(self.width * 2**i, self.max_width) for i in range(self.depth + 1)]
    pad = self.padding
    h = nn.relu(
      nn.InstanceNorm(name="stem_norm")(_conv(x, channels[0], 7, name="stem", padding=pad))
    )
    skips = [h]
    for i in range(self.depth):
      h = _conv(h, channels[i + 1], 4, strides=2, name=f"down{i}", padding=pad)
      h = nn.relu(nn.InstanceNorm(name=f"down{i}_norm")(h))
      skips.append(h)
    for r in range(self.num_res):
      h = ResidualBlock(channels[-1], self.dilation, pad, name=f"res{r}")(h)
    for i in reversed(range(self.depth)):
      b, hh, ww, c = h.shape
      h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), method="nearest")
      h = jnp.concatenate([h, skips[i]], axis=-1)
      h = _conv(h, channels[i], 3, name=f"up{i}", padding=pad)
      h = nn.relu(nn.InstanceNorm(name=f"up{i}_norm")(h))
    return jnp.tanh(_conv(h, self.out_channels, 7, name="head", padding=pad))


class PatchDiscriminator(nn.Module):
  """PatchGAN with spectral normalisation: `[B, H, W, C]` -> `[B, h, w, 1]` logits."""

  width: int
  num_layers: int = 3

  @nn.compact
  def __call__(self, x, *, update_stats: bool):
    def conv(features, strides, name):
      return nn.SpectralNorm(
        nn.Conv(features, (4, 4), strides=strides, name=name), name=f"{name}_sn"
      )

    h = x
    for i in range(self.num_layers):
      h = conv(min(self.width * 2**i, 512), (2, 2), f"down{i}")(h, update_stats=update_stats)
      h = nn.leaky_relu(h, 0.2)
    h = conv(min(self.width * 2**self.num_layers, 512), (1, 1), "conv")(
      h, update_stats=update_stats
    )
    h = nn.leaky_relu(h, 0.2)
    return conv(1, (1, 1), "logits")(h, update_stats=update_stats)


def build(config: ml_collections.ConfigDict):
  """(gen_s, gen_t, disc_s, disc_t) for `config` (a `model_config`)."""
  gen = dict(
    width=config.width,
    depth=config.depth,
    num_res=config.num_res,
    max_width=config.max_width,
    dilation=config.dilation,
    padding=config.get("padding", "zero"),  # Runs stored before the field: zero padding.
  )
  disc = dict(width=config.disc_width, num_layers=config.disc_layers)
  return Generator(**gen), Generator(**gen), PatchDiscriminator(**disc), PatchDiscriminator(**disc)


def receptive_field(config: ml_collections.ConfigDict) -> int:
  """Side (px) of the input region one output pixel of a generator of `config` (a
  `model_config`) is computed from through its convolutions, the largest over output positions
  (nearest-neighbour upsampling makes it depend on a pixel's position modulo 2**depth): 52 px for
  `smoke`, 148 for `small`, 388 for `full`. Instance norm adds a weak dependence on the whole
  input; the two-step repainting chains two generators, so strictly it reaches twice as far, but
  how much an output depends on an input falls off well inside this side (BENCHMARKS.md,
  `context`)."""
  depth, reach = config.depth, config.num_res * (config.dilation + 1)

  def to_input(lo, hi, level):  # Through the encoder (4x4 stride-2 convs, 1 px before) and stem.
    for _ in range(level):
      lo, hi = 2 * lo - 1, 2 * hi + 2
    return lo - 3, hi + 3

  side = 0
  for phase in range(2**depth):
    lo, hi = phase - 3, phase + 3  # The head (7x7) at the output's own scale.
    spans = []
    for level in range(depth):  # Each decoder step: a 3x3 conv over [upsampled, skip].
      lo, hi = lo - 1, hi + 1
      spans.append(to_input(lo, hi, level))  # The skip from the encoder at this level.
      lo, hi = lo // 2, hi // 2  # Nearest-neighbour upsampling: output o reads input o // 2.
    spans.append(to_input(lo - reach, hi + reach, depth))  # The residual blocks.
    side = max(side, max(h for _, h in spans) - min(lo for lo, _ in spans) + 1)
  return side


def generator_inputs_s(image, structure, mask):
  """[E(I, M), E(S, M), M] for gen_s."""
  return jnp.concatenate([image * mask, structure * mask, mask], axis=-1)


def generator_inputs_t(image, structure_hat, mask):
  """[E(I, M), S_hat, M] for gen_t."""
  return jnp.concatenate([image * mask, structure_hat, mask], axis=-1)


def inpaint(gen_s: Generator, gen_t: Generator, params, images, structure, mask):
  """(S_hat, I_hat, composite) of the two-step repainting, all `[B, H, W, 1]` in [-1, 1].

  Args:
    gen_s, gen_t: the generator modules.
    params: {"gen_s": ..., "gen_t": ...} their parameters.
    images, structure: `[B, H, W, 1]` images and their RTV structure.
    mask: `[B, H, W, 1]`, 1 = keep, 0 = hole; the composite keeps the known pixels exactly.
  """
  s_hat = gen_s.apply({"params": params["gen_s"]}, generator_inputs_s(images, structure, mask))
  i_hat = gen_t.apply({"params": params["gen_t"]}, generator_inputs_t(images, s_hat, mask))
  return s_hat, i_hat, masks.composite(images, i_hat, mask)


def generator_shapes(config: ml_collections.ConfigDict, image_size: int):
  """{"gen_s": ..., "gen_t": ...} parameter shapes (`jax.ShapeDtypeStruct`s) of `config`'s
  generators at `image_size`, computed without allocating parameters."""
  gen_s, gen_t, _, _ = build(config)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  key = jax.random.PRNGKey(0)
  return jax.eval_shape(
    lambda x: {"gen_s": gen_s.init(key, x)["params"], "gen_t": gen_t.init(key, x)["params"]}, x
  )
