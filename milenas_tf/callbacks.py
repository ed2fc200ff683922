"""Keras callbacks of search and training: resumable checkpoints, architecture and epoch
logs, the input pipelines' epoch."""

from __future__ import annotations

import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from milenas_tf import genotypes


def write_json_atomic(path: str, data: dict) -> None:
  """Writes JSON through a temporary file, so a crash never leaves half a file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=1)
  os.replace(tmp, path)


def read_json(path: str) -> dict | None:
  """The JSON object in `path`, or None if the file does not exist."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def save_weights_atomic(model: keras.Model, path: str) -> None:
  """Saves the model's weights through a temporary file, replaced atomically."""
  directory, name = os.path.split(path)
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, "tmp." + name)
  model.save_weights(tmp)
  os.replace(tmp, path)


class EpochCheckpoint(keras.callbacks.Callback):
  """Saves everything a resumed run needs at the end of every epoch.

  The weights file holds the network (w, alpha, BN statistics) and both
  optimisers' state (iterations, and so the learning-rate schedule, momentum and
  Adam moments); `state.json` holds the last finished epoch. Both are replaced
  atomically.

  Args:
    directory: where `ckpt.weights.h5` and `state.json` live.
  """

  WEIGHTS = "ckpt.weights.h5"
  STATE = "state.json"

  def __init__(self, directory: str):
    super().__init__()
    self.directory = directory

  @classmethod
  def finished_epochs(cls, directory: str) -> int:
    """Epochs recorded by the checkpoint in `directory` (0 without one)."""
    state = read_json(os.path.join(directory, cls.STATE))
    return int(state["epochs_done"]) if state else 0

  @classmethod
  def restore(cls, model: keras.Model, directory: str) -> int:
    """Loads the checkpoint into a built model; returns the finished epochs."""
    done = cls.finished_epochs(directory)
    if done:
      model.load_weights(os.path.join(directory, cls.WEIGHTS))
    return done

  def on_epoch_end(self, epoch, logs=None):
    save_weights_atomic(self.model, os.path.join(self.directory, self.WEIGHTS))
    write_json_atomic(os.path.join(self.directory, self.STATE), {"epochs_done": epoch + 1})


class InputEpoch(keras.callbacks.Callback):
  """Sets the epoch the training pipelines produce (`datasets.epoch_variable`) at the
  start of every epoch.

  Args:
    variable: the pipelines' epoch variable.
  """

  def __init__(self, variable: tf.Variable):
    super().__init__()
    self.variable = variable

  def on_epoch_begin(self, epoch, logs=None):
    self.variable.assign(epoch)


def alpha_image(alphas: np.ndarray, scale: int = 12) -> np.ndarray:
  """softmax(alpha) as a (1, 14*scale, 8*scale, 1) grey image: rows edges, columns ops."""
  e = np.exp(alphas - alphas.max(axis=-1, keepdims=True))
  weights = e / e.sum(axis=-1, keepdims=True)
  return np.kron(weights, np.ones((scale, scale)))[None, :, :, None].astype(np.float32)


def last_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
  """The learning rate of the optimiser's last step (its schedule at iterations - 1)."""
  schedule = optimizer._learning_rate  # pylint: disable=protected-access
  if callable(schedule):
    return float(schedule(max(int(optimizer.iterations.numpy()) - 1, 0)))
  return float(tf.convert_to_tensor(optimizer.learning_rate))  # also a MirroredVariable


class ArchitectureLogger(keras.callbacks.Callback):
  """Writes the derived genotype and alpha after every epoch.

  Files: `genotype.json` (latest, with its epoch) and `genotypes/epoch_NNN.json`.
  TensorBoard (the `train` writer of `log_dir`): softmax(alpha) per edge as
  images, the alpha table and the genotype as text, both learning rates.

  Args:
    output_dir: the run's output directory.
    log_dir: TensorBoard directory.
  """

  def __init__(self, output_dir: str, log_dir: str):
    super().__init__()
    self.output_dir = output_dir
    self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "architecture"))

  def on_epoch_end(self, epoch, logs=None):
    network = self.model.network
    genotype = network.genotype()
    metadata = {"epoch": epoch + 1}
    genotypes.save_genotype(genotype, os.path.join(self.output_dir, "genotype.json"),
                            metadata=metadata)
    genotypes.save_genotype(
        genotype, os.path.join(self.output_dir, "genotypes", f"epoch_{epoch + 1:03d}.json"),
        metadata=metadata)
    step = epoch + 1
    with self.writer.as_default():
      for name, alphas in (("normal", network.alphas_normal), ("reduce", network.alphas_reduce)):
        values = alphas.numpy()
        tf.summary.image(f"alpha_softmax/{name}", alpha_image(values), step=step)
        tf.summary.text(f"alpha_softmax_table/{name}",
                        "```\n" + genotypes.alpha_weights_table(values) + "\n```", step=step)
      tf.summary.text("genotype", str(genotype), step=step)
      for name, optimizer in (("weights", self.model.optimizer),
                              ("alpha", self.model.arch_optimizer)):
        tf.summary.scalar(f"learning_rate/{name}", last_learning_rate(optimizer), step=step)
    self.writer.flush()


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
