"""Callbacks of training: the drop-path schedule and the best weights.
"""

from __future__ import annotations

import os

import keras

from milenas_tf.core import callbacks
from milenas_tf.core import files

BEST_DIR = "best"  # a training run's subdirectory of the best weights


class DropPathSchedule(keras.callbacks.Callback):
  """Sets the network's drop-path rate to `rate * epoch / epochs` before each epoch.

  The reference schedule (epoch counted from 0). Also adds `drop_path_rate` and
  `learning_rate` to the epoch logs, for TensorBoard and the epoch log.

  Args:
    rate: the final rate.
    epochs: the schedule's length.
  """

  def __init__(self, rate: float, epochs: int):
    super().__init__()
    self.rate, self.epochs = rate, epochs

  def on_epoch_begin(self, epoch, logs=None):
    self.model.network.drop_path_rate.assign(self.rate * epoch / self.epochs)

  def on_epoch_end(self, epoch, logs=None):
    if logs is not None:
      logs["drop_path_rate"] = float(self.model.network.drop_path_rate.numpy())
      logs["learning_rate"] = callbacks.last_learning_rate(self.model.optimizer)


class BestWeights(keras.callbacks.Callback):
  """Keeps the weights with the best value of a logged metric (higher is better).

  Writes `best.weights.h5` and `best.json` (epoch and value) atomically; reads
  `best.json` at the start, so a resumed run keeps the earlier best.

  Args:
    directory: where the files go.
    monitor: the metric, e.g. "val_top1".
  """

  WEIGHTS = "best.weights.h5"
  STATE = "best.json"

  def __init__(self, directory: str, monitor: str = "val_top1"):
    super().__init__()
    self.directory, self.monitor = directory, monitor
    self.best = self.read(directory)

  @classmethod
  def read(cls, directory: str) -> dict:
    """The best epoch and value recorded in `directory` (empty before the first)."""
    return files.read_json(os.path.join(directory, cls.STATE)) or {}

  def on_epoch_end(self, epoch, logs=None):
    value = (logs or {}).get(self.monitor)
    if value is None or value <= self.best.get("value", float("-inf")):
      return
    files.save_weights_atomic(self.model, os.path.join(self.directory, self.WEIGHTS))
    self.best = {"epoch": epoch + 1, self.monitor: float(value), "value": float(value)}
    files.write_json_atomic(os.path.join(self.directory, self.STATE), self.best)
