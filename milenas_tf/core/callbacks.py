"""Keras callbacks shared by search and training: the epoch's checkpoint, the epoch log,
the input pipelines' epoch.
"""

from __future__ import annotations

import json
import time

import keras
import tensorflow as tf

from milenas_tf.core import checkpoint


class EpochCheckpoint(keras.callbacks.Callback):
  """Commits everything a resumed run needs at the end of every epoch (`checkpoint`).

  Args:
    directory: the run's `checkpoints/` directory.
  """

  def __init__(self, directory: str):
    super().__init__()
    self.directory = directory

  @staticmethod
  def finished_epochs(directory: str) -> int:
    """Epochs of the newest verified checkpoint in `directory` (0 without one)."""
    found = checkpoint.latest(directory)
    return found.epochs_done if found else 0

  @staticmethod
  def restore(model: keras.Model, directory: str, max_epochs: int | None = None) -> int:
    """Loads the newest verified checkpoint into a built model; returns the finished
    epochs (0 without one)."""
    return checkpoint.restore(model, directory, max_epochs)

  def on_epoch_end(self, epoch, logs=None):
    checkpoint.commit(self.model, self.directory, epoch + 1)


def epoch_variable(initial: int = 0) -> tf.Variable:
  """The epoch a training pipeline produces, as a variable it reads.

  Create it outside any distribution strategy's scope and pass it as `epoch` to
  the pipelines of `data.datasets`; `InputEpoch` sets it at the start of every
  epoch of `fit`.
  """
  return tf.Variable(initial, dtype=tf.int64, trainable=False, name="input_epoch")


class InputEpoch(keras.callbacks.Callback):
  """Sets the epoch the training pipelines produce (`epoch_variable`) at the
  start of every epoch.

  Args:
    variable: the pipelines' epoch variable.
  """

  def __init__(self, variable: tf.Variable):
    super().__init__()
    self.variable = variable

  def on_epoch_begin(self, epoch, logs=None):
    self.variable.assign(epoch)


def last_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
  """The learning rate of the optimiser's last step (its schedule at iterations - 1)."""
  schedule = optimizer._learning_rate  # pylint: disable=protected-access
  if callable(schedule):
    return float(schedule(max(int(optimizer.iterations.numpy()) - 1, 0)))
  return float(tf.convert_to_tensor(optimizer.learning_rate))  # also a MirroredVariable


class EpochLog(keras.callbacks.Callback):
  """Appends one JSON line per finished epoch: epoch, wall seconds and the metrics.

  The file survives interruptions; a resumed run appends to it. An epoch run
  twice (interrupted after logging, before its checkpoint) appears twice;
  `read_epoch_log` keeps the last record of each epoch.

  Args:
    path: the `.jsonl` file.
  """

  def __init__(self, path: str):
    super().__init__()
    self.path = path
    self._start = None

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    record = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - self._start, 3)}
    record.update({k: float(v) for k, v in (logs or {}).items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")


def read_epoch_log(path: str) -> list[dict]:
  """The records of an `EpochLog` file, one per epoch (the last one), by epoch."""
  records = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        records[record["epoch"]] = record
  return [records[e] for e in sorted(records)]
