"""The over-parameterised search network and its architecture parameters.

Stem (3x3 conv to 3C channels, BN), `num_cells` search cells with reduction cells
at 1/3 and 2/3 of the depth, global average pooling and a dense classifier.
`alphas_normal` and `alphas_reduce` (14 x 8 each, N(0, 1e-3^2)) are shared by all
cells of their type and stay float32 under mixed precision.

The cells' mixed op (`mixed_op`):

- "softmax" (DARTS, MiLeNAS): every edge computes sum_o softmax(alpha)_o o(x)
  (`cell.SearchCell`);
- "gumbel" (GDAS): every forward pass samples one op per edge,
  h = one_hot(argmax y) + y - stop_gradient(y) with
  y = softmax((log_softmax(alpha) + g) / tau), g Gumbel noise, and the edge
  computes h[i*] op_{i*}(x) + sum_{j != i*} h[j] (the sum is 0 in value), the
  sampled op alone (`gumbel.GumbelCell`). One sample per cell type and pass is
  shared by all cells of that type, as in GDAS. The temperature tau is the
  non-trainable variable `temperature`, which the search step anneals.

Reference: He et al., MiLeNAS, CVPR 2020, Section 3 and supplementary A.1;
Liu et al., DARTS, ICLR 2019, Section 2.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from milenas_tf.core import validation
from milenas_tf.core.errors import UserInputError
from milenas_tf.search import gumbel
from milenas_tf.search.cell import SearchCell
from milenas_tf.space import genotypes
from milenas_tf.space import layers


MIXED_OPS = ("softmax", "gumbel")


class SearchNetwork(keras.Model):
  """Network whose cells mix all primitives with softmax(alpha) weights, or sample one.

  Args:
    num_classes: classifier outputs.
    init_channels: C, channels of the first cells' nodes.
    num_cells: number of cells (reductions at num_cells // 3 and 2 * num_cells // 3).
    stem_multiplier: stem channels are `stem_multiplier * C`.
    sync_batch_norm: in training under several replicas, batch norm with the
      statistics of the global batch (True) or of each replica's sub-batch.
    mixed_op: "softmax" (every op, weighted) or "gumbel" (one sampled op per
      edge; see the module docstring).
    gumbel_temperature: "gumbel": the temperature until the search step sets it.
    gumbel_seed: "gumbel": seed of the sampling noise (None: drawn from the global
      seed of `keras.utils.set_random_seed`).

  Raises:
    UserInputError: for sizes that cannot build a network, an unknown mixed op or
      a temperature that is not positive.
  """

  def __init__(self, num_classes: int, init_channels: int = 16, num_cells: int = 8,
               stem_multiplier: int = 3, sync_batch_norm: bool = True,
               mixed_op: str = "softmax", gumbel_temperature: float = 10.0,
               gumbel_seed: int | None = None, **kwargs):
    super().__init__(**kwargs)
    self.mixed_op = validation.check_choice("mixed op", mixed_op, MIXED_OPS)
    self.gumbel_temperature = validation.check_number(
        "gumbel_temperature", gumbel_temperature, 0, exclude_minimum=True)
    self.gumbel_seed = gumbel_seed
    if num_cells < 3:
      raise UserInputError(f"num_cells must be at least 3 (two reductions), got {num_cells}.")
    if init_channels < 2 or init_channels % 2:
      raise UserInputError(f"init_channels must be even and >= 2, got {init_channels}.")
    if num_classes < 2:
      raise UserInputError(f"num_classes must be at least 2, got {num_classes}.")
    self.num_classes, self.init_channels = num_classes, init_channels
    self.num_cells, self.stem_multiplier = num_cells, stem_multiplier
    self.sync_batch_norm = sync_batch_norm

  @property
  def reduction_indices(self) -> tuple[int, int]:
    return self.num_cells // 3, 2 * self.num_cells // 3

  def build(self, input_shape):
    in_channels = input_shape[-1]
    stem_channels = self.stem_multiplier * self.init_channels
    self.stem_kernel = self.add_weight(
        shape=(3, 3, in_channels, stem_channels),
        initializer=layers.torch_uniform(9 * in_channels), name="stem_kernel")
    self.stem_bn = layers.BatchNorm(affine=True, sync=self.sync_batch_norm, name="stem_bn")
    self.stem_bn.build((None, None, None, stem_channels))
    c_pp = c_p = stem_channels
    c = self.init_channels
    reduction_prev = False
    self.cells = []
    for i in range(self.num_cells):
      reduction = i in self.reduction_indices
      c = 2 * c if reduction else c
      cell_class = gumbel.GumbelCell if self.mixed_op == "gumbel" else SearchCell
      cell = cell_class(c, reduction, reduction_prev, self.sync_batch_norm, name=f"cell_{i}")
      cell.build([(None, None, None, c_pp), (None, None, None, c_p)])
      self.cells.append(cell)
      reduction_prev = reduction
      c_pp, c_p = c_p, 4 * c
    self.classifier_kernel = self.add_weight(
        shape=(c_p, self.num_classes), initializer=layers.torch_uniform(c_p),
        name="classifier_kernel")
    self.classifier_bias = self.add_weight(
        shape=(self.num_classes,), initializer=layers.torch_uniform(c_p),
        name="classifier_bias")
    alpha_init = keras.initializers.RandomNormal(stddev=1e-3)
    shape = (genotypes.NUM_EDGES, len(genotypes.PRIMITIVES))
    self.alphas_normal = self.add_weight(shape=shape, initializer=alpha_init,
                                         name="alphas_normal", autocast=False)
    self.alphas_reduce = self.add_weight(shape=shape, initializer=alpha_init,
                                         name="alphas_reduce", autocast=False)
    if self.mixed_op == "gumbel":
      # Set by the search step (replicas compute the same value: the first one's is kept).
      self.temperature = self.add_weight(
          shape=(), initializer=keras.initializers.Constant(self.gumbel_temperature),
          trainable=False, name="gumbel_temperature", autocast=False,
          aggregation="only_first_replica")
      self.noise_seed = keras.random.SeedGenerator(self.gumbel_seed, name="gumbel_noise")

  @property
  def arch_variables(self) -> list[keras.Variable]:
    """The architecture parameters alpha, [normal, reduce]."""
    return [self.alphas_normal, self.alphas_reduce]

  @property
  def weight_variables(self) -> list[keras.Variable]:
    """The trainable network weights w (every trainable variable but alpha)."""
    arch = {id(v) for v in self.arch_variables}
    return [v for v in self.trainable_variables if id(v) not in arch]

  def call(self, x, training=False):
    return self.head(self.cells_forward(self.stem(x, training), training=training))

  def stem(self, x: tf.Tensor, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """The stem: the (s0, s1) inputs of the first cell (both the stem's output)."""
    x = tf.nn.conv2d(x, tf.cast(self.stem_kernel, x.dtype), 1,
                     [[0, 0], [1, 1], [1, 1], [0, 0]])
    x = self.stem_bn(x, training=training)
    return x, x

  def cells_forward(self, states, start: int = 0, stop: int | None = None,
                    training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """Cells `start` to `stop` (exclusive) from the inputs (s0, s1) of cell `start`.

    Returns:
      The inputs (s0, s1) of cell `stop`: the outputs of the last two cells run
      (or the states passed in, where fewer ran).
    """
    s0, s1 = states
    if self.mixed_op == "gumbel":
      # One sample per cell type and pass: (h, index) of every edge.
      weights_normal = gumbel.gumbel_softmax(self.alphas_normal, self.temperature,
                                             self.noise_seed)
      weights_reduce = gumbel.gumbel_softmax(self.alphas_reduce, self.temperature,
                                             self.noise_seed)
    else:
      weights_normal = (tf.nn.softmax(self.alphas_normal),)
      weights_reduce = (tf.nn.softmax(self.alphas_reduce),)
    for cell in self.cells[start:stop]:
      weights = weights_reduce if cell.reduction else weights_normal
      s0, s1 = s1, cell([s0, s1], *weights, training=training)
    return s0, s1

  def head(self, states) -> tf.Tensor:
    """Global average pooling and the classifier, from the last cell's states."""
    s1 = states[1]
    pooled = tf.reduce_mean(s1, axis=[1, 2])
    logits = tf.matmul(pooled, tf.cast(self.classifier_kernel, pooled.dtype))
    logits = logits + tf.cast(self.classifier_bias, logits.dtype)
    return logits if logits.dtype == tf.float64 else tf.cast(logits, tf.float32)

  def segment_weights(self, cells: int) -> tuple[list, list]:
    """The weights w of the stem and the first `cells` cells, and the others."""
    first = {id(v) for layer in [self.stem_bn, *self.cells[:cells]]
             for v in layer.trainable_variables}
    first.add(id(self.stem_kernel))
    weights = self.weight_variables
    return ([v for v in weights if id(v) in first],
            [v for v in weights if id(v) not in first])

  def genotype(self) -> genotypes.Genotype:
    """The discrete cell derived from the current alpha (DARTS's rule)."""
    return genotypes.derive_genotype(self.alphas_normal.numpy(),
                                     self.alphas_reduce.numpy())

  def get_config(self):
    return {**super().get_config(), "num_classes": self.num_classes,
            "init_channels": self.init_channels, "num_cells": self.num_cells,
            "stem_multiplier": self.stem_multiplier, "sync_batch_norm": self.sync_batch_norm,
            "mixed_op": self.mixed_op, "gumbel_temperature": self.gumbel_temperature,
            "gumbel_seed": self.gumbel_seed}
