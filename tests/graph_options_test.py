"""Grappler's remapper setting: what each value means and that it reaches TensorFlow."""

import pytest
import tensorflow as tf

from milenas_tf import graph_options
from milenas_tf import search
from milenas_tf import training
from milenas_tf.errors import UserInputError


@pytest.fixture
def restore_remapping():
  before = tf.config.optimizer.get_experimental_options().get("remapping", True)
  yield
  tf.config.optimizer.set_experimental_options({"remapping": before})


@pytest.mark.parametrize("spec,enabled", [("on", True), ("off", False)])
def test_setting_reaches_tensorflow(spec, enabled, restore_remapping):
  assert graph_options.apply_remapping(spec) is enabled
  assert tf.config.optimizer.get_experimental_options()["remapping"] is enabled


def test_auto_is_off_without_a_gpu_and_on_with_one(restore_remapping):
  has_gpu = bool(tf.config.list_logical_devices("GPU"))
  assert graph_options.apply_remapping("auto") is has_gpu
  assert tf.config.optimizer.get_experimental_options()["remapping"] is has_gpu


def test_unknown_setting_names_the_choices():
  with pytest.raises(UserInputError, match="Unknown remapping setting 'fast'; use one of "
                     "auto, on, off."):
    graph_options.resolve("fast")


def test_both_recipes_default_to_auto():
  assert search.default_config().remapping == "auto"
  assert training.default_config().remapping == "auto"
  assert training.imagenet_config().remapping == "auto"
