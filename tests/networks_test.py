"""Evaluation networks: published sizes, wiring, auxiliary head, drop path, config."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from milenas_tf.core.errors import UserInputError
from milenas_tf.space import genotypes
from milenas_tf.train import model_size
from milenas_tf.train import networks

EPS = 1e-5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cifar(genotype="DARTS_V2", **kwargs):
  kwargs = {"init_channels": 4, "num_cells": 5, "input_shape": (32, 32, 3), **kwargs}
  return networks.NetworkCIFAR(genotype, **kwargs)


# Parameter counts as the DARTS and MiLeNAS papers report them (CIFAR-10, C=36,
# 20 cells; trainable weights without the auxiliary head): MiLeNAS Table 1.
@pytest.mark.parametrize("name,published_millions", [
    ("DARTS_V2", 3.35), ("MILENAS_3_87M", 3.87), ("MILENAS_2_86M", 2.86),
    ("MILENAS_2_09M", 2.09)])
def test_cifar_parameter_counts_match_the_papers(name, published_millions):
  model = networks.build_network(name, "cifar10")
  assert (model.init_channels, model.num_cells) == (36, 20)
  assert round(model_size.count_parameters(model) / 1e6, 2) == published_millions


def test_imagenet_network_matches_the_published_size_and_shapes():
  """DARTS Table 2: DARTS_V2 in the mobile setting has 4.7M parameters, 574M mult-adds."""
  model = networks.build_network("DARTS_V2", "imagenet")
  assert round(model_size.count_parameters(model) / 1e6, 1) == 4.7
  # The paper does not name its counting convention; ours counts convolutions and
  # the classifier only (model_size's docstring), so it may fall a little short of
  # the published figure, never above it.
  mult_adds = model_size.count_mult_adds(model)
  assert 0.9 < mult_adds / 574e6 <= 1.0, mult_adds
  logits = model(tf.zeros((2, 224, 224, 3)), training=False)
  assert logits.shape == (2, 1000)


def test_mult_adds_equal_a_hand_count():
  model = keras.Sequential([
      keras.Input((8, 8, 3)),
      keras.layers.Conv2D(4, 3, padding="same", use_bias=False),
      keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False),
      keras.layers.BatchNormalization(),
      keras.layers.GlobalAveragePooling2D(),
      keras.layers.Dense(10)])
  conv = 8 * 8 * 4 * (3 * 3 * 3)
  depthwise = 8 * 8 * 4 * (3 * 3)
  dense = 4 * 10
  assert model_size.count_mult_adds(model, (8, 8, 3)) == conv + depthwise + dense


def test_output_shapes_and_auxiliary_head_only_in_training():
  model = tiny_cifar()
  images = tf.random.normal((3, 32, 32, 3))
  logits, aux = model(images, training=True)
  assert logits.shape == aux.shape == (3, 10)
  assert logits.dtype == aux.dtype == tf.float32
  inference = model(images, training=False)
  assert isinstance(inference, tf.Tensor) and inference.shape == (3, 10)
  no_aux = tiny_cifar(auxiliary=False)
  assert isinstance(no_aux(images, training=True), tf.Tensor)
  assert no_aux.auxiliary_head is None


def test_fashion_mnist_setting_runs_on_28x28_grey_images():
  model = networks.build_network("MILENAS_3_87M", "fashion_mnist", init_channels=4,
                                 num_cells=3)
  logits, aux = model(tf.zeros((2, 28, 28, 1)), training=True)
  assert logits.shape == aux.shape == (2, 10)
  assert model.auxiliary_head.pool_strides == (2, 2)  # 7x7 -> 2x2


def test_cell_wiring_against_numpy():
  """A cell of identity edges sums and concatenates exactly as its genotype says."""
  skip = [("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0),
          ("skip_connect", 2), ("skip_connect", 3), ("skip_connect", 1),
          ("skip_connect", 2), ("skip_connect", 4)]
  genotype = genotypes.Genotype(skip, (2, 3, 4, 5), skip, (2, 3, 4, 5))
  cell = networks.EvalCell(genotype, channels=3, reduction=False, reduction_prev=False)
  rng = np.random.default_rng(0)
  s0, s1 = rng.normal(size=(2, 5, 5, 4)), rng.normal(size=(2, 5, 5, 6))
  cell.build((s0.shape, s1.shape))
  got = cell(tf.constant(s0, tf.float32), tf.constant(s1, tf.float32)).numpy()

  def preprocess(x, layer):  # ReLU -> 1x1 conv -> BN with fresh (0, 1) statistics
    return np.maximum(x, 0) @ layer.kernel.numpy()[0, 0] / np.sqrt(1 + EPS)

  h = [preprocess(s0, cell.preprocess0), preprocess(s1, cell.preprocess1)]
  h.append(h[0] + h[1])
  h.append(h[0] + h[2])
  h.append(h[3] + h[1])
  h.append(h[2] + h[4])
  np.testing.assert_allclose(got, np.concatenate(h[2:], axis=-1), rtol=1e-5, atol=1e-5)


def test_drop_path_is_exact_at_zero_and_unbiased_above():
  x = tf.ones((20000, 1, 1, 2))
  seed = keras.random.SeedGenerator(3)
  np.testing.assert_array_equal(networks.drop_path(x, tf.constant(0.0), seed), x)
  y = networks.drop_path(x, tf.constant(0.3), seed).numpy()
  kept = y[:, 0, 0, 0] > 0
  np.testing.assert_array_equal(y[:, 0, 0, 0], y[:, 0, 0, 1])  # whole samples
  np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
  assert abs(kept.mean() - 0.7) < 0.02
  assert abs(y.mean() - 1.0) < 0.03


def test_drop_path_spares_identity_edges():
  skip = [("skip_connect", 0), ("skip_connect", 1)] * 4
  sep = [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)] * 4
  rng = np.random.default_rng(1)
  s = tf.constant(rng.normal(size=(16, 6, 6, 4)), tf.float32)
  for pairs, changes in ((skip, False), (sep, True)):
    genotype = genotypes.Genotype(pairs, (2, 3, 4, 5), pairs, (2, 3, 4, 5))
    cell = networks.EvalCell(genotype, 4, reduction=False, reduction_prev=False)
    cell.build((s.shape, s.shape))
    plain = cell(s, s, tf.constant(0.0), training=True).numpy()
    dropped = cell(s, s, tf.constant(0.5), training=True).numpy()
    assert (not np.allclose(plain, dropped)) == changes


def test_reduction_cells_halve_and_double():
  model = tiny_cifar(num_cells=6)
  assert networks.reduction_indices(6) == (2, 4)
  assert [c.reduction for c in model.cells] == [False, False, True, False, True, False]
  assert [c.channels for c in model.cells] == [4, 4, 8, 8, 16, 16]
  assert model.classifier.kernel.shape == (16 * 4, 10)


def test_config_round_trip_gives_the_same_function():
  model = tiny_cifar("MILENAS_2_86M", num_classes=7)
  clone = networks.NetworkCIFAR.from_config(model.get_config())
  clone.set_weights(model.get_weights())
  images = tf.random.normal((2, 32, 32, 3))
  np.testing.assert_allclose(clone(images).numpy(), model(images).numpy(), atol=1e-6)
  assert clone.genotype == model.genotype


def test_largest_channels_under_budget_bisects_to_the_boundary():
  kwargs = {"num_cells": 3, "input_shape": (64, 64, 3)}
  def cost(c):
    return model_size.count_mult_adds(
        networks.build_network("DARTS_V2", "imagenet", c, auxiliary=False, **kwargs))
  budget = cost(6)
  seen = []
  found = model_size.largest_channels_under_budget(
      "DARTS_V2", "imagenet", budget, max_channels=16,
      progress=lambda c, m: seen.append(c), **kwargs)
  assert found == 6 and cost(8) > budget
  assert model_size.largest_channels_under_budget(
      "DARTS_V2", "imagenet", budget - 1, max_channels=16, **kwargs) == 4
  assert len(seen) <= 6
  model = networks.build_network("DARTS_V2", "imagenet", 8, auxiliary=False, **kwargs)
  with pytest.raises(UserInputError, match="over the budget"):
    model_size.check_budget(model, budget)
  assert model_size.check_budget(model, None) == 0


@pytest.mark.parametrize("call,message", [
    (lambda: networks.build_network("DARTS_V2", "svhn"), "Unknown setting"),
    (lambda: networks.build_network("NO_SUCH", "cifar10"), "NO_SUCH"),
    (lambda: tiny_cifar(num_cells=2), "at least 3"),
    (lambda: networks.build_network("DARTS_V2", "imagenet", 5, 3), "even init_channels"),
    (lambda: tiny_cifar(input_shape=(16, 16, 3)), "6x6"),
    (lambda: networks.build_network("DARTS_V2", "imagenet", 8, 3, input_shape=(8, 8, 3)),
     "too small"),
])
def test_bad_input_is_a_one_line_error(call, message):
  with pytest.raises(UserInputError, match=message):
    call()


def test_count_script_prints_json_and_one_line_errors():
  script = os.path.join(ROOT, "bin", "count.py")
  args = [sys.executable, script, "--genotype=MILENAS_2_09M", "--setting=cifar10",
          "--init_channels=6", "--layers=4"]
  out = subprocess.run(args + ["--json"], capture_output=True, text=True, check=True)
  result = json.loads(out.stdout)
  model = networks.build_network("MILENAS_2_09M", "cifar10", 6, 4)
  assert result["params"] == model_size.count_parameters(model)
  assert result["mult_adds"] == model_size.count_mult_adds(model)
  assert (result["init_channels"], result["num_cells"]) == (6, 4)
  bad = subprocess.run(args[:2] + ["--genotype=/no/such.json"], capture_output=True,
                       text=True)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1].startswith("error:")
  assert "Traceback" not in bad.stderr
