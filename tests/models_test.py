"""Stage 2 backbones: published parameter counts, forward passes, torchvision weight loading."""

import os
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from alenn_jax import models
from alenn_jax.classification import classifier_setup
from alenn_jax.errors import UserInputError
from alenn_jax.models import inpainting, layers
from configs import stage2
from tests import torchvision_parity


def count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def abstract_variables(model, size, channels=3):
  x = jnp.zeros((1, size, size, channels), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))


class ParameterCountTest(parameterized.TestCase):
  @parameterized.parameters(
    ("vgg19", {}, 224, 143_667_240),
    ("resnet50", {}, 224, 25_557_032),
    ("densenet121", {}, 224, 7_978_856),
    ("inception_v3", {}, 299, 27_161_264),
    ("inception_v3", {"aux_logits": False}, 299, 23_834_568),
  )
  def test_published_counts_with_1000_classes(self, name, overrides, size, expected):
    model = models.get_backbone(name, 1000, **overrides)
    self.assertEqual(count(abstract_variables(model, size)["params"]), expected)

  def test_unknown_backbone_and_field_are_refused(self):
    with self.assertRaisesRegex(ValueError, "unknown backbone 'vgg16'.*resnet50"):
      models.get_backbone("vgg16", 1)
    with self.assertRaisesRegex(ValueError, "no field.*depth.*stage_sizes"):
      models.get_backbone("resnet50", 1, depth=3)


class ForwardTest(parameterized.TestCase):
  @parameterized.parameters(
    ("vgg19", 32, 1), ("resnet50", 32, 3), ("densenet121", 32, 1), ("inception_v3", 40, 3)
  )
  def test_reduced_variant_runs_train_and_eval(self, name, size, channels):
    overrides = stage2._REDUCED["smoke"][name]
    model = models.get_backbone(name, 1, **overrides)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, size, size, channels)), jnp.float32)
    # Jitted, as the trainers run them (op by op, Inception-v3 alone took over a minute).
    variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(x)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    self.assertEqual(logits.shape, (2, 1))
    self.assertTrue(np.all(np.isfinite(logits)))
    train = jax.jit(
      lambda v, x: model.apply(
        v, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)}, mutable=["batch_stats"]
      )
    )
    out, updates = train(variables, x)
    if name == "inception_v3":
      logits, aux = out
      self.assertEqual(aux.shape, (2, 1))
    else:
      logits = out
    self.assertEqual(logits.shape, (2, 1))
    if name != "vgg19":  # VGG has no BatchNorm.
      before = jax.tree.leaves(variables["batch_stats"])
      after = jax.tree.leaves(updates["batch_stats"])
      self.assertTrue(any(not np.allclose(a, b) for a, b in zip(before, after, strict=True)))

  def test_inception_at_published_size_reaches_8x8(self):
    model = models.get_backbone("inception_v3", 1, width=1 / 16)
    x = jnp.zeros((1, 299, 299, 3))
    shapes = jax.eval_shape(
      lambda: model.init_with_output(
        jax.random.PRNGKey(0), x, train=False, capture_intermediates=True
      )
    )[1]["intermediates"]
    self.assertEqual(shapes["Mixed_7c"]["__call__"][0].shape[1:3], (8, 8))

  def test_adaptive_pool_matches_torch_bins(self):
    x = jnp.arange(5.0).reshape(1, 5, 1, 1)
    out = layers.adaptive_avg_pool(jnp.tile(x, (1, 1, 3, 1)), 3, 1)
    # torch: bins [0, 2), [1, 4), [3, 5) of 5 rows.
    np.testing.assert_allclose(np.asarray(out)[0, :, 0, 0], [0.5, 2.0, 3.5])


class TorchvisionWeightsTest(parameterized.TestCase):
  @parameterized.parameters(
    ("vgg19", ("features.0.weight", "features.34.bias", "classifier.6.weight")),
    (
      "resnet50",
      (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.downsample.0.weight",
        "layer4.2.bn3.bias",
        "fc.weight",
      ),
    ),
    (
      "densenet121",
      (
        "features.conv0.weight",
        "features.denseblock1.denselayer1.norm1.weight",
        "features.transition3.conv.weight",
        "features.norm5.running_mean",
        "classifier.bias",
      ),
    ),
    (
      "inception_v3",
      (
        "Conv2d_1a_3x3.conv.weight",
        "Mixed_5b.branch_pool.bn.running_mean",
        "Mixed_7c.branch3x3dbl_3b.conv.weight",
        "AuxLogits.conv1.conv.weight",
        "AuxLogits.fc.weight",
        "fc.bias",
      ),
    ),
  )
  def test_parameter_names_are_torchvision_names(self, name, expected):
    size = 299 if name == "inception_v3" else 224
    model = models.get_backbone(name, 1000)
    state = layers.torchvision_shapes(abstract_variables(model, size))
    for key in expected:
      self.assertIn(key, state)
    if name == "vgg19":
      self.assertEqual(state["classifier.0.weight"], (4096, 25088))
      self.assertEqual(state["features.0.weight"], (64, 3, 3, 3))

  def test_round_trip_and_grey_first_layer(self):
    model = models.get_backbone("resnet50", 1, **stage2._REDUCED["smoke"]["resnet50"])
    x3 = jnp.ones((1, 32, 32, 3))
    source = model.init(jax.random.PRNGKey(1), x3, train=False)
    target = model.init(jax.random.PRNGKey(2), jnp.ones((1, 32, 32, 1)), train=False)
    state = layers.torchvision_state(source)
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "w.npz")
      np.savez(path, **state)
      loaded = layers.load_torchvision(target, path, models.HEADS["resnet50"])
    # RGB filters summed for a grey input: a grey image gives the same output as its RGB copy.
    grey = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 1)), jnp.float32)
    np.testing.assert_allclose(
      model.apply(loaded, grey, train=False) - loaded["params"]["fc"]["bias"],
      model.apply(
        source | {"params": source["params"] | {"fc": loaded["params"]["fc"]}},
        jnp.tile(grey, (1, 1, 1, 3)),
        train=False,
      )
      - loaded["params"]["fc"]["bias"],
      atol=1e-4,
    )
    # The head keeps its own initial values.
    np.testing.assert_array_equal(
      loaded["params"]["fc"]["kernel"], target["params"]["fc"]["kernel"]
    )

  def test_missing_file_key_or_shape_is_a_clear_error(self):
    model = models.get_backbone("resnet50", 1, **stage2._REDUCED["smoke"]["resnet50"])
    variables = model.init(jax.random.PRNGKey(0), jnp.ones((1, 32, 32, 1)), train=False)
    state = layers.torchvision_state(variables)
    with tempfile.TemporaryDirectory() as tmp:
      with self.assertRaisesRegex(UserInputError, "no such file"):
        layers.load_torchvision(variables, os.path.join(tmp, "absent.npz"))
      missing = {k: v for k, v in state.items() if k != "layer2.0.conv2.weight"}
      np.savez(os.path.join(tmp, "m.npz"), **missing)
      with self.assertRaisesRegex(
        UserInputError, "missing key 'layer2.0.conv2.weight'.*expected shape"
      ):
        layers.load_torchvision(variables, os.path.join(tmp, "m.npz"))
      wrong = dict(state, **{"bn1.weight": np.zeros(7, np.float32)})
      np.savez(os.path.join(tmp, "s.npz"), **wrong)
      with self.assertRaisesRegex(
        UserInputError, "'bn1.weight' has shape \\(7,\\), expected \\(4,\\)"
      ):
        layers.load_torchvision(variables, os.path.join(tmp, "s.npz"))


if __name__ == "__main__":
  absltest.main()


class GeneratorPaddingTest(parameterized.TestCase):
  """Stage 1 generators pad with zeros or by reflection; the parameters are the same either way."""

  def test_reflect_padding_has_no_border_effect_and_the_same_parameters(self):
    self.assertEqual(inpainting.model_config("small").padding, "reflect")  # The default.
    config = inpainting.model_config("smoke")
    config.padding = "zero"
    zero_gen = inpainting.build(config)[0]
    config.padding = "reflect"
    reflect_gen = inpainting.build(config)[0]
    x = jnp.full((1, 32, 32, 3), 0.3)  # A uniform image: any border in the output is padding's.
    params = zero_gen.init(jax.random.PRNGKey(0), x)
    self.assertEqual(
      jax.tree.map(jnp.shape, params),
      jax.tree.map(jnp.shape, reflect_gen.init(jax.random.PRNGKey(0), x)),
    )
    reflected = reflect_gen.apply(params, x)
    zeroed = zero_gen.apply(params, x)
    self.assertEqual(reflected.shape, (1, 32, 32, 1))
    self.assertLess(float(jnp.ptp(reflected)), 1e-5)  # Uniform in, uniform out.
    self.assertGreater(float(jnp.ptp(zeroed)), 1e-3)  # Zero padding marks the border.

  def test_unknown_padding_is_refused(self):
    config = inpainting.model_config("smoke")
    config.padding = "circular"
    with self.assertRaisesRegex(ValueError, "model.padding='circular'"):
      inpainting.build(config)[0].init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


class ReceptiveFieldTest(parameterized.TestCase):
  @parameterized.named_parameters(("smoke", {}), ("deeper_dilated", {"depth": 3, "dilation": 3}))
  def test_is_the_widest_input_support_of_an_output_pixel(self, overrides):
    config = inpainting.model_config("smoke")
    config.update(overrides)
    side = inpainting.receptive_field(config)
    gen = inpainting.build(config)[0]
    factor = 2**config.depth
    size = -(-(side + 16) // factor) * factor
    x = jax.random.normal(jax.random.PRNGKey(0), (1, size, size, 3))
    params = gen.init(jax.random.PRNGKey(1), x)
    centre = size // 2

    def no_norm(next_fun, args, kwargs, context):  # Instance norm couples every pixel weakly.
      if isinstance(context.module, nn.InstanceNorm):
        return args[0]
      return next_fun(*args, **kwargs)

    def row(x):  # One output pixel of each position modulo 2**depth.
      with nn.intercept_methods(no_norm):
        return gen.apply(params, x)[0, centre : centre + factor, centre, 0]

    # Jitted: quicker than op by op (the deeper network 8 s -> 5 s alone).
    jacobian = np.abs(np.asarray(jax.jit(jax.jacrev(row))(x))).sum(axis=-1)[:, 0]  # [factor, H, W]
    supports = []
    for k in range(factor):
      ys, xs = np.nonzero(jacobian[k])
      supports.append((ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))
    self.assertEqual(max(max(s) for s in supports), side)
    self.assertEqual(inpainting.receptive_field(inpainting.model_config("small")), 148)


class TorchvisionParityTest(parameterized.TestCase):
  """A grey image through the project's pretrained path (weights loaded from torchvision names,
  inputs normalised as the weights expect) gives torchvision's logits for its RGB copy
  (tests/data/make_torchvision_fixture.py wrote them with torch)."""

  @parameterized.parameters(*torchvision_parity.CASES)
  def test_logits_equal_torchvisions(self, name):
    side, _, overrides = torchvision_parity.CASES[name]
    config = stage2.get_config(f"full,backbone={name}")
    config.data.image_size = side
    config.model.update(overrides)
    with tempfile.TemporaryDirectory() as tmp:
      config.model.pretrained = os.path.join(tmp, "weights.npz")
      model = models.classifier_from_config(config)
      static = classifier_setup.ClassifierSetup.from_config(config)
      abstract = abstract_variables(model, side, static.in_channels)
      np.savez(
        config.model.pretrained,
        **torchvision_parity.weights(layers.torchvision_shapes(abstract)),
      )
      # Every array from the file, the heads too (the project keeps its own): the whole network
      # is compared.
      variables = layers.load_torchvision(abstract, config.model.pretrained)
    grey = torchvision_parity.grey_batch(side)
    batch = {"image": jnp.asarray(grey[..., None] * 2.0 - 1.0)}
    # Op by op: at these sizes that is quicker than compiling the whole network.
    logits = model.apply(variables, classifier_setup.model_inputs(static, batch), train=False)
    with np.load(os.path.join(os.path.dirname(__file__), "data", torchvision_parity.FIXTURE)) as f:
      expected = f[f"{name}/logits"]
    np.testing.assert_allclose(
      np.asarray(logits), expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max()
    )
