"""Mixed precision: float16 compute with float32 variables, loss scaling around the
clipped, decayed step, overflow skipping, and "auto" staying float32 on a CPU."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from milenas_tf.core import precision
from milenas_tf.core.errors import UserInputError
from milenas_tf.data import datasets
from milenas_tf.train import config as train_config
from milenas_tf.train import model as train_model


def _model(policy):
  config = train_config.default_config()
  config.update(dict(dataset="fashion_mnist", setting="fashion_mnist", init_channels=4,
                     num_cells=3, grad_clip=0.5, weight_decay=0.01, learning_rate=0.1,
                     precision=policy))
  return train_model.build_train_model(config, datasets.dataset_info("fashion_mnist"),
                                       steps_per_epoch=10)


def _batch():
  rng = np.random.default_rng(0)
  return (tf.constant(rng.normal(size=(8, 28, 28, 1)), tf.float32),
          tf.constant(rng.integers(0, 10, size=8), tf.int32))


def test_auto_is_float32_without_a_gpu_and_names_are_checked():
  assert not tf.config.list_logical_devices("GPU")
  assert precision.resolve("auto") == "float32"
  with pytest.raises(UserInputError, match="Unknown precision 'float16'"):
    precision.resolve("float16")


def test_mixed_float16_computes_in_float16_and_keeps_float32_where_it_matters():
  model = _model("mixed_float16")
  assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
  network = model.network
  assert {v.dtype for v in network.variables} == {"float32", "int64"}  # int64: seeds
  assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
  x, _ = _batch()
  s0, s1 = network._stem(x, training=False)
  assert s1.dtype == tf.float16
  assert network.cells[0](s0, s1, network.drop_path_rate).dtype == tf.float16
  logits, aux = network(x, training=True)
  assert logits.dtype == tf.float32 and aux.dtype == tf.float32


def test_mixed_float16_step_matches_the_float32_step():
  """The scale is divided out before clipping: the update is the float32 one."""
  full, mixed = _model("float32"), _model("mixed_float16")
  mixed.network.set_weights(full.network.get_weights())
  before = [v.numpy().astype(np.float64) for v in full.network.trainable_variables]
  x, y = _batch()
  full.train_on_batch(x, y)
  mixed.train_on_batch(x, y)
  delta = lambda model: np.concatenate([
      (v.numpy() - w).ravel() for v, w in zip(model.network.trainable_variables, before)])
  want, got = delta(full), delta(mixed)
  assert np.linalg.norm(want) > 1e-3
  # float16 activations through batch norm of 8 images: a few percent apart. Scaling
  # left in before clipping would shrink the update 2**15-fold.
  assert np.linalg.norm(got - want) < 0.1 * np.linalg.norm(want)
  assert float(mixed.optimizer.iterations) == 1


def test_an_overflowing_step_is_skipped_and_the_scale_halved():
  model = _model("mixed_float16")
  model.optimizer.dynamic_scale.assign(3e38)  # the scaled loss overflows
  before = [v.numpy() for v in model.network.trainable_variables]
  model.train_on_batch(*_batch())
  for v, w in zip(model.network.trainable_variables, before):
    np.testing.assert_array_equal(v.numpy(), w)
  assert float(model.optimizer.dynamic_scale) == pytest.approx(1.5e38)
  assert float(model.optimizer.iterations) == 0
