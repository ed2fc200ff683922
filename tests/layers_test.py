"""Every Keras layer of the package through the one harness (`test_case.run_layer_test`):
build, call, training gradients, tracing, `get_config` round trip, dtype policies."""

import numpy as np
import pytest

from milenas_tf.search.cell import MixedOps
from milenas_tf.search.cell import SearchCell
from milenas_tf.space import genotypes
from milenas_tf.space import layers
from milenas_tf.train.networks import AuxiliaryHead
from milenas_tf.train.networks import EvalCell
from test_case import run_layer_test

RNG = np.random.default_rng(0)


def images(*shape):
  return RNG.normal(size=shape).astype("float32")


X = images(2, 8, 8, 4)

# (class, constructor arguments, inputs, output shape, trainable, non-trainable weights)
PRIMITIVES = [
    (layers.BatchNorm, dict(affine=True), [X], (2, 8, 8, 4), 2, 2),
    (layers.BatchNorm, dict(affine=False, sync=False), [X], (2, 8, 8, 4), 0, 2),
    (layers.ConvBN, dict(filters=6), [X], (2, 8, 8, 6), 3, 2),
    (layers.ConvBN, dict(filters=6, kernel_size=3, strides=2, padding=1, relu=False),
     [X], (2, 4, 4, 6), 3, 2),
    (layers.DilConv, dict(filters=4, kernel_size=3, strides=2, padding=2, dilation=2,
                          affine=False), [X], (2, 4, 4, 4), 2, 2),
    (layers.SepConv, dict(filters=4, kernel_size=5, strides=1, padding=2),
     [X], (2, 8, 8, 4), 8, 4),
    (layers.FactorizedReduce, dict(filters=6), [X], (2, 4, 4, 6), 4, 2),
    (layers.Pooling, dict(kind="max", strides=2), [X], (2, 4, 4, 4), 0, 0),
    (layers.Pooling, dict(kind="avg", strides=1), [X], (2, 8, 8, 4), 0, 0),
    (layers.Identity, {}, [X], (2, 8, 8, 4), 0, 0),
    (layers.Zero, dict(strides=2), [X], (2, 4, 4, 4), 0, 0),
]


@pytest.mark.parametrize("layer_cls,kwargs,inputs,shape,trainable,non_trainable",
                         PRIMITIVES, ids=lambda v: getattr(v, "__name__", None))
def test_primitive_layers(layer_cls, kwargs, inputs, shape, trainable, non_trainable):
  run_layer_test(layer_cls, kwargs, inputs, shape,
                 expected_num_trainable_weights=trainable,
                 expected_num_non_trainable_weights=non_trainable)


def softmax_weights(edges):
  logits = RNG.normal(size=(edges, len(genotypes.PRIMITIVES)))
  return (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype("float32")


@pytest.mark.parametrize("strides", [1, 2])
def test_mixed_ops(strides):
  out = (2, 8 // strides, 8 // strides, 4)
  run_layer_test(MixedOps, dict(num_edges=3, strides=strides), [X, softmax_weights(3)],
                 [out] * 3, float_inputs=[0])


@pytest.mark.parametrize("reduction,reduction_prev", [(False, False), (True, False),
                                                      (False, True)])
def test_search_cell(reduction, reduction_prev):
  s0 = images(2, 16 if reduction_prev else 8, 16 if reduction_prev else 8, 6)
  side = 4 if reduction else 8
  run_layer_test(SearchCell, dict(channels=4, reduction=reduction,
                                  reduction_prev=reduction_prev),
                 [[s0, X], softmax_weights(genotypes.NUM_EDGES)], (2, side, side, 16),
                 float_inputs=[0])


@pytest.mark.parametrize("reduction,reduction_prev", [(False, False), (True, True)])
def test_eval_cell(reduction, reduction_prev):
  s0 = images(2, 16 if reduction_prev else 8, 16 if reduction_prev else 8, 6)
  side = 4 if reduction else 8
  run_layer_test(EvalCell, dict(genotype="DARTS_V2", channels=4, reduction=reduction,
                                reduction_prev=reduction_prev),
                 [s0, X], (2, side, side, 16), call_kwargs=dict(drop_rate=0.0),
                 build_input_shape=(s0.shape, X.shape))


@pytest.mark.parametrize("second_bn", [True, False])
def test_auxiliary_head(second_bn):
  run_layer_test(AuxiliaryHead, dict(num_classes=5, second_bn=second_bn),
                 [images(2, 8, 8, 6)], (2, 5))
