"""One harness for every Keras layer of the package: `run_layer_test`.

Each layer gets the same checks (after keras-hub's `TestCase.run_layer_test`):

- build and call: the output shapes, and the number of trainable and
  non-trainable weights;
- training: a call with `training=True` has the same shapes, and every trainable
  weight gets a gradient;
- tracing: the layer called in a `tf.function` computes what it computes eagerly;
- serialisation: `from_config(get_config())` gives the same configuration, and
  with the same weights the same outputs;
- dtypes: under the "mixed_float16" policy the layer computes in float16 and keeps
  float32 variables, and under "float64" it computes and keeps float64.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from milenas_tf.core import precision

Shapes = Any  # a shape tuple, or a list of them for several outputs

# Where float32 results are compared with each other (eager against traced, the
# layer against its copy) and with the float64 and float16 computations.
_SAME = dict(rtol=1e-5, atol=1e-5)
_FLOAT64 = dict(rtol=1e-3, atol=1e-3)
_FLOAT16 = dict(rtol=5e-2, atol=5e-2)


def _flat(outputs) -> list:
  return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _shapes(outputs) -> list[tuple]:
  return [tuple(t.shape) for t in _flat(outputs)]


def run_layer_test(layer_cls: Callable[..., keras.layers.Layer], init_kwargs: dict,
                   inputs: Sequence[np.ndarray], expected_output_shape: Shapes, *,
                   call_kwargs: dict | None = None,
                   expected_num_trainable_weights: int | None = None,
                   expected_num_non_trainable_weights: int | None = None,
                   float_inputs: Sequence[int] | None = None,
                   build_input_shape: Any = None) -> None:
  """Runs the shared checks on one layer configuration.

  Args:
    layer_cls: the layer class.
    init_kwargs: its constructor arguments.
    inputs: the positional call arguments (float32 NumPy arrays, or lists of them).
    expected_output_shape: the output's shape, or a list of shapes.
    call_kwargs: keyword call arguments besides `training`.
    expected_num_trainable_weights: if given, checked after the first call.
    expected_num_non_trainable_weights: if given, checked after the first call.
    float_inputs: the inputs cast to the compute dtype of a policy (all floating
      inputs by default); the others keep their dtype.
    build_input_shape: for a layer that is built explicitly before its first call
      (such as a cell with two inputs), the argument of its `build`.
  """
  call_kwargs = dict(call_kwargs or {})
  tensors = [tf.nest.map_structure(tf.constant, x) for x in inputs]
  expected = [tuple(s) for s in (expected_output_shape
                                 if isinstance(expected_output_shape, list)
                                 else [expected_output_shape])]

  def call(layer, args, training=False):
    return layer(*args, training=training, **call_kwargs)

  def make():
    layer = layer_cls(**init_kwargs)
    if build_input_shape is not None:
      layer.build(build_input_shape)
    return layer

  # Build and call.
  layer = make()
  outputs = call(layer, tensors)
  assert _shapes(outputs) == expected, (_shapes(outputs), expected)
  if expected_num_trainable_weights is not None:
    assert len(layer.trainable_weights) == expected_num_trainable_weights
  if expected_num_non_trainable_weights is not None:
    assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights

  # Training: same shapes, a gradient for every trainable weight.
  with tf.GradientTape() as tape:
    trained = call(layer, tensors, training=True)
    loss = tf.add_n([tf.reduce_sum(tf.square(t)) for t in _flat(trained)])
  assert _shapes(trained) == expected
  grads = tape.gradient(loss, layer.trainable_weights)
  missing = [w.path for w, g in zip(layer.trainable_weights, grads) if g is None]
  assert not missing, f"no gradient for {missing}"

  # Tracing (inference, after the training call has moved batch norm's statistics).
  outputs = call(layer, tensors)
  traced = tf.function(lambda *args: call(layer, args))(*tensors)
  for a, b in zip(_flat(outputs), _flat(traced)):
    np.testing.assert_allclose(a.numpy(), b.numpy(), **_SAME)

  # Serialisation: the same configuration; with the same weights, the same outputs.
  config = layer.get_config()
  restored = layer_cls.from_config(config)
  assert restored.get_config() == config
  if build_input_shape is not None:
    restored.build(build_input_shape)
  call(restored, tensors)
  restored.set_weights(layer.get_weights())
  for a, b in zip(_flat(outputs), _flat(call(restored, tensors))):
    np.testing.assert_allclose(a.numpy(), b.numpy(), **_SAME)

  # Dtype policies: float64 and mixed float16 against float32, with the same weights.
  float_inputs = (range(len(tensors)) if float_inputs is None else float_inputs)
  for policy, compute, variables, tolerance in (
      ("float64", tf.float64, tf.float64, _FLOAT64),
      ("mixed_float16", tf.float16, tf.float32, _FLOAT16)):
    args = [tf.nest.map_structure(lambda t: tf.cast(t, compute), x) if i in float_inputs
            else x for i, x in enumerate(tensors)]
    with precision.policy_scope(policy):  # sublayers are built under the policy too
      other = make()
      call(other, args)
    other.set_weights(layer.get_weights())
    result = call(other, args)
    assert all(t.dtype == compute for t in _flat(result)), (policy, _flat(result)[0].dtype)
    assert all(w.dtype == variables.name for w in other.weights), policy
    for a, b in zip(_flat(outputs), _flat(result)):
      np.testing.assert_allclose(a.numpy(), tf.cast(b, tf.float32).numpy(), **tolerance)
