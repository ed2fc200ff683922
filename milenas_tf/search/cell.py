"""The search cell: mixed operations on every edge of a 4-node DAG.

A mixed op computes `sum_o softmax(alpha)_o * o(x)` over the eight primitives
(DARTS, Eq. 1). All edges that leave the same node read the same input, so
`MixedOps` computes the mixed ops of all of them at once, in tensors that stack
the k edges on the channel axis:

- one ReLU for every conv branch and reduction;
- per conv branch and stage, one depthwise conv (the edges as channel
  multipliers), one 1x1 conv with a block-diagonal kernel (a separate C x C
  kernel per edge) and one fused batch norm over the k*C channels; the op's
  softmax weight on each edge is the scale of the branch's last (otherwise
  affine-free) batch norm, so weighting costs no extra pass over the data;
- the pools and their affine-free batch norms once (no weights, and the same
  batch on every edge); each edge adds them, and the identity, times its own
  scalar op weights;
- `none` is skipped: it adds zeros (its weight still enters the softmax).

The function is exactly the per-edge one of `space.layers` with the same
weights; the traced graph is several times smaller than per-edge layers', which
shortens tracing and graph instantiation (the time to the first step).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from milenas_tf.space import genotypes
from milenas_tf.space import kernels
from milenas_tf.space import layers

# Column of each primitive in the alpha matrix.
_COL = {name: i for i, name in enumerate(genotypes.PRIMITIVES)}
# The four convolutional primitives: (name, kernel size, padding, dilation).
CONV_BRANCHES = (("sep_conv_3x3", 3, 1, 1), ("sep_conv_5x5", 5, 2, 1),
                 ("dil_conv_3x3", 3, 2, 2), ("dil_conv_5x5", 5, 4, 2))
_CONV_COLS = [_COL[b[0]] for b in CONV_BRANCHES]


def _spatial_shape(x: tf.Tensor) -> list:
  """[-1, H, W], static where known (fewer graph ops than a dynamic shape)."""
  h, w = x.shape[1], x.shape[2]
  if h is None or w is None:
    dynamic = tf.shape(x)
    h, w = dynamic[1] if h is None else h, dynamic[2] if w is None else w
  return [-1, h, w]


def block_diagonal_pointwise(kernels: tf.Tensor, channel_major: bool) -> tf.Tensor:
  """One 1x1-conv kernel applying k separate (C, C) pointwise convs at once.

  Args:
    kernels: `(k, C, C)`, the pointwise kernel of each edge.
    channel_major: whether input channels are ordered (channel, edge), as a
      depthwise conv with multiplier k orders them; else (edge, channel).

  Returns:
    A `(1, 1, k*C, k*C)` kernel whose outputs are ordered (edge, channel).
  """
  k, c = kernels.shape[0], kernels.shape[1]
  eye = tf.constant(np.eye(k), dtype=kernels.dtype)
  dense = tf.einsum("ecd,ef->cefd" if channel_major else "ecd,ef->ecfd", kernels, eye)
  return tf.reshape(dense, [1, 1, k * c, k * c])


class MixedOps(keras.layers.Layer):
  """The mixed ops of all edges leaving one node (DARTS Eq. 1, search-time BN).

  Batch norms have no affine terms (as in the search network of the paper).

  Args:
    num_edges: edges leaving the node (k).
    strides: 2 for edges leaving an input node of a reduction cell, else 1.
    sync_batch_norm: global-batch batch norm across replicas in training.

  Call args:
    x: NHWC input, the node's value.
    weights: `(k, 8)` softmax weights of the k edges.
    training: batch statistics and their running averages.

  Returns:
    A list of k NHWC tensors: the output of every edge.
  """

  def __init__(self, num_edges: int, strides: int = 1, sync_batch_norm: bool = True,
               **kwargs):
    super().__init__(**kwargs)
    self.num_edges, self.strides = num_edges, strides
    self.sync_batch_norm = sync_batch_norm

  def build(self, input_shape):
    c, k = input_shape[-1], self.num_edges
    self.channels = c
    if self.strides > 1 and c % 2:
      raise ValueError(f"A reduction cell needs an even channel count, got {c}.")

    def stats(name, size):
      return (self.add_weight(shape=(size,), initializer="zeros", trainable=False,
                              name=f"{name}_moving_mean", autocast=False),
              self.add_weight(shape=(size,), initializer="ones", trainable=False,
                              name=f"{name}_moving_variance", autocast=False))

    # Stage 0 of every branch: a depthwise conv with the k edges as channel
    # multipliers, (ks, ks, C, k); stage 1 (separable convs only): per channel of
    # the stacked (edge, channel) tensor, (ks, ks, k*C, 1). Pointwise: (k, C, C).
    self.depthwise, self.pointwise, self.bn = {}, {}, {}
    for name, ks, _, _ in CONV_BRANCHES:
      for stage in range(2 if name.startswith("sep") else 1):
        key = (name, stage)
        self.depthwise[key] = self.add_weight(
            shape=(ks, ks, c, k) if stage == 0 else (ks, ks, k * c, 1),
            initializer=layers.torch_uniform(ks * ks), name=f"{name}_{stage}_depthwise")
        self.pointwise[key] = self.add_weight(
            shape=(k, c, c), initializer=layers.torch_uniform(c),
            name=f"{name}_{stage}_pointwise")
        self.bn[key] = stats(f"{name}_{stage}_bn", k * c)
    self.pool_bn = stats("pool_bn", 2 * c)
    if self.strides > 1:
      self.reduce_a = self.add_weight(shape=(c, k * (c // 2)),
                                      initializer=layers.torch_uniform(c), name="skip_reduce_a")
      self.reduce_b = self.add_weight(shape=(c, k * (c // 2)),
                                      initializer=layers.torch_uniform(c), name="skip_reduce_b")
      self.reduce_bn = stats("skip_reduce_bn", k * c)

  def call(self, x, weights, training=False):
    s, c, k = self.strides, self.channels, self.num_edges
    sync = self.sync_batch_norm
    relu = tf.nn.relu(x)
    # The weights taken apart by one op each (an unstack's gradient is one stack,
    # where every slice would add its own ops to each derivative of the step):
    # edge_scales[o] is op o's weight on each edge as an (edge, channel) BN scale
    # (batch norm takes it in float32), op_weights[o] its weight on each edge.
    edge_scales = tf.unstack(tf.repeat(weights, c, axis=0), axis=1)
    op_weights = tf.unstack(tf.cast(weights, x.dtype), axis=1)

    # The weighted sum over ops is folded into the last batch norm of every
    # parametric branch: w * BN(y) is BN(y) with scale w (the BN has no affine terms).
    branches = []
    for (name, _, pad, dil), col in zip(CONV_BRANCHES, _CONV_COLS):
      y = relu
      stages = 2 if name.startswith("sep") else 1
      for stage in range(stages):
        key = (name, stage)
        if stage:
          y = tf.nn.relu(y)
        y = kernels.depthwise_conv(y, self.depthwise[key], s if stage == 0 else 1, pad,
                                   dil if stage == 0 else 1)
        kernel = block_diagonal_pointwise(self.pointwise[key], channel_major=stage == 0)
        y = tf.nn.conv2d(y, tf.cast(kernel, y.dtype), 1, "VALID")
        y = kernels.batch_norm(y, *self.bn[key], training,
                               gamma=edge_scales[col] if stage == stages - 1 else None,
                               sync=sync)
      branches.append(y)
    if s > 1:  # skip_connect is a FactorizedReduce per edge; the edges share the input.
      half = c // 2
      reduced_a = kernels.pointwise_conv(relu, tf.cast(self.reduce_a, x.dtype), 2)
      reduced_b = kernels.pointwise_conv(relu[:, 1::2, 1::2, :],
                                         tf.cast(self.reduce_b, x.dtype))
      shape = _spatial_shape(reduced_a)
      reduced = tf.concat([tf.reshape(reduced_a, shape + [k, half]),
                           tf.reshape(reduced_b, shape + [k, half])], axis=-1)
      branches.append(kernels.batch_norm(
          tf.reshape(reduced, shape + [k * c]), *self.reduce_bn, training,
          gamma=edge_scales[_COL["skip_connect"]], sync=sync))
    edges = tf.split(tf.add_n(branches), k, axis=-1)

    # Pools and their affine-free BN see the same batch on every edge: shared.
    pools = tf.concat([kernels.max_pool(x, s), kernels.avg_pool(x, s)], axis=-1)
    pools = kernels.batch_norm(pools, *self.pool_bn, training, sync=sync)
    # split rather than slices: its gradient is one concat, where each slice's would
    # be a zero-filled full-size tensor.
    max_pool, avg_pool = tf.split(pools, 2, axis=-1)
    shared = [(max_pool, "max_pool_3x3"), (avg_pool, "avg_pool_3x3")]
    if s == 1:
      shared.append((x, "skip_connect"))
    # Each edge adds the shared terms scaled by its own (scalar) weights: the
    # gradient of a scalar weight is a full reduction, which is several times
    # faster than reducing an (edge, channel) broadcast over all but one axis.
    scalars = [tf.unstack(op_weights[_COL[name]]) for _, name in shared]
    return [tf.add_n([edge] + [y * w[e] for (y, _), w in zip(shared, scalars)])
            for e, edge in enumerate(edges)]

  def get_config(self):
    return {**super().get_config(), "num_edges": self.num_edges,
            "strides": self.strides, "sync_batch_norm": self.sync_batch_norm}


class SearchCell(keras.layers.Layer):
  """A normal or reduction cell of the search network (supplementary A.1).

  Inputs are the outputs of the two previous cells, each preprocessed to
  `channels` (a FactorizedReduce for the older one when the previous cell
  reduced). Intermediate node i sums the mixed ops from every earlier node; the
  output concatenates the four intermediate nodes.

  Args:
    channels: channels of every node.
    reduction: a reduction cell (stride 2 on edges leaving the inputs).
    reduction_prev: whether the previous cell was a reduction cell.
    sync_batch_norm: global-batch batch norm across replicas in training.

  Call args:
    inputs: `[s0, s1]`, the outputs of cells k-2 and k-1.
    weights: `(14, 8)` softmax(alpha) of this cell type.
    training: training mode.

  Returns:
    NHWC output with `4 * channels` channels.
  """

  def __init__(self, channels: int, reduction: bool, reduction_prev: bool,
               sync_batch_norm: bool = True, **kwargs):
    super().__init__(**kwargs)
    self.channels, self.reduction, self.reduction_prev = channels, reduction, reduction_prev
    self.sync_batch_norm = sync_batch_norm

  def build(self, input_shape):
    s0_shape, s1_shape = (tuple(s) for s in input_shape)
    c = self.channels
    options = dict(affine=False, sync_batch_norm=self.sync_batch_norm)
    if self.reduction_prev:
      self.preprocess0 = layers.FactorizedReduce(c, name="preprocess0", **options)
    else:
      self.preprocess0 = layers.ConvBN(c, name="preprocess0", **options)
    self.preprocess1 = layers.ConvBN(c, name="preprocess1", **options)
    self.preprocess0.build(s0_shape)
    self.preprocess1.build(s1_shape)
    self.build_edges(s1_shape[:-1] + (c,))

  def build_edges(self, node_shape: tuple) -> None:
    """Builds the ops on the cell's edges, whose nodes have `node_shape`."""
    self.mixed = []
    # Node j feeds intermediate nodes max(0, j - 1) .. 3.
    for j in range(genotypes.NUM_NODES + 1):
      targets = list(range(max(0, j - 1), genotypes.NUM_NODES))
      strides = 2 if self.reduction and j < 2 else 1
      layer = MixedOps(len(targets), strides, self.sync_batch_norm, name=f"mixed_from_{j}")
      layer.build(node_shape)
      self.mixed.append((layer, targets, [genotypes.edge_index(i, j) for i in targets]))

  def preprocess(self, inputs, training: bool) -> list[tf.Tensor]:
    """The cell's two input nodes from the outputs of cells k-2 and k-1."""
    s0, s1 = inputs
    return [self.preprocess0(s0, training=training), self.preprocess1(s1, training=training)]

  def call(self, inputs, weights, training=False):
    states = self.preprocess(inputs, training)
    incoming = [[] for _ in range(genotypes.NUM_NODES)]
    for j, (layer, targets, edge_ids) in enumerate(self.mixed):
      if j >= 2:
        states.append(tf.add_n(incoming[j - 2]))
      outputs = layer(states[j], tf.gather(weights, edge_ids), training=training)
      for target, y in zip(targets, outputs):
        incoming[target].append(y)
    states.append(tf.add_n(incoming[-1]))
    return tf.concat(states[2:], axis=-1)

  def get_config(self):
    return {**super().get_config(), "channels": self.channels,
            "reduction": self.reduction, "reduction_prev": self.reduction_prev,
            "sync_batch_norm": self.sync_batch_norm}
