"""Gumbel-softmax sampling of one operation per edge (GDAS; Dong & Yang, CVPR 2019).

Each forward pass samples, for every edge e of a cell type (14 rows of alpha),

    g ~ Gumbel(0, 1)^8,   y_e = softmax((log_softmax(alpha_e) + g) / tau),
    i*_e = argmax_o y_e,  h_e = one_hot(i*_e) + (y_e - stop_gradient(y_e)),

the straight-through estimator: h_e is exactly one-hot in the forward pass (the
term y - stop_gradient(y) is exactly zero) and has the Jacobian of y_e in the
backward pass. The edge computes only its sampled operation, and adds the other
entries of h_e as scalars, as GDAS's code does:

    out_e = h_e[i*_e] * op_{i*_e}(x) + sum_{j != i*_e} h_e[j].

The sum is exactly 0 in value. In the backward pass, with G = d L / d out_e,
d L / d y_e[i*] = <G, op_{i*}(x)> and d L / d y_e[j] = sum(G) for j != i*, and the
softmax takes both to every alpha of the edge. Without the scalars, an edge that
sampled `none` (op(x) = 0) would pass no gradient to its alpha at all.

The temperature tau falls linearly over the search epochs (GDAS's schedule):

    tau(epoch) = tau_max - (tau_max - tau_min) * epoch / (epochs - 1),

from tau_max at the first epoch to tau_min at the last (GDAS: 10 -> 0.1). It is a
non-trainable variable of the network, set by the search step from the w
optimiser's step counter (`TemperatureSchedule`), so a traced step reads its
current value.

The noise comes from a `keras.random.SeedGenerator` of the network: reproducible
from its seed (or from the global seed of `keras.utils.set_random_seed`), fresh
for every forward pass, and saved with the network's weights. The uniform draws
are bounded away from 0 and 1, so g is finite and no sample needs redrawing.

`GumbelCell` is the per-edge search cell: every edge (`GumbelEdge`) holds the
eight primitives of `space.layers` (affine-free batch norms; pools followed by
one; the same functions and initialisation) and runs the sampled one through
`tf.switch_case`; the other branches are not executed, in the forward or the
backward pass. So that the step's graph stays small:

- each branch is one call of a traced function of the primitive (`_forward`,
  `_backward`), shared by all edges of the same shapes: one copy of each
  primitive per shape in the graph, not one per edge;
- an edge keeps its weights in one flat variable and its running statistics in
  another (two variables per edge rather than up to 22), which the branches
  slice: a few ops per edge outside the branches, and in the optimisers.

The backward branch recomputes the sampled op's forward pass from the edge's
input: only the edge inputs are kept between the passes, at the cost of a second
forward pass of the sampled ops.

Where this differs from GDAS's code: the w step applies momentum and the coupled
L2 decay to every weight, so the weights of ops not sampled still move (PyTorch's
SGD skips parameters without a gradient); and the sampled path's batch norms have
no global-batch form, so `search.model.SearchModel` refuses several replicas.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from milenas_tf.search import cell
from milenas_tf.space import genotypes
from milenas_tf.space import kernels

# Smallest uniform draw: keeps g = -log(-log(u)) finite (-4.5 < g < 17 in float32).
_TINY = float(np.finfo(np.float32).tiny)


def temperature(epoch, epochs: int, tau_max: float, tau_min: float) -> tf.Tensor:
  """GDAS's linear schedule: tau_max at epoch 0, tau_min at epoch `epochs - 1`.

  Args:
    epoch: the 0-based epoch (a number or a tensor; clipped to the last epoch).
    epochs: epochs of the search.
    tau_max: the first epoch's temperature.
    tau_min: the last epoch's temperature.

  Returns:
    The float32 temperature.
  """
  last = max(int(epochs) - 1, 1)
  # In float64: the last epoch's value rounds to float32(tau_min) exactly.
  epoch = tf.minimum(tf.cast(epoch, tf.float64), float(last))
  tau = tf.constant(float(tau_max), tf.float64) - (tau_max - tau_min) * epoch / last
  return tf.cast(tau, tf.float32)


class TemperatureSchedule:
  """The temperature of the epoch that contains an optimiser step.

  Args:
    tau_max: the first epoch's temperature.
    tau_min: the last epoch's temperature.
    epochs: epochs of the search.
    steps_per_epoch: optimiser steps in one epoch.
  """

  def __init__(self, tau_max: float, tau_min: float, epochs: int, steps_per_epoch: int):
    self.tau_max, self.tau_min = float(tau_max), float(tau_min)
    self.epochs, self.steps_per_epoch = int(epochs), max(int(steps_per_epoch), 1)

  def __call__(self, step) -> tf.Tensor:
    epoch = tf.math.floordiv(tf.cast(step, tf.int64), self.steps_per_epoch)
    return temperature(epoch, self.epochs, self.tau_max, self.tau_min)


def gumbel_softmax(logits: tf.Tensor, tau, seed) -> tuple[tf.Tensor, tf.Tensor]:
  """A hard straight-through Gumbel-softmax sample per row of `logits`.

  Args:
    logits: `(rows, ops)` alpha.
    tau: the temperature (scalar).
    seed: a `keras.random.SeedGenerator` (advanced by the call) or an int.

  Returns:
    `(h, index)`: h, `(rows, ops)` float32, one-hot in value with the gradient of
    the tempered softmax; index, `(rows,)` int32, the sampled op of each row.
  """
  logits = tf.cast(logits, tf.float32)
  u = keras.random.uniform(tf.shape(logits), minval=_TINY, maxval=1.0, dtype="float32",
                           seed=seed)
  noise = -tf.math.log(-tf.math.log(u))
  y = tf.nn.softmax((tf.nn.log_softmax(logits) + noise) / tf.cast(tau, tf.float32))
  index = tf.argmax(y, axis=-1, output_type=tf.int32)
  # y - stop_gradient(y) is exactly 0: the forward value is the one-hot itself.
  hard = tf.one_hot(index, logits.shape[-1], dtype=tf.float32) + (y - tf.stop_gradient(y))
  return hard, index


def primitive_shapes(name: str, channels: int, strides: int) -> tuple[list, list]:
  """The variables of a search-cell primitive at `channels` channels, in the order of
  `space.layers` (and of `_primitive`).

  Returns:
    ([(shape, fan_in) of each weight], [(shape, initial value) of each running
    statistic: the mean and variance of each batch norm]).
  """
  c = channels
  bn = [((c,), 0.0), ((c,), 1.0)]
  if name in ("max_pool_3x3", "avg_pool_3x3"):
    return [], bn
  if name == "skip_connect":
    return ([], []) if strides == 1 else ([((c, c // 2), c)] * 2, bn)
  if name.startswith(("sep_conv", "dil_conv")):
    k = int(name[-1])
    stage = [((k, k, c, 1), k * k), ((c, c), c)]
    return (stage * 2, bn * 2) if name.startswith("sep") else (stage, bn)
  return [], []


def _batch_norm(x, moving_mean, moving_variance, training):
  """Affine-free batch norm; returns (y, running mean, running variance) after it."""
  channels = x.shape[-1]
  y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
      x=x, scale=tf.ones([channels], tf.float32), offset=tf.zeros([channels], tf.float32),
      mean=moving_mean, variance=moving_variance, epsilon=kernels.BN_EPSILON,
      exponential_avg_factor=1.0 - kernels.BN_MOMENTUM if training else 1.0,
      is_training=training)
  if not training:
    return y, moving_mean, moving_variance
  return y, mean, variance


def _primitive(name: str, strides: int, training: bool, x, weights, statistics):
  """One search-cell primitive of `space.layers` (affine-free) as a function of tensors.

  Returns:
    (output, the running statistics after the call, as `statistics`).
  """
  weights = [tf.cast(w, x.dtype) for w in weights]
  if name == "none":
    return tf.zeros_like(x[:, ::strides, ::strides, :]), []
  if name in ("max_pool_3x3", "avg_pool_3x3"):
    pool = kernels.max_pool if name.startswith("max") else kernels.avg_pool
    y, *statistics = _batch_norm(pool(x, strides), *statistics, training)
    return y, statistics
  if name == "skip_connect":
    if strides == 1:
      return tf.identity(x), []
    y, *statistics = _batch_norm(kernels.factorized_reduce(x, *weights), *statistics,
                                 training)
    return y, statistics
  k = int(name[-1])
  dilation, padding = (1, k // 2) if name.startswith("sep") else (2, k - 1)
  stages = 2 if name.startswith("sep") else 1
  y, updated = x, []
  for stage in range(stages):
    depthwise, pointwise = weights[2 * stage:2 * stage + 2]
    y = kernels.depthwise_conv(tf.nn.relu(y), depthwise, strides if stage == 0 else 1,
                               padding, dilation)
    y, *moved = _batch_norm(kernels.pointwise_conv(y, pointwise),
                            *statistics[2 * stage:2 * stage + 2], training)
    updated += moved
  return y, updated


def _unpack(flat: tf.Tensor, layout) -> list[tf.Tensor]:
  """The tensors of `layout` ((offset, shape), ...) in the flat vector `flat`."""
  return [tf.reshape(flat[offset:offset + int(np.prod(shape))], shape)
          for offset, shape in layout]


def _flat_primitive(name, strides, training, x, weights, statistics, weight_layout,
                    statistic_layout):
  """`_primitive` on an edge's flat weight and statistics vectors; returns the output and
  the statistics vector with this primitive's running statistics moved."""
  y, moved = _primitive(name, strides, training, x, _unpack(weights, weight_layout),
                        _unpack(statistics, statistic_layout))
  if moved:  # one primitive's statistics are contiguous in the vector
    first = statistic_layout[0][0]
    last = statistic_layout[-1][0] + statistic_layout[-1][1][0]
    statistics = tf.concat([statistics[:first], *moved, statistics[last:]], axis=0)
  return y, statistics


# One traced function per primitive, stride, mode, shape and layout, shared by every
# edge of the network that has them: each branch of an edge is one call. Not inlined:
# the runtime too instantiates each function once, not once per call site.
_SHARED = dict(experimental_attributes={"_noinline": True})
_forward = tf.function(_flat_primitive, **_SHARED)


@tf.function(**_SHARED)
def _backward(name, strides, training, x, weights, statistics, weight_layout,
              statistic_layout, dy):
  """Gradients of `_flat_primitive`'s output along dy with respect to x and the flat
  weights (zero outside the primitive's own), by recomputing its forward pass: only
  the edge's input is kept for the backward pass."""
  with tf.GradientTape() as tape:
    tape.watch([x, weights])
    y, _ = _flat_primitive(name, strides, training, x, weights, statistics,
                           weight_layout, statistic_layout)
  return tape.gradient(y, [x, weights], output_gradients=dy,
                       unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _layout(entries) -> tuple[tuple, int]:
  """((offset, shape), ...) of consecutive tensors of `entries` ((shape, ...), ...) in a
  flat vector, from offset 0, and their total size."""
  layout, offset = [], 0
  for shape, _ in entries:
    layout.append((offset, tuple(shape)))
    offset += int(np.prod(shape))
  return tuple(layout), offset


class GumbelEdge(keras.layers.Layer):
  """The eight primitives of one edge; a call runs only the sampled one.

  The edge keeps the weights of its eight primitives in one flat vector
  (`flat_weights`) and their batch norms' running statistics in another
  (`flat_statistics`), primitive after primitive in the order of
  `genotypes.PRIMITIVES`, each primitive's tensors in the order of `space.layers`
  (`primitive_shapes`; `layout` gives the offsets). Initialised as `space.layers`
  does: weights U(-1/sqrt(fan_in), +), running means 0 and variances 1.

  The forward pass is a `tf.switch_case` on the sampled index whose branches call a
  traced function of the primitive; the backward pass is another `tf.switch_case`
  whose branch recomputes that primitive's forward pass and differentiates it
  (`_backward`). The other primitives run in neither pass: their part of
  `flat_weights` gets a zero gradient and their running statistics stay.

  Args:
    strides: 2 for edges leaving an input node of a reduction cell, else 1.

  Call args:
    x: NHWC input (the source node).
    weight: scalar, the sample's entry h[index] (value 1, gradient to alpha).
    others: scalar, the sum of the sample's other entries (value 0, gradient to alpha).
    index: scalar int32, the sampled column of `genotypes.PRIMITIVES`.
    training: training mode.

  Returns:
    `weight * op_index(x) + others`.
  """

  def __init__(self, strides: int = 1, **kwargs):
    super().__init__(**kwargs)
    self.strides = strides

  def build(self, input_shape):
    c, s = input_shape[-1], self.strides
    if s > 1 and c % 2:
      raise ValueError(f"A reduction edge needs an even channel count, got {c}.")
    shapes = [primitive_shapes(name, c, s) for name in genotypes.PRIMITIVES]
    # Per primitive: (weight layout, statistics layout), offsets in the edge's vectors.
    self.layout, weights, statistics = [], [], []
    weight_offset = statistic_offset = 0
    for op_weights, op_statistics in shapes:
      (w_layout, w_size), (s_layout, s_size) = _layout(op_weights), _layout(op_statistics)
      self.layout.append((tuple((o + weight_offset, sh) for o, sh in w_layout),
                          tuple((o + statistic_offset, sh) for o, sh in s_layout)))
      weight_offset += w_size
      statistic_offset += s_size
      weights += op_weights
      statistics += op_statistics

    def weight_init(shape, dtype=None):
      bounds = [np.full(int(np.prod(sh)), 1.0 / np.sqrt(fan_in), np.float32)
                for sh, fan_in in weights]
      bound = tf.constant(np.concatenate(bounds))
      return bound * keras.random.uniform(shape, -1.0, 1.0, dtype=dtype)

    statistics_init = np.concatenate(
        [np.full(int(np.prod(sh)), value, np.float32) for sh, value in statistics])
    self.flat_weights = self.add_weight(shape=(weight_offset,), initializer=weight_init,
                                        name="flat_weights", autocast=False)
    self.flat_statistics = self.add_weight(
        shape=(statistic_offset,), initializer=keras.initializers.Constant(statistics_init),
        trainable=False, name="flat_statistics", autocast=False)

  def call(self, x, weight, others, index, training=False):
    s, training, names = self.strides, bool(training), genotypes.PRIMITIVES
    layout = self.layout
    statistics = tf.convert_to_tensor(self.flat_statistics)

    @tf.custom_gradient
    def run(x, weights):
      def forward(i):
        return _forward(names[i], s, training, x, weights, statistics, *layout[i])

      outputs = tf.switch_case(index, [lambda i=i: forward(i) for i in range(len(names))])

      def grad(dy, *unused):
        def backward(i):
          return _backward(names[i], s, training, x, weights, statistics, *layout[i], dy)

        return tf.switch_case(index, [lambda i=i: backward(i) for i in range(len(names))])

      return outputs, grad

    y, moved = run(x, tf.convert_to_tensor(self.flat_weights))
    if training:
      self.flat_statistics.assign(moved)
    return y * tf.cast(weight, y.dtype) + tf.cast(others, y.dtype)

  def get_config(self):
    return {**super().get_config(), "strides": self.strides}


class GumbelCell(cell.SearchCell):
  """A search cell that runs one sampled operation per edge (GDAS).

  `cell.SearchCell`'s DAG, preprocessing, output and configuration, with a
  `GumbelEdge` on each of the 14 edges instead of the fused mixed ops.

  Args:
    channels: channels of every node.
    reduction: a reduction cell (stride 2 on edges leaving the inputs).
    reduction_prev: whether the previous cell was a reduction cell.
    sync_batch_norm: global-batch batch norm across replicas in training, in the
      preprocessing (the edges normalise each replica's batch).

  Call args:
    inputs: `[s0, s1]`, the outputs of cells k-2 and k-1.
    hard_weights: `(14, 8)` straight-through sample `h` of this cell type.
    indices: `(14,)` int32 sampled op of each edge.
    training: training mode.

  Returns:
    NHWC output with `4 * channels` channels.
  """

  def build_edges(self, node_shape: tuple) -> None:
    """Builds a `GumbelEdge` on each edge, whose nodes have `node_shape`."""
    # edges[i]: (source node, alpha row, edge) for every edge into intermediate node i.
    self.edges = []
    for i in range(genotypes.NUM_NODES):
      into = []
      for j in range(i + 2):
        strides = 2 if self.reduction and j < 2 else 1
        edge = GumbelEdge(strides, name=f"edge_{j}_to_{i + 2}")
        edge.build(node_shape)
        into.append((j, genotypes.edge_index(i, j), edge))
      self.edges.append(into)

  def call(self, inputs, hard_weights, indices, training=False):
    states = self.preprocess(inputs, training)
    # h[e, i*_e], the sampled entry of each edge, and the sum of its other entries.
    selected = tf.gather(hard_weights, indices, batch_dims=1)
    others = tf.reduce_sum(hard_weights, axis=1) - selected
    selected, others, columns = tf.unstack(selected), tf.unstack(others), tf.unstack(indices)
    for into in self.edges:
      states.append(tf.add_n([
          edge(states[j], selected[e], others[e], columns[e], training=training)
          for j, e, edge in into]))
    return tf.concat(states[2:], axis=-1)
