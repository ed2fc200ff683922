"""Callbacks of the search: the derived genotype, alpha and the cells' size after
every epoch, and the early stop on the cells' size.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from milenas_tf.core import callbacks
from milenas_tf.search import alpha_history
from milenas_tf.search import size as cell_size
from milenas_tf.space import genotypes


def alpha_image(alphas: np.ndarray, scale: int = 12) -> np.ndarray:
  """softmax(alpha) as a (1, 14*scale, 8*scale, 1) grey image: rows edges, columns ops."""
  e = np.exp(alphas - alphas.max(axis=-1, keepdims=True))
  weights = e / e.sum(axis=-1, keepdims=True)
  return np.kron(weights, np.ones((scale, scale)))[None, :, :, None].astype(np.float32)


class ArchitectureLogger(keras.callbacks.Callback):
  """Writes the derived genotype and alpha after every epoch.

  Files: `genotype.json` (latest, with its epoch), `genotypes/epoch_NNN.json` and
  alpha's history (`alpha_history.HISTORY_FILE`). TensorBoard (the `architecture`
  writer of `log_dir`): softmax(alpha) per edge as images, the alpha table and the
  genotype as text, each edge's entropy and their mean, both learning rates, and
  the Gumbel methods' sampling temperature.

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
    alphas = {"normal": network.alphas_normal.numpy(), "reduce": network.alphas_reduce.numpy()}
    alpha_history.append(self.output_dir, step, **alphas)
    with self.writer.as_default():
      for name, values in alphas.items():
        tf.summary.image(f"alpha_softmax/{name}", alpha_image(values), step=step)
        tf.summary.text(f"alpha_softmax_table/{name}",
                        "```\n" + genotypes.alpha_weights_table(values) + "\n```", step=step)
        entropy = alpha_history.edge_entropy(values)
        tf.summary.scalar(f"alpha_entropy/{name}/mean", float(entropy.mean()), step=step)
        for (node, source), h in zip(genotypes.edges(), entropy):
          tf.summary.scalar(f"alpha_entropy/{name}/node{node}_from{source}", float(h),
                            step=step)
      tf.summary.text("genotype", str(genotype), step=step)
      if network.mixed_op == "gumbel":  # the sampling temperature of the epoch's steps
        tf.summary.scalar("gumbel_temperature", float(network.temperature.numpy()), step=step)
      for name, optimizer in (("weights", self.model.optimizer),
                              ("alpha", self.model.arch_optimizer)):
        tf.summary.scalar(f"learning_rate/{name}", callbacks.last_learning_rate(optimizer),
                          step=step)
    self.writer.flush()


class CellSizeLogger(keras.callbacks.Callback):
  """The derived cells' size after every epoch, the per-size store and the early stop.

  Adds the `size.CellSize` figures to the epoch's logs (so to `epochs.jsonl` and
  TensorBoard, which run after it), keeps the best search-val genotype of each
  convolution count (`size.BySizeStore`), and stops the search at the end of the
  first epoch whose cells reach the early-stop target (`size.reached`).

  Args:
    output_dir: the run's output directory.
    meter: measures genotypes at the search's size.
    early_stop: (normal, reduction) convolution counts that end the search, or None.
  """

  def __init__(self, output_dir: str, meter: cell_size.SizeMeter,
               early_stop: tuple[int, int] | None = None):
    super().__init__()
    self.output_dir, self.meter, self.early_stop = output_dir, meter, early_stop
    self.store = cell_size.BySizeStore(output_dir)
    self.stopped_early = False

  def on_epoch_end(self, epoch, logs=None):
    logs = logs if logs is not None else {}
    genotype = self.model.network.genotype()
    measured = self.meter.measure(genotype)
    logs.update(measured.logs())
    if "val_accuracy" in logs:
      self.store.update(genotype, measured, logs["val_accuracy"], epoch + 1)
    if self.early_stop and cell_size.reached(measured, *self.early_stop):
      self.stopped_early = self.model.stop_training = True
      print(f"Early stop after epoch {epoch + 1}: the derived cells hold "
            f"{measured.normal_convs} (normal) and {measured.reduce_convs} (reduction) "
            f"convolutions.", flush=True)
