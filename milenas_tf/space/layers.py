"""The primitive operations of the DARTS search space, as Keras layers.

Each layer computes the reference (PyTorch) implementation's function for identical
weights and inputs through the functions of `kernels`, and takes its options as
constructor arguments:

- `affine`: batch norms with a learnt scale and offset (False inside the search
  network, True in the evaluation networks);
- `sync_batch_norm`: in training under a strategy with several replicas, batch norm
  normalises with the statistics of the global batch (True, the default: a step on
  N replicas computes what one device computes on the whole batch) or with each
  replica's sub-batch (False, as PyTorch's DataParallel does; the moving averages then
  follow the first replica's).

Primitives: `none` (Zero), `max_pool_3x3` and `avg_pool_3x3` (Pooling),
`skip_connect` (Identity, or FactorizedReduce at stride 2), `sep_conv_{3,5}x{3,5}`
(SepConv) and `dil_conv_{3,5}x{3,5}` (DilConv); `make_operation` builds one by name.

Reference: He et al., "MiLeNAS", CVPR 2020, supplementary Section A.1; Liu et al.,
"DARTS", ICLR 2019.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from milenas_tf.core.errors import UserInputError
from milenas_tf.space import genotypes
from milenas_tf.space import kernels


def torch_uniform(fan_in: int) -> keras.initializers.Initializer:
  """PyTorch's default convolution/linear initialiser: U(-1/sqrt(fan_in), +)."""
  bound = 1.0 / math.sqrt(fan_in)
  return keras.initializers.RandomUniform(-bound, bound)


class BatchNorm(keras.layers.Layer):
  """Batch norm with PyTorch's epsilon and momentum; optionally without affine terms.

  Args:
    affine: learn a scale and an offset.
    sync: use global-batch statistics across replicas in training.
  """

  def __init__(self, affine: bool = True, sync: bool = True, **kwargs):
    super().__init__(**kwargs)
    self.affine, self.sync = affine, sync

  def build(self, input_shape):
    channels = input_shape[-1]
    self.gamma = self.beta = None
    if self.affine:
      self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma",
                                   autocast=False)
      self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta",
                                  autocast=False)
    # Per-replica statistics differ between replicas: the moving averages keep the
    # first replica's, as DataParallel keeps the first device's buffers, rather than
    # letting each replica's copy of the variable drift apart.
    aggregation = "none" if self.sync else "only_first_replica"
    self.moving_mean = self.add_weight(shape=(channels,), initializer="zeros",
                                       trainable=False, name="moving_mean",
                                       autocast=False, aggregation=aggregation)
    self.moving_variance = self.add_weight(shape=(channels,), initializer="ones",
                                           trainable=False, name="moving_variance",
                                           autocast=False, aggregation=aggregation)

  def call(self, x, training=False):
    return kernels.batch_norm(x, self.moving_mean, self.moving_variance, training,
                              self.gamma, self.beta, sync=self.sync)

  def get_config(self):
    return {**super().get_config(), "affine": self.affine, "sync": self.sync}


class ConvBN(keras.layers.Layer):
  """[ReLU ->] k x k convolution (no bias, symmetric padding) -> batch norm.

  With `relu=True` this is the reference code's `ReLUConvBN` (the cells'
  preprocessing, 1x1); without, the convolution + batch norm of the stems and the
  auxiliary head.

  Args:
    filters: output channels.
    kernel_size: convolution size.
    strides: convolution stride.
    padding: symmetric zero padding.
    relu: apply a ReLU to the input first.
    affine: affine batch norm.
    sync_batch_norm: global-batch batch norm across replicas.
  """

  def __init__(self, filters: int, kernel_size: int = 1, strides: int = 1,
               padding: int = 0, relu: bool = True, affine: bool = True,
               sync_batch_norm: bool = True, **kwargs):
    super().__init__(**kwargs)
    self.filters, self.kernel_size, self.strides = filters, kernel_size, strides
    self.padding, self.relu, self.affine = padding, relu, affine
    self.sync_batch_norm = sync_batch_norm

  def build(self, input_shape):
    c_in, k = input_shape[-1], self.kernel_size
    self.kernel = self.add_weight(shape=(k, k, c_in, self.filters),
                                  initializer=torch_uniform(c_in * k * k), name="kernel")
    self.bn = BatchNorm(self.affine, self.sync_batch_norm, name="bn")
    self.bn.build(tuple(input_shape[:-1]) + (self.filters,))

  def call(self, x, training=False):
    if self.relu:
      x = tf.nn.relu(x)
    y = tf.nn.conv2d(x, self.kernel, self.strides, kernels.explicit_padding(self.padding))
    return self.bn(y, training=training)

  def get_config(self):
    return {**super().get_config(), "filters": self.filters,
            "kernel_size": self.kernel_size, "strides": self.strides,
            "padding": self.padding, "relu": self.relu, "affine": self.affine,
            "sync_batch_norm": self.sync_batch_norm}


class DilConv(keras.layers.Layer):
  """ReLU -> depthwise k x k (dilated, strided) -> 1x1 conv -> batch norm.

  Args:
    filters: output channels.
    kernel_size: depthwise kernel size.
    strides: depthwise stride.
    padding: symmetric zero padding of the depthwise conv.
    dilation: depthwise dilation.
    affine: affine batch norm.
    sync_batch_norm: global-batch batch norm across replicas.
  """

  def __init__(self, filters: int, kernel_size: int, strides: int, padding: int,
               dilation: int = 1, affine: bool = True, sync_batch_norm: bool = True,
               **kwargs):
    super().__init__(**kwargs)
    self.filters, self.kernel_size, self.strides = filters, kernel_size, strides
    self.padding, self.dilation, self.affine = padding, dilation, affine
    self.sync_batch_norm = sync_batch_norm

  def build(self, input_shape):
    c_in, k = input_shape[-1], self.kernel_size
    self.depthwise = self.add_weight(shape=(k, k, c_in, 1),
                                     initializer=torch_uniform(k * k), name="depthwise")
    self.pointwise = self.add_weight(shape=(c_in, self.filters),
                                     initializer=torch_uniform(c_in), name="pointwise")
    self.bn = BatchNorm(self.affine, self.sync_batch_norm, name="bn")
    self.bn.build(tuple(input_shape[:-1]) + (self.filters,))

  def call(self, x, training=False):
    y = kernels.depthwise_conv(tf.nn.relu(x), self.depthwise, self.strides, self.padding,
                               self.dilation)
    return self.bn(kernels.pointwise_conv(y, self.pointwise), training=training)

  def get_config(self):
    return {**super().get_config(), "filters": self.filters,
            "kernel_size": self.kernel_size, "strides": self.strides,
            "padding": self.padding, "dilation": self.dilation, "affine": self.affine,
            "sync_batch_norm": self.sync_batch_norm}


class SepConv(keras.layers.Layer):
  """Two stacked `DilConv`s without dilation; only the first is strided.

  Args:
    filters: output channels (the first half keeps the input channels).
    kernel_size: depthwise kernel size.
    strides: stride of the first depthwise conv.
    padding: symmetric zero padding of both depthwise convs.
    affine: affine batch norms.
    sync_batch_norm: global-batch batch norm across replicas.
  """

  def __init__(self, filters: int, kernel_size: int, strides: int, padding: int,
               affine: bool = True, sync_batch_norm: bool = True, **kwargs):
    super().__init__(**kwargs)
    self.filters, self.kernel_size = filters, kernel_size
    self.strides, self.padding, self.affine = strides, padding, affine
    self.sync_batch_norm = sync_batch_norm

  def build(self, input_shape):
    c_in = input_shape[-1]
    options = dict(affine=self.affine, sync_batch_norm=self.sync_batch_norm)
    self.first = DilConv(c_in, self.kernel_size, self.strides, self.padding, 1,
                         name="first", **options)
    self.second = DilConv(self.filters, self.kernel_size, 1, self.padding, 1,
                          name="second", **options)
    self.first.build(input_shape)
    self.second.build(tuple(input_shape[:-1]) + (c_in,))

  def call(self, x, training=False):
    return self.second(self.first(x, training=training), training=training)

  def get_config(self):
    return {**super().get_config(), "filters": self.filters,
            "kernel_size": self.kernel_size, "strides": self.strides,
            "padding": self.padding, "affine": self.affine,
            "sync_batch_norm": self.sync_batch_norm}


class FactorizedReduce(keras.layers.Layer):
  """Halves the resolution: ReLU, two shifted 1x1 stride-2 convs, concat, BN.

  Args:
    filters: output channels (even).
    affine: affine batch norm.
    sync_batch_norm: global-batch batch norm across replicas.

  Raises:
    UserInputError: for an odd number of filters.
  """

  def __init__(self, filters: int, affine: bool = True, sync_batch_norm: bool = True,
               **kwargs):
    super().__init__(**kwargs)
    if filters % 2:
      raise UserInputError(f"FactorizedReduce needs an even channel count, got {filters}.")
    self.filters, self.affine, self.sync_batch_norm = filters, affine, sync_batch_norm

  def build(self, input_shape):
    c_in, half = input_shape[-1], self.filters // 2
    self.kernel_a = self.add_weight(shape=(c_in, half), initializer=torch_uniform(c_in),
                                    name="kernel_a")
    self.kernel_b = self.add_weight(shape=(c_in, half), initializer=torch_uniform(c_in),
                                    name="kernel_b")
    self.bn = BatchNorm(self.affine, self.sync_batch_norm, name="bn")
    self.bn.build(tuple(input_shape[:-1]) + (self.filters,))

  def call(self, x, training=False):
    return self.bn(kernels.factorized_reduce(x, self.kernel_a, self.kernel_b),
                   training=training)

  def get_config(self):
    return {**super().get_config(), "filters": self.filters, "affine": self.affine,
            "sync_batch_norm": self.sync_batch_norm}


class Pooling(keras.layers.Layer):
  """3x3 max or average pooling (padding 1, average excluding padding).

  Args:
    kind: "max" or "avg".
    strides: pooling stride.
  """

  def __init__(self, kind: str, strides: int = 1, **kwargs):
    super().__init__(**kwargs)
    if kind not in ("max", "avg"):
      raise UserInputError(f"Unknown pooling kind {kind!r}: use 'max' or 'avg'.")
    self.kind, self.strides = kind, strides

  def call(self, x):
    return (kernels.max_pool if self.kind == "max" else kernels.avg_pool)(x, self.strides)

  def get_config(self):
    return {**super().get_config(), "kind": self.kind, "strides": self.strides}


class Identity(keras.layers.Layer):
  """Returns its input."""

  def call(self, x):
    return x


class Zero(keras.layers.Layer):
  """Zeros of the (strided) input's shape.

  Args:
    strides: spatial stride.
  """

  def __init__(self, strides: int = 1, **kwargs):
    super().__init__(**kwargs)
    self.strides = strides

  def call(self, x):
    return tf.zeros_like(x[:, ::self.strides, ::self.strides, :])

  def get_config(self):
    return {**super().get_config(), "strides": self.strides}


def make_operation(name: str, channels: int, strides: int, affine: bool = True,
                   layer_name: str | None = None, sync_batch_norm: bool = True
                   ) -> keras.layers.Layer:
  """Builds one primitive by name, keeping the channel count.

  Args:
    name: one of `genotypes.PRIMITIVES`.
    channels: input and output channels.
    strides: 1, or 2 in a reduction cell's edges from its inputs.
    affine: affine batch norms (False inside the search network).
    layer_name: Keras name of the layer.
    sync_batch_norm: global-batch batch norm across replicas.

  Returns:
    The layer.

  Raises:
    UserInputError: for an unknown primitive.
  """
  kw = {"name": layer_name}
  bn = {"affine": affine, "sync_batch_norm": sync_batch_norm}
  if name == "none":
    return Zero(strides, **kw)
  if name in ("max_pool_3x3", "avg_pool_3x3"):
    return Pooling(name[:3], strides, **kw)
  if name == "skip_connect":
    return Identity(**kw) if strides == 1 else FactorizedReduce(channels, **bn, **kw)
  if name in ("sep_conv_3x3", "sep_conv_5x5"):
    k = int(name[-1])
    return SepConv(channels, k, strides, k // 2, **bn, **kw)
  if name in ("dil_conv_3x3", "dil_conv_5x5"):
    k = int(name[-1])
    return DilConv(channels, k, strides, k - 1, 2, **bn, **kw)
  raise UserInputError(
      f"Unknown operation {name!r}; choose one of {', '.join(genotypes.PRIMITIVES)}.")
