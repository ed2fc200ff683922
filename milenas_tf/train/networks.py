"""Evaluation networks built from a searched genotype: CIFAR and ImageNet mobile.

A searched cell is trained from scratch in a deeper, wider network of discrete
cells (each intermediate node sums two chosen operations of earlier nodes). The
networks follow the reference implementation exactly (DARTS `model.py`, used by
MiLeNAS): the same stems, cell wiring, channel doubling at the two reduction
cells, auxiliary heads and drop path, with affine batch norms everywhere.

Reference: He et al., "MiLeNAS", CVPR 2020, supplementary Sections A.1-A.2; Liu et
al., "DARTS", ICLR 2019, Section 3.2 and Appendix A.2.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
import tensorflow as tf

from milenas_tf.core.errors import UserInputError
from milenas_tf.space import genotypes
from milenas_tf.space import layers

STEM_MULTIPLIER = 3  # CIFAR stem width, in units of the initial channels.


def reduction_indices(num_cells: int) -> tuple[int, int]:
  """The two reduction cells, at a third and two thirds of the depth."""
  return num_cells // 3, 2 * num_cells // 3


def drop_path(x: tf.Tensor, rate: tf.Tensor, seed: Any) -> tf.Tensor:
  """Zeroes whole samples with probability `rate`, scaling the others by 1/(1-rate).

  Args:
    x: NHWC tensor.
    rate: drop probability in [0, 1), a scalar tensor.
    seed: a `keras.random.SeedGenerator`.

  Returns:
    `x * mask / (1 - rate)` with one Bernoulli(1 - rate) mask entry per sample;
    exactly `x` at rate 0.
  """
  keep = 1.0 - tf.cast(rate, x.dtype)
  noise = keras.random.uniform((tf.shape(x)[0], 1, 1, 1), seed=seed, dtype=x.dtype)
  # One pass over x: the per-sample factor is formed at (batch, 1, 1, 1).
  return x * (tf.floor(keep + noise) / keep)


class EvalCell(keras.layers.Layer):
  """A discrete cell: each node sums two operations of earlier nodes.

  Node i (i = 2..5) is `op_a(h_a) + op_b(h_b)` for its two genotype entries; the
  cell outputs the channel concatenation of the genotype's `concat` nodes. In
  training, drop path zeroes each operation's output per sample, except on
  identity edges (a stride-1 `skip_connect`), as the reference does.

  Args:
    genotype: the architecture.
    channels: channels of every node.
    reduction: a reduction cell (stride 2 on the edges from the two inputs).
    reduction_prev: the previous cell halved the resolution, so input 0 (from
      two cells back) is factorised-reduced to match input 1.
    sync_batch_norm: global-batch batch norm across replicas in training.
  """

  def __init__(self, genotype: Any, channels: int, reduction: bool,
               reduction_prev: bool, sync_batch_norm: bool = True, **kwargs):
    super().__init__(**kwargs)
    self.sync_batch_norm = sync_batch_norm
    self.genotype = genotypes.as_genotype(genotype)
    self.channels, self.reduction, self.reduction_prev = (channels, reduction,
                                                          reduction_prev)
    cell = "reduce" if reduction else "normal"
    self.pairs = getattr(self.genotype, cell)
    self.concat = tuple(getattr(self.genotype, f"{cell}_concat"))
    self.seed = keras.random.SeedGenerator(0)

  @property
  def multiplier(self) -> int:
    return len(self.concat)

  def build(self, input_shape):
    shape0, shape1 = input_shape
    c = self.channels
    sync = self.sync_batch_norm
    if self.reduction_prev:
      self.preprocess0 = layers.FactorizedReduce(c, sync_batch_norm=sync, name="preprocess0")
    else:
      self.preprocess0 = layers.ConvBN(c, sync_batch_norm=sync, name="preprocess0")
    self.preprocess1 = layers.ConvBN(c, sync_batch_norm=sync, name="preprocess1")
    self.preprocess0.build(shape0)
    self.preprocess1.build(shape1)
    node_shape = tuple(shape1[:-1]) + (c,)
    self.edge_ops, self.droppable = [], []
    for k, (name, j) in enumerate(self.pairs):
      strides = 2 if self.reduction and j < genotypes.NUM_INPUTS else 1
      layer = layers.make_operation(name, c, strides, affine=True, layer_name=f"op{k}_{name}",
                                    sync_batch_norm=sync)
      layer.build(node_shape)
      self.edge_ops.append(layer)
      self.droppable.append(not isinstance(layer, layers.Identity))

  def call(self, s0, s1, drop_rate=0.0, training=False):
    states = [self.preprocess0(s0, training=training),
              self.preprocess1(s1, training=training)]
    per_node = genotypes.EDGES_PER_NODE
    for node in range(len(self.pairs) // per_node):
      terms = []
      for k in range(node * per_node, (node + 1) * per_node):
        layer, (_, j) = self.edge_ops[k], self.pairs[k]
        h = _apply(layer, states[j], training)
        if training and self.droppable[k]:
          h = drop_path(h, drop_rate, self.seed)
        terms.append(h)
      states.append(tf.add_n(terms))
    return tf.concat([states[i] for i in self.concat], axis=-1)

  def get_config(self):
    return {**super().get_config(), "genotype": self.genotype.to_dict(),
            "channels": self.channels, "reduction": self.reduction,
            "reduction_prev": self.reduction_prev, "sync_batch_norm": self.sync_batch_norm}


def _apply(layer: keras.layers.Layer, x: tf.Tensor, training: bool) -> tf.Tensor:
  if isinstance(layer, (layers.Identity, layers.Zero, layers.Pooling)):
    return layer(x)
  return layer(x, training=training)


class AuxiliaryHead(keras.layers.Layer):
  """The auxiliary classifier after the second reduction cell.

  ReLU -> 5x5 average pool (no padding) to a 2x2 map -> 1x1 conv 128 -> BN ->
  ReLU -> 2x2 conv 768 -> [BN] -> ReLU -> linear. The pooling stride is the one
  that leaves a 2x2 map: 3 on CIFAR's 8x8 and 2 on the 7x7 maps of ImageNet and
  Fashion-MNIST, as in the reference. The CIFAR head keeps the second BN; the
  ImageNet head, as in the reference experiments, has none.

  Args:
    num_classes: classifier outputs.
    second_bn: batch norm after the 2x2 conv.
    sync_batch_norm: global-batch batch norm across replicas in training.

  Raises:
    UserInputError: at build, for an input map smaller than 6x6.
  """

  def __init__(self, num_classes: int, second_bn: bool, sync_batch_norm: bool = True,
               **kwargs):
    super().__init__(**kwargs)
    self.num_classes, self.second_bn = num_classes, second_bn
    self.sync_batch_norm = sync_batch_norm

  def build(self, input_shape):
    height, width = input_shape[1], input_shape[2]
    if min(height, width) < 6:
      raise UserInputError(
          f"The auxiliary head needs at least a 6x6 map; its input is {height}x{width}. "
          f"Use a larger input or auxiliary=False.")
    self.pool_strides = (height - 5, width - 5)
    self.reduce = layers.ConvBN(128, relu=False, sync_batch_norm=self.sync_batch_norm,
                                name="reduce")
    self.reduce.build(input_shape)
    self.expand = self.add_weight(shape=(2, 2, 128, 768),
                                  initializer=layers.torch_uniform(128 * 4), name="expand")
    self.bn = None
    if self.second_bn:
      self.bn = layers.BatchNorm(True, self.sync_batch_norm, name="bn")
      self.bn.build((None, 1, 1, 768))
    self.classifier = keras.layers.Dense(
        self.num_classes, kernel_initializer=layers.torch_uniform(768),
        bias_initializer=layers.torch_uniform(768), name="classifier")
    self.classifier.build((None, 768))

  def call(self, x, training=False):
    x = tf.nn.avg_pool2d(tf.nn.relu(x), 5, self.pool_strides, "VALID")
    x = tf.nn.relu(self.reduce(x, training=training))
    x = tf.nn.conv2d(x, tf.cast(self.expand, x.dtype), 1, "VALID")
    if self.bn is not None:
      x = self.bn(x, training=training)
    x = tf.nn.relu(x)
    return self.classifier(tf.reshape(x, [tf.shape(x)[0], -1]))

  def get_config(self):
    return {**super().get_config(), "num_classes": self.num_classes,
            "second_bn": self.second_bn, "sync_batch_norm": self.sync_batch_norm}


def _full_precision(logits: tf.Tensor) -> tf.Tensor:
  """Logits in float32 under mixed precision; float32 and float64 kept as they are."""
  return logits if logits.dtype in (tf.float32, tf.float64) else tf.cast(logits, tf.float32)


def _cell_output_shape(shape: tuple, channels: int, reduction: bool) -> tuple:
  height, width = shape[1], shape[2]
  if reduction:
    height, width = (height + 1) // 2, (width + 1) // 2
  return (shape[0], height, width, channels)


class EvalNetwork(keras.Model):
  """A stack of discrete cells with two reduction cells, a stem and a classifier.

  The base of `NetworkCIFAR` and `NetworkImageNet`, which differ in their stems and
  auxiliary heads. The network is built at construction for `input_shape`.

  In training mode with `auxiliary=True`, `call` returns `(logits, aux_logits)`;
  otherwise it returns the logits alone. The drop-path rate is a non-trainable
  variable, `drop_path_rate`, set by the training loop each epoch.

  Args:
    genotype: a `Genotype`, its dict, a published name or alias, or a JSON file.
    num_classes: classifier outputs.
    init_channels: channels of the first cells (C).
    num_cells: number of cells (L), reduction cells included.
    auxiliary: add the auxiliary head after the second reduction cell.
    input_shape: `(height, width, channels)` of the images.
    sync_batch_norm: in training under several replicas, batch norm with the
      statistics of the global batch (True) or of each replica's sub-batch.

  Raises:
    UserInputError: for an unknown genotype, too few cells, or non-positive sizes.
  """

  def __init__(self, genotype: Any, num_classes: int, init_channels: int,
               num_cells: int, auxiliary: bool, input_shape: tuple[int, int, int],
               sync_batch_norm: bool = True, **kwargs):
    super().__init__(**kwargs)
    self.sync_batch_norm = sync_batch_norm
    if num_cells < 3:
      raise UserInputError(f"num_cells must be at least 3 (two of them reduction "
                           f"cells), got {num_cells}.")
    for what, value in (("num_classes", num_classes), ("init_channels", init_channels)):
      if value < 1:
        raise UserInputError(f"{what} must be a positive integer, got {value}.")
    self.genotype = genotypes.as_genotype(genotype)
    self.num_classes, self.init_channels = num_classes, init_channels
    self.num_cells, self.auxiliary = num_cells, auxiliary
    self.image_shape = tuple(input_shape)
    self.aux_index = reduction_indices(num_cells)[1]
    self.drop_path_rate = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                          name="drop_path_rate", autocast=False)

    shape = (None,) + self.image_shape
    s0_shape, s1_shape, reduction_prev = self._build_stem(shape)
    c = init_channels
    self.cells, aux_shape = [], None
    for i in range(num_cells):
      reduction = i in reduction_indices(num_cells)
      if reduction:
        c *= 2
      if min(s0_shape[1:3]) < 2 or min(s1_shape[1:3]) < 2:
        raise UserInputError(
            f"The {self.image_shape[0]}x{self.image_shape[1]} input is too small: "
            f"cell {i} would get a map under 2x2. Use larger images.")
      cell = EvalCell(self.genotype, c, reduction, reduction_prev, sync_batch_norm,
                      name=f"cell_{i}")
      cell.build((s0_shape, s1_shape))
      self.cells.append(cell)
      out_shape = _cell_output_shape(s1_shape, cell.multiplier * c, reduction)
      s0_shape, s1_shape, reduction_prev = s1_shape, out_shape, reduction
      if i == self.aux_index:
        aux_shape = out_shape
    self.auxiliary_head = None
    if auxiliary:
      self.auxiliary_head = self._make_auxiliary_head()
      self.auxiliary_head.build(aux_shape)
    channels = s1_shape[-1]
    self.classifier = keras.layers.Dense(
        num_classes, kernel_initializer=layers.torch_uniform(channels),
        bias_initializer=layers.torch_uniform(channels), name="classifier")
    self.classifier.build((None, channels))
    self.built = True

  def _build_stem(self, shape: tuple) -> tuple[tuple, tuple, bool]:
    """Builds the stem; returns the two first cell inputs' shapes and reduction_prev."""
    raise NotImplementedError

  def _make_auxiliary_head(self) -> AuxiliaryHead:
    raise NotImplementedError

  def _stem(self, images, training):
    raise NotImplementedError

  def call(self, images, training=False):
    s0, s1 = self._stem(images, training)
    aux_logits = None
    for i, cell in enumerate(self.cells):
      s0, s1 = s1, cell(s0, s1, self.drop_path_rate, training=training)
      if training and i == self.aux_index and self.auxiliary_head is not None:
        aux_logits = _full_precision(self.auxiliary_head(s1, training=training))
    logits = _full_precision(self.classifier(tf.reduce_mean(s1, axis=[1, 2])))
    return logits if aux_logits is None else (logits, aux_logits)

  def get_config(self):
    return {"genotype": self.genotype.to_dict(), "num_classes": self.num_classes,
            "init_channels": self.init_channels, "num_cells": self.num_cells,
            "auxiliary": self.auxiliary, "input_shape": list(self.image_shape),
            "sync_batch_norm": self.sync_batch_norm, "name": self.name}


class NetworkCIFAR(EvalNetwork):
  """The CIFAR network: a 3x3 conv stem of 3C channels, then the cells.

  The reference CIFAR-10 setting is 20 cells with C=36 (DARTS Appendix A.2).
  Arguments as `EvalNetwork`; `input_shape` defaults to 32x32x3.
  """

  def __init__(self, genotype: Any, num_classes: int = 10, init_channels: int = 36,
               num_cells: int = 20, auxiliary: bool = True,
               input_shape: tuple[int, int, int] = (32, 32, 3),
               sync_batch_norm: bool = True, **kwargs):
    super().__init__(genotype, num_classes, init_channels, num_cells, auxiliary,
                     input_shape, sync_batch_norm, **kwargs)

  def _build_stem(self, shape):
    stem_channels = STEM_MULTIPLIER * self.init_channels
    self.stem = layers.ConvBN(stem_channels, 3, 1, 1, relu=False,
                              sync_batch_norm=self.sync_batch_norm, name="stem")
    self.stem.build(shape)
    out = shape[:3] + (stem_channels,)
    return out, out, False

  def _make_auxiliary_head(self) -> AuxiliaryHead:
    return AuxiliaryHead(self.num_classes, second_bn=True,
                         sync_batch_norm=self.sync_batch_norm, name="auxiliary_head")

  def _stem(self, images, training):
    s = self.stem(images, training=training)
    return s, s


class NetworkImageNet(EvalNetwork):
  """The ImageNet mobile network: three stride-2 3x3 conv stems (224 -> 28), cells.

  stem0 is conv(C/2, stride 2) -> BN -> ReLU -> conv(C, stride 2) -> BN and feeds
  the first cell's input 0; stem1 is ReLU -> conv(C, stride 2) -> BN on stem0's
  output and feeds input 1. The reference mobile setting is 14 cells with C=48
  (DARTS Appendix A.2). Arguments as `EvalNetwork`; `input_shape` defaults to
  224x224x3.
  """

  def __init__(self, genotype: Any, num_classes: int = 1000, init_channels: int = 48,
               num_cells: int = 14, auxiliary: bool = True,
               input_shape: tuple[int, int, int] = (224, 224, 3),
               sync_batch_norm: bool = True, **kwargs):
    super().__init__(genotype, num_classes, init_channels, num_cells, auxiliary,
                     input_shape, sync_batch_norm, **kwargs)

  def _build_stem(self, shape):
    c = self.init_channels
    if c % 2:
      raise UserInputError(f"The ImageNet network needs an even init_channels (its "
                           f"stem halves it), got {c}.")
    sync = self.sync_batch_norm
    self.stem0_a = layers.ConvBN(c // 2, 3, 2, 1, relu=False, sync_batch_norm=sync,
                                 name="stem0_a")
    self.stem0_b = layers.ConvBN(c, 3, 2, 1, sync_batch_norm=sync, name="stem0_b")
    self.stem1 = layers.ConvBN(c, 3, 2, 1, sync_batch_norm=sync, name="stem1")
    halve = lambda s, ch: (s[0], (s[1] + 1) // 2, (s[2] + 1) // 2, ch)
    self.stem0_a.build(shape)
    shape_a = halve(shape, c // 2)
    self.stem0_b.build(shape_a)
    shape0 = halve(shape_a, c)
    self.stem1.build(shape0)
    return shape0, halve(shape0, c), True

  def _make_auxiliary_head(self) -> AuxiliaryHead:
    return AuxiliaryHead(self.num_classes, second_bn=False,
                         sync_batch_norm=self.sync_batch_norm, name="auxiliary_head")

  def _stem(self, images, training):
    s0 = self.stem0_b(self.stem0_a(images, training=training), training=training)
    return s0, self.stem1(s0, training=training)


class Setting(NamedTuple):
  """A published evaluation setting: network class and its reference sizes."""
  network: type
  num_classes: int
  init_channels: int
  num_cells: int
  input_shape: tuple[int, int, int]


# Reference sizes: DARTS Appendix A.2 and MiLeNAS supplementary Section A. The
# Fashion-MNIST setting is this project's small CPU default.
SETTINGS = {
    "cifar10": Setting(NetworkCIFAR, 10, 36, 20, (32, 32, 3)),
    "imagenet": Setting(NetworkImageNet, 1000, 48, 14, (224, 224, 3)),
    "fashion_mnist": Setting(NetworkCIFAR, 10, 16, 8, (28, 28, 1)),
}


def build_network(genotype: Any, setting: str, init_channels: int | None = None,
                  num_cells: int | None = None, auxiliary: bool = True,
                  **kwargs) -> EvalNetwork:
  """Builds the evaluation network of a named setting.

  Args:
    genotype: a `Genotype`, its dict, a published name or alias, or a JSON file.
    setting: one of `SETTINGS` ("cifar10", "imagenet", "fashion_mnist").
    init_channels: C; the setting's reference value when None.
    num_cells: L; the setting's reference value when None.
    auxiliary: add the auxiliary head.
    **kwargs: passed to the network (e.g. `num_classes`, `input_shape`,
      `sync_batch_norm`, `name`).

  Returns:
    The built network.

  Raises:
    UserInputError: for an unknown setting or genotype, or bad sizes.
  """
  if setting not in SETTINGS:
    raise UserInputError(f"Unknown setting {setting!r}; choose one of "
                         f"{', '.join(sorted(SETTINGS))}.")
  s = SETTINGS[setting]
  kwargs.setdefault("num_classes", s.num_classes)
  kwargs.setdefault("input_shape", s.input_shape)
  return s.network(genotype, init_channels=init_channels or s.init_channels,
                   num_cells=num_cells or s.num_cells, auxiliary=auxiliary, **kwargs)
