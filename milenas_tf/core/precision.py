"""Numeric precision of training: float32, or mixed float16 with loss scaling.

`config.precision` names it:

- "auto": "mixed_float16" when a GPU is visible, else "float32" (float16 brings
  nothing on a CPU);
- "float32": everything in float32;
- "mixed_float16": Keras's `mixed_float16` dtype policy. Convolutions and
  activations run in float16; every variable stays float32, and batch norm reads
  its scale, offset and running statistics in float32 (its variables are never
  autocast); the logits and the loss are float32. The optimiser is wrapped in a
  `keras.optimizers.LossScaleOptimizer`, whose dynamic loss scale multiplies the
  loss before differentiation; `TrainModel.train_step` divides it out before
  clipping and weight decay, and a step whose gradients overflow is skipped
  while the scale is halved.

The networks are built under `policy_scope(name)`; the global Keras policy is
restored afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import keras
import tensorflow as tf

from milenas_tf.core import validation

PRECISIONS = ("auto", "float32", "mixed_float16")


def resolve(spec: str) -> str:
  """The dtype-policy name a config's `precision` stands for.

  Raises:
    UserInputError: for an unknown name.
  """
  validation.check_choice("precision", spec, PRECISIONS)
  if spec == "auto":
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "float32"
  return spec


@contextlib.contextmanager
def policy_scope(name: str) -> Iterator[None]:
  """Layers created inside take the dtype policy `name`; the global one is restored."""
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(name)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def wrap_optimizer(optimizer: keras.optimizers.Optimizer, name: str
                   ) -> keras.optimizers.Optimizer:
  """The optimiser wrapped for dynamic loss scaling under "mixed_float16"."""
  if name == "mixed_float16":
    return keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def loss_scale(optimizer: keras.optimizers.Optimizer) -> tf.Tensor | None:
  """The current dynamic loss scale, or None for an optimiser without one."""
  if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
    return tf.convert_to_tensor(optimizer.dynamic_scale)
  return None
