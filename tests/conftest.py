"""Fixtures shared by the test files."""

import keras
import pytest
import tensorflow as tf


@pytest.fixture
def float64():
  """Layers built inside compute and keep float64; functions run eagerly.

  Keras fixes its global dtype policy the first time any layer is built, so the
  policy itself is set; floatx alone is ignored once another test has run.
  """
  floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
  keras.config.set_floatx("float64")
  keras.config.set_dtype_policy("float64")
  tf.config.run_functions_eagerly(True)
  try:
    yield
  finally:
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)
    tf.config.run_functions_eagerly(False)
