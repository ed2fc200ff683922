"""Grappler settings: what each value means and that it reaches TensorFlow."""

import pytest
import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from milenas_tf.core import graph_options
from milenas_tf.core.errors import UserInputError
from milenas_tf.search import config as search_config
from milenas_tf.train import config as train_config

RewriterConfig = rewriter_config_pb2.RewriterConfig


@pytest.fixture
def restore_options():
  before = tf.config.optimizer.get_experimental_options().get("remapping", True)
  yield
  # Also resets the function-call options `apply` replaced.
  tf.config.optimizer.set_experimental_options({"remapping": before})


@pytest.mark.parametrize("spec,enabled", [("on", True), ("off", False)])
def test_remapping_reaches_tensorflow(spec, enabled, restore_options):
  assert graph_options.apply(spec) is enabled
  assert tf.config.optimizer.get_experimental_options()["remapping"] is enabled
  expected = RewriterConfig.ON if enabled else RewriterConfig.OFF
  assert graph_options.rewrite_options().remapping == expected


def test_auto_is_off_without_a_gpu_and_on_with_one(restore_options):
  has_gpu = bool(tf.config.list_logical_devices("GPU"))
  assert graph_options.apply("auto") is has_gpu
  assert tf.config.optimizer.get_experimental_options()["remapping"] is has_gpu


@pytest.mark.parametrize("spec,rounds,memory", [
    ("light", RewriterConfig.ONE, RewriterConfig.NO_MEM_OPT),
    ("full", RewriterConfig.DEFAULT_NUM_ITERS, RewriterConfig.DEFAULT_MEM_OPT)])
def test_graph_optimizer_reaches_tensorflow(spec, rounds, memory, restore_options):
  graph_options.apply("off", "full" if spec == "light" else "light")  # the other first
  graph_options.apply("off", spec)
  options = graph_options.rewrite_options()
  assert (options.meta_optimizer_iterations, options.memory_optimization) == (rounds, memory)
  assert options.remapping == RewriterConfig.OFF


def test_functions_compute_the_same_values_either_way(restore_options):
  x = tf.random.stateless_normal((4, 8, 8, 3), seed=(1, 2))
  kernel = tf.random.stateless_normal((3, 3, 3, 5), seed=(3, 4))

  def values():
    # A fresh function: the setting applies when a function first runs.
    @tf.function
    def f(x):
      with tf.GradientTape() as tape:
        tape.watch(kernel)
        y = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"))
        loss = tf.reduce_sum(y * y)
      return loss, tape.gradient(loss, kernel)
    return f(x)

  graph_options.apply("off", "light")
  light = values()
  graph_options.apply("off", "full")
  full = values()
  for a, b in zip(light, full):
    assert a.numpy() == pytest.approx(b.numpy(), rel=1e-6)


def test_unknown_settings_name_the_choices():
  with pytest.raises(UserInputError, match="Unknown remapping setting 'fast'; choose one of "
                     "auto, on, off."):
    graph_options.resolve("fast")
  with pytest.raises(UserInputError, match="Unknown graph_optimizer setting 'none'; choose "
                     "one of light, full."):
    graph_options.apply("off", "none")


def test_recipes_default_to_auto_remapping_and_the_light_optimizer():
  for config in (search_config.default_config(), train_config.default_config(),
                 train_config.imagenet_config()):
    assert (config.remapping, config.graph_optimizer) == ("auto", "light")
