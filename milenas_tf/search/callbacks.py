"""Callbacks of the search: the derived genotype and alpha after every epoch.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from milenas_tf.core import callbacks
from milenas_tf.space import genotypes


def alpha_image(alphas: np.ndarray, scale: int = 12) -> np.ndarray:
  """softmax(alpha) as a (1, 14*scale, 8*scale, 1) grey image: rows edges, columns ops."""
  e = np.exp(alphas - alphas.max(axis=-1, keepdims=True))
  weights = e / e.sum(axis=-1, keepdims=True)
  return np.kron(weights, np.ones((scale, scale)))[None, :, :, None].astype(np.float32)


class ArchitectureLogger(keras.callbacks.Callback):
  """Writes the derived genotype and alpha after every epoch.

  Files: `genotype.json` (latest, with its epoch) and `genotypes/epoch_NNN.json`.
  TensorBoard (the `train` writer of `log_dir`): softmax(alpha) per edge as
  images, the alpha table and the genotype as text, both learning rates, and the
  Gumbel methods' sampling temperature.

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
      if network.mixed_op == "gumbel":  # the sampling temperature of the epoch's steps
        tf.summary.scalar("gumbel_temperature", float(network.temperature.numpy()), step=step)
      for name, optimizer in (("weights", self.model.optimizer),
                              ("alpha", self.model.arch_optimizer)):
        tf.summary.scalar(f"learning_rate/{name}", callbacks.last_learning_rate(optimizer),
                          step=step)
    self.writer.flush()
