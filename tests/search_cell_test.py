"""MixedOps and SearchCell compute the per-edge function of milenas_tf.space.layers."""

import numpy as np
import pytest
import tensorflow as tf

from milenas_tf.search.cell import CONV_BRANCHES
from milenas_tf.search.cell import MixedOps
from milenas_tf.search.cell import SearchCell
from milenas_tf.search.network import SearchNetwork
from milenas_tf.space import genotypes
from milenas_tf.space import layers


def per_edge_ops(layer: MixedOps, edge: int, input_shape):
  """Primitive layers of one edge, holding that edge's weights of `layer`."""
  built = {}
  for name in genotypes.PRIMITIVES:
    op = layers.make_operation(name, layer.channels, layer.strides, affine=False)
    if not op.built:
      op.build(input_shape)
    built[name] = op
  c = layer.channels
  for name, _, _, _ in CONV_BRANCHES:
    op = built[name]
    halves = [op.first, op.second] if isinstance(op, layers.SepConv) else [op]
    for stage, half in enumerate(halves):
      depthwise = layer.depthwise[name, stage]
      half.depthwise.assign(depthwise[..., edge:edge + 1] if stage == 0
                            else depthwise[:, :, edge * c:(edge + 1) * c, :])
      half.pointwise.assign(layer.pointwise[name, stage][edge])
  if layer.strides > 1:
    half = slice(edge * (c // 2), (edge + 1) * (c // 2))
    built["skip_connect"].kernel_a.assign(layer.reduce_a[:, half])
    built["skip_connect"].kernel_b.assign(layer.reduce_b[:, half])
  return built


def apply_op(name, op, x, training):
  if isinstance(op, (layers.Pooling,)):
    bn = layers.BatchNorm(affine=False)
    return bn(op(x), training=training)
  if isinstance(op, (layers.Identity, layers.Zero)):
    return op(x)
  return op(x, training=training)


@pytest.mark.parametrize("strides", [1, 2])
def test_mixed_ops_equal_weighted_sum_of_primitives(strides):
  tf.keras.utils.set_random_seed(0)
  k, c = 3, 4
  shape = (2, 8, 8, c)
  x = tf.random.normal(shape, seed=1)
  layer = MixedOps(k, strides)
  layer.build(shape)
  weights = tf.nn.softmax(tf.random.normal([k, 8], seed=2), axis=-1)
  got = [y.numpy() for y in layer(x, weights, training=True)]
  assert len(got) == k
  for e in range(k):
    built = per_edge_ops(layer, e, shape)
    want = sum(weights[e, i].numpy() * apply_op(name, built[name], x, True).numpy()
               for i, name in enumerate(genotypes.PRIMITIVES))
    assert got[e].shape == (2, 8 // strides, 8 // strides, c)
    np.testing.assert_allclose(got[e], want, atol=2e-5)


@pytest.mark.parametrize("reduction,reduction_prev", [(False, False), (True, False),
                                                      (False, True)])
def test_search_cell_shapes_and_config(reduction, reduction_prev):
  cell = SearchCell(4, reduction, reduction_prev)
  s0 = tf.random.normal((2, 16 if reduction_prev else 8, 16 if reduction_prev else 8, 6))
  s1 = tf.random.normal((2, 8, 8, 5))
  out = cell([s0, s1], tf.nn.softmax(tf.random.normal([14, 8])), training=True)
  size = 4 if reduction else 8
  assert out.shape == (2, size, size, 16)
  assert SearchCell.from_config(cell.get_config()).get_config() == cell.get_config()


def test_search_network_outputs_logits_and_alpha_matters():
  tf.keras.utils.set_random_seed(0)
  net = SearchNetwork(5, init_channels=4, num_cells=3)
  x = tf.random.normal((2, 12, 12, 3), seed=5)
  logits = net(x, training=True)
  assert logits.shape == (2, 5) and logits.dtype == tf.float32
  assert [v.shape for v in net.arch_variables] == [(14, 8), (14, 8)]
  net.alphas_normal.assign(tf.random.normal((14, 8), seed=6) * 3)
  assert not np.allclose(net(x, training=True).numpy(), logits.numpy())
  assert SearchNetwork.from_config(net.get_config()).get_config() == net.get_config()
