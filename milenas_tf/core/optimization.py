"""Optimisers, learning-rate schedules and gradient transforms of the reference recipes.

The reference code is PyTorch's, and these follow its update rules exactly (also in
float64, where every hyper-parameter is taken in the variables' dtype):

- `TorchSGD`: `torch.optim.SGD` with momentum (dampening 0, no Nesterov):
  buf <- momentum * buf + g, w <- w - lr * buf. Keras's SGD folds the learning rate
  into its velocity (v <- momentum * v - lr * g, w <- w + v), which differs whenever
  the learning rate changes (every epoch under the per-epoch schedules).
- `TorchAdam`: `torch.optim.Adam`: m and v as Keras's, but the step is
  lr / (1 - beta_1^t) * m / (sqrt(v) / sqrt(1 - beta_2^t) + eps); Keras adds eps to
  sqrt(v) before the bias correction.
- `clip_by_global_norm`: `torch.nn.utils.clip_grad_norm_`: the gradients are scaled
  by max_norm / (norm + 1e-6) when that is below 1.
- PyTorch's `weight_decay` adds an L2 term to the gradient before momentum or Adam
  (coupled decay); Keras 3's `weight_decay` is decoupled, a different rule. Coupled
  decay is applied to the gradients by `add_l2`.

The schedules step once per epoch, as PyTorch's schedulers stepped after each epoch,
and compute in float64.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import tensorflow as tf

# The norm offset of torch.nn.utils.clip_grad_norm_.
_CLIP_EPSILON = 1e-6


@keras.saving.register_keras_serializable("milenas_tf")
class EpochCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Cosine annealing stepped once per epoch (PyTorch's CosineAnnealingLR).

  lr(epoch) = minimum + (initial - minimum) * (1 + cos(pi * epoch / epochs)) / 2.

  Args:
    initial: learning rate of the first epoch.
    minimum: the floor reached after `epochs` epochs.
    epochs: annealing period in epochs.
    steps_per_epoch: optimiser steps in one epoch.
  """

  def __init__(self, initial: float, minimum: float, epochs: int, steps_per_epoch: int):
    self.initial, self.minimum = float(initial), float(minimum)
    self.epochs, self.steps_per_epoch = int(epochs), int(steps_per_epoch)

  def __call__(self, step):
    epoch = tf.floor(tf.cast(step, tf.float64) / self.steps_per_epoch)
    cosine = 0.5 * (1.0 + tf.cos(math.pi * epoch / self.epochs))
    return self.minimum + (self.initial - self.minimum) * cosine

  def get_config(self):
    return {"initial": self.initial, "minimum": self.minimum, "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch}


@keras.saving.register_keras_serializable("milenas_tf")
class EpochExponentialDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Exponential decay stepped once per epoch (PyTorch's StepLR with step 1).

  lr(epoch) = initial * rate ** epoch; the ImageNet recipe uses rate 0.97.

  Args:
    initial: learning rate of the first epoch.
    rate: factor applied after every epoch.
    steps_per_epoch: optimiser steps in one epoch.
  """

  def __init__(self, initial: float, rate: float, steps_per_epoch: int):
    self.initial, self.rate = float(initial), float(rate)
    self.steps_per_epoch = int(steps_per_epoch)

  def __call__(self, step):
    epoch = tf.floor(tf.cast(step, tf.float64) / self.steps_per_epoch)
    return self.initial * tf.pow(tf.constant(self.rate, tf.float64), epoch)

  def get_config(self):
    return {"initial": self.initial, "rate": self.rate,
            "steps_per_epoch": self.steps_per_epoch}


def scaled_learning_rate(learning_rate: float, batch_size: int, base_batch_size: int
                         ) -> float:
  """The linear scaling rule: `learning_rate * batch_size / base_batch_size`."""
  if base_batch_size < 1:
    raise ValueError(f"base_batch_size must be positive, got {base_batch_size}.")
  return learning_rate * batch_size / base_batch_size


def add_l2(grads: Sequence[tf.Tensor], variables: Sequence, weight_decay: float
           ) -> list[tf.Tensor]:
  """Coupled weight decay: g + weight_decay * v for every pair."""
  if not weight_decay:
    return list(grads)
  return [g + weight_decay * tf.cast(v, g.dtype) for g, v in zip(grads, variables)]


def clip_by_global_norm(grads: Sequence[tf.Tensor], clip_norm: float | None
                        ) -> list[tf.Tensor]:
  """`torch.nn.utils.clip_grad_norm_`: scales the gradients by
  clip_norm / (global norm + 1e-6) when that is below 1; no clipping for 0 or None."""
  if not clip_norm:
    return list(grads)
  dtype = grads[0].dtype  # the norm in the gradients' dtype, as PyTorch takes it
  norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, dtype))) for g in grads]))
  coefficient = _constant(clip_norm, dtype) / (norm + _constant(_CLIP_EPSILON, dtype))
  coefficient = tf.minimum(coefficient, 1.0)
  return [g * tf.cast(coefficient, g.dtype) for g in grads]


def _constant(value: float, dtype) -> tf.Tensor:
  """A hyper-parameter in the variables' dtype, rounded once from the Python float."""
  return tf.constant(value, dtype=dtype)


@keras.saving.register_keras_serializable("milenas_tf")
class TorchSGD(keras.optimizers.Optimizer):
  """SGD with momentum as `torch.optim.SGD` computes it (dampening 0, no Nesterov).

  buf <- momentum * buf + g (buf = g at the first step), w <- w - lr * buf. Coupled
  weight decay is added to the gradients beforehand (`add_l2`).

  Args:
    learning_rate: a float or a `LearningRateSchedule`.
    momentum: the momentum factor in [0, 1).
    name: the optimiser's name.
    **kwargs: `keras.optimizers.Optimizer` arguments.
  """

  def __init__(self, learning_rate=0.01, momentum: float = 0.0, name: str = "torch_sgd",
               **kwargs):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    self.momentum = float(momentum)

  def build(self, variables):
    if self.built:
      return
    super().build(variables)
    # Named as Keras's SGD names its velocities, so that the slots line up in
    # checkpoints (`from_keras_sgd_state` converts their values).
    self.momentum_buffers = (self.add_optimizer_variables(variables, "momentum")
                             if self.momentum else [])

  def update_step(self, gradient, variable, learning_rate):
    dtype = variable.dtype
    learning_rate = tf.cast(learning_rate, dtype)
    step = tf.cast(gradient, dtype)
    if self.momentum:
      buffer = self.momentum_buffers[self._get_variable_index(variable)]
      self.assign(buffer, _constant(self.momentum, dtype) * buffer + step)
      step = buffer
    self.assign_sub(variable, learning_rate * step)

  def from_keras_sgd_state(self) -> None:
    """Converts velocities saved by Keras's SGD into PyTorch's momentum buffers.

    Keras's velocity is v = -lr * buf while the learning rate is constant: buf is
    -v / lr of the last step. The per-epoch schedules keep the rate constant within
    an epoch, so the conversion is exact up to the part of the velocity left from
    earlier epochs, which decays by momentum ** (steps per epoch).
    """
    if not self.momentum or not self.momentum_buffers:
      return
    step = tf.maximum(tf.cast(self.iterations, tf.int64) - 1, 0)
    schedule = self._learning_rate
    rate = schedule(step) if callable(schedule) else tf.convert_to_tensor(schedule)
    for buffer in self.momentum_buffers:
      buffer.assign(-buffer / tf.cast(rate, buffer.dtype))

  def get_config(self):
    return {**super().get_config(), "momentum": self.momentum}


@keras.saving.register_keras_serializable("milenas_tf")
class TorchAdam(keras.optimizers.Optimizer):
  """Adam as `torch.optim.Adam` computes it (no AMSGrad).

  m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2, and at step t
  w <- w - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
  Coupled weight decay is added to the gradients beforehand (`add_l2`).

  Args:
    learning_rate: a float or a `LearningRateSchedule`.
    beta_1, beta_2: the moments' decay rates.
    epsilon: added to the bias-corrected sqrt(v).
    name: the optimiser's name.
    **kwargs: `keras.optimizers.Optimizer` arguments.
  """

  def __init__(self, learning_rate=1e-3, beta_1: float = 0.9, beta_2: float = 0.999,
               epsilon: float = 1e-8, name: str = "torch_adam", **kwargs):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

  def build(self, variables):
    if self.built:
      return
    super().build(variables)
    # The moments Keras's Adam keeps, under its names: checkpoints of either load here.
    self.moments, self.velocities = self.add_optimizer_variables(
        variables, ["momentum", "velocity"])

  def update_step(self, gradient, variable, learning_rate):
    dtype = variable.dtype
    index = self._get_variable_index(variable)
    m, v = self.moments[index], self.velocities[index]
    g = tf.cast(gradient, dtype)
    beta_1, beta_2 = _constant(self.beta_1, dtype), _constant(self.beta_2, dtype)
    t = tf.cast(self.iterations + 1, dtype)
    self.assign(m, beta_1 * m + (1 - beta_1) * g)
    self.assign(v, beta_2 * v + (1 - beta_2) * tf.square(g))
    step_size = tf.cast(learning_rate, dtype) / (1 - tf.pow(beta_1, t))
    denominator = (tf.sqrt(v) / tf.sqrt(1 - tf.pow(beta_2, t))
                   + _constant(self.epsilon, dtype))
    self.assign_sub(variable, step_size * m / denominator)

  def get_config(self):
    return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
            "epsilon": self.epsilon}


def weight_optimizer(learning_rate, momentum: float = 0.9) -> keras.optimizers.Optimizer:
  """SGD with momentum for the network weights, PyTorch's rule (decay added to the
  gradients)."""
  return TorchSGD(learning_rate, momentum=momentum, name="weight_sgd")


def arch_optimizer(learning_rate: float = 3e-4, beta_1: float = 0.5,
                   beta_2: float = 0.999) -> keras.optimizers.Optimizer:
  """Adam for alpha, PyTorch's rule, as the reference code (betas (0.5, 0.999); decay
  coupled)."""
  return TorchAdam(learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=1e-8,
                   name="arch_adam")


def from_keras_state(optimizer: keras.optimizers.Optimizer) -> None:
  """Converts an optimiser's state restored from a checkpoint written with Keras's SGD
  (the project's optimiser before `TorchSGD`) into `TorchSGD`'s; a no-op otherwise."""
  inner = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's
  if isinstance(inner, TorchSGD):
    inner.from_keras_sgd_state()
