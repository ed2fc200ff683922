"""Optimisers, learning-rate schedules and gradient transforms of the reference recipes.

PyTorch's `weight_decay` adds an L2 term to the gradient before momentum or Adam
(coupled decay); Keras 3's `weight_decay` is decoupled, a different rule. Coupled
decay is therefore applied here, to the gradients, by `add_l2`.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import tensorflow as tf


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
    epoch = tf.floor(tf.cast(step, tf.float32) / self.steps_per_epoch)
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
    epoch = tf.floor(tf.cast(step, tf.float32) / self.steps_per_epoch)
    return self.initial * tf.pow(self.rate, epoch)

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
  """Rescales the gradients so that their global norm is at most `clip_norm`."""
  if not clip_norm:
    return list(grads)
  clipped, _ = tf.clip_by_global_norm(grads, clip_norm)
  return clipped


def weight_optimizer(learning_rate, momentum: float = 0.9) -> keras.optimizers.Optimizer:
  """SGD with momentum for the network weights (decay is added to the gradients).

  Keras folds the learning rate into the momentum buffer; PyTorch applies it
  after. The two agree while the learning rate is constant, i.e. within an epoch
  of the per-epoch schedules used here.
  """
  return keras.optimizers.SGD(learning_rate, momentum=momentum, name="weight_sgd")


def arch_optimizer(learning_rate: float = 3e-4, beta_1: float = 0.5,
                   beta_2: float = 0.999) -> keras.optimizers.Optimizer:
  """Adam for alpha, as the reference code (betas (0.5, 0.999); decay coupled)."""
  return keras.optimizers.Adam(learning_rate, beta_1=beta_1, beta_2=beta_2,
                               epsilon=1e-8, name="arch_adam")
