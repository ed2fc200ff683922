"""Exact kernels of the DARTS primitives, with the derivatives the search needs.

Each function computes the reference (PyTorch) implementation's function for
identical weights and inputs: bias-free convolutions with symmetric zero padding;
average pooling that excludes the padding from its count; batch norm with epsilon
1e-5 and momentum 0.1 in PyTorch's convention (0.9 in Keras's). TensorFlow's
`padding="same"` pads stride-2 windows asymmetrically and so computes another
function; it is used only at stride 1, where it is the symmetric padding. Some ops
are computed by an equivalent, cheaper formulation (phase-split dilated
convolutions, strided pooling of an explicitly padded input); first and second
derivatives are those of the definition. The Keras layers are in `layers`.

Reference: He et al., "MiLeNAS: Efficient Neural Architecture Search via Mixed-Level
Reformulation", CVPR 2020, supplementary Section A.1; Liu et al., "DARTS", ICLR 2019.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from milenas_tf.core import distribution

BN_EPSILON = 1e-5


BN_MOMENTUM = 0.9  # Keras convention; PyTorch's momentum=0.1.


def explicit_padding(padding: int) -> str | list[list[int]]:
  """TF's padding argument for `padding` zeros on every side ("VALID" for none)."""
  return "VALID" if padding == 0 else [[0, 0], [padding, padding], [padding, padding],
                                       [0, 0]]


def depthwise_conv(x: tf.Tensor, kernel: tf.Tensor, strides: int, padding: int,
                   dilation: int = 1) -> tf.Tensor:
  """Depthwise convolution with symmetric zero padding, as PyTorch computes it.

  TensorFlow refuses a stride above 1 together with a dilation above 1. When the
  dilation divides the padding (every dilated op of the search space), output
  positions congruent modulo the dilation read only inputs of one such class (one
  polyphase component), and each component is an undilated convolution with padding
  `padding // dilation`. At stride 1 all components are computed as one batch
  (space-to-batch; the input zero-extended to a multiple of the dilation, the extra
  outputs cropped); this is faster on CPU than TF's dilated path. At a stride equal
  to the dilation only the first component is needed: the subsampled input, at a
  quarter of the cost. Otherwise it is the stride-1 dilated convolution, subsampled.

  "SAME" is the symmetric padding at stride 1 when `2 * padding == dilation * (k - 1)`,
  and with oneDNN (TF_ENABLE_ONEDNN_OPTS=1) it lets oneDNN take the forward and
  backward passes: faster for 3x3 kernels with channel multiplier 1, slower for 5x5
  kernels and for multipliers above 1 (on CPUs; without oneDNN both are as fast).
  It is used there only; 5x5 convolutions that keep the size at stride
  1 take their input gradient from a faster kernel (`_same_size_depthwise_conv`).

  Args:
    x: NHWC input.
    kernel: `(k, k, C, multiplier)` depthwise kernel.
    strides: spatial stride.
    padding: zero padding on every side.
    dilation: dilation rate.

  Returns:
    NHWC output with `C * multiplier` channels (channel-major, as TF orders them).
  """
  if dilation > 1 and padding % dilation == 0:
    if strides == dilation:
      return depthwise_conv(x[:, ::strides, ::strides, :], kernel, 1, padding // dilation)
    if strides == 1 and x.shape[1:3].is_fully_defined():
      block, extend = [dilation, dilation], [[0, -n % dilation] for n in x.shape[1:3]]
      y = depthwise_conv(tf.space_to_batch(x, block, extend), kernel, 1,
                         padding // dilation)
      return tf.batch_to_space(y, block, extend)
  size, _, _, multiplier = kernel.shape
  if strides > 1 and dilation > 1:
    y = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], explicit_padding(padding),
                               dilations=[dilation, dilation])
    return y[:, ::strides, ::strides, :]
  if strides == 1 and dilation == 1 and 2 * padding == size - 1:
    if (size, multiplier) == (3, 1):
      return tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME")
    if size > 3:
      return _same_size_depthwise_conv(x, tf.convert_to_tensor(kernel))
  return tf.nn.depthwise_conv2d(x, kernel, [1, strides, strides, 1], explicit_padding(padding),
                                dilations=[dilation, dilation])


@tf.custom_gradient
def _same_size_depthwise_conv(x: tf.Tensor, kernel: tf.Tensor):
  """Stride-1 depthwise conv, zero padding `(k - 1) / 2`, with a faster input gradient.

  The function and both derivatives are those of the convolution. The input gradient
  is the forward convolution of the output gradient with the kernel flipped in space
  (with a channel multiplier m, of every output channel, then summed over the m
  outputs of each input channel): for 5x5 kernels TensorFlow's registered kernel runs
  slower than that on CPUs at the search cells' shapes (3x3 kernels gain nothing).
  The kernel gradient is TensorFlow's. Both are differentiable ops,
  so second derivatives (the exact Hessian-vector product of second-order search)
  are exact too.

  Args:
    x: NHWC input.
    kernel: `(k, k, C, m)` kernel, k odd.

  Returns:
    The output, and the gradient function.
  """
  size, _, channels, multiplier = kernel.shape
  paddings = explicit_padding((size - 1) // 2)
  y = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], paddings)

  def grad(dy):
    flipped = tf.reshape(tf.reverse(kernel, [0, 1]), [size, size, -1, 1])
    dx = tf.nn.depthwise_conv2d(dy, flipped, [1, 1, 1, 1], paddings)
    if multiplier > 1:
      dx = tf.reduce_sum(tf.reshape(dx, tf.concat(
          [tf.shape(dx)[:3], [channels, multiplier]], 0)), axis=-1)
    dkernel = tf.nn.depthwise_conv2d_backprop_filter(
        x, kernel.shape, dy, [1, 1, 1, 1], paddings)
    return dx, dkernel

  return y, grad


def pointwise_conv(x: tf.Tensor, kernel: tf.Tensor, strides: int = 1) -> tf.Tensor:
  """1x1 convolution with a `(C_in, C_out)` kernel."""
  return tf.nn.conv2d(x, kernel[None, None], [1, strides, strides, 1], "VALID")


def _padded_pool(pool, x: tf.Tensor, strides: int, value: float) -> tf.Tensor:
  """3x3 `pool` at `strides` of `x` padded by one cell of `value` on every side."""
  padded = tf.pad(x, explicit_padding(1), constant_values=value)
  return pool(padded, 3, strides, "VALID")


def max_pool(x: tf.Tensor, strides: int) -> tf.Tensor:
  """3x3 max pooling, padding 1 (padded cells never win).

  At stride 1 TF's "SAME" pads one cell on each side (`_same_max_pool`). At stride 2
  the input is padded with -inf and pooled without padding: the same windows as the
  stride-1 output at 2i, at a quarter of the cost; unlike an explicit-padding pool,
  both have a second derivative in TF.
  """
  if strides == 1:
    return _same_max_pool(x)
  return _padded_pool(tf.nn.max_pool2d, x, strides, -math.inf)


_POOL_3X3 = {"ksize": [1, 3, 3, 1], "strides": [1, 1, 1, 1]}


@tf.custom_gradient
def _same_max_pool(x: tf.Tensor):
  """3x3 stride-1 "SAME" max pooling whose second derivative is always right.

  The value and the gradient are TensorFlow's (MaxPool, MaxPoolGrad). The derivative
  of the gradient with respect to the output gradient, which the exact
  Hessian-vector product of second-order search takes, is MaxPoolGradGrad on padded
  inputs. On the unpadded ones TensorFlow's CPU kernel (2.21) may take the buffer of
  its gradient input as its output, which it zeroes before reading that input: it may
  whenever the two have the same shape, as at stride 1 with "SAME", and nothing else
  still holds the input, which depends on the executor's schedule. In a `tf.function`
  the product then came out wrong, in float32 and float64, on some calls. With the
  input padded with -inf and pooled without padding, the gradient input has another
  shape than the output, so its buffer cannot be taken; the windows and the ties (the
  first maximum in row-major order wins) are the same.

  Args:
    x: NHWC input.

  Returns:
    The pooled tensor, and the gradient function.
  """
  y = tf.nn.max_pool2d(x, 3, 1, "SAME")

  def grad(dy):
    # Identities: the nested function closes over tensors of the graph it is called in.
    return _same_max_pool_gradient(tf.identity(x), tf.identity(y), dy)

  return y, grad


@tf.custom_gradient
def _same_max_pool_gradient(x: tf.Tensor, y: tf.Tensor, dy: tf.Tensor):
  """MaxPoolGrad of `_same_max_pool`, differentiable through the padded MaxPoolGradGrad."""
  dx = tf.raw_ops.MaxPoolGrad(orig_input=x, orig_output=y, grad=dy, padding="SAME",
                              **_POOL_3X3)

  def grad(h):
    # dx is piecewise constant in x and y (no derivative); linear in dy.
    d_dy = tf.raw_ops.MaxPoolGradGrad(
        orig_input=tf.pad(x, explicit_padding(1), constant_values=-math.inf), orig_output=y,
        grad=tf.pad(h, explicit_padding(1)), padding="VALID", **_POOL_3X3)
    return None, None, d_dy

  return dx, grad


def avg_pool(x: tf.Tensor, strides: int) -> tf.Tensor:
  """3x3 average pooling, padding 1, padded cells excluded from the count.

  At stride 1, TF's "SAME" pads one cell on each side and already excludes the
  padding. At stride 2 the zero-padded input is pooled without padding (sums over 9)
  and divided by the pooled ones (each window's share of real cells).
  """
  if strides == 1:
    return tf.nn.avg_pool2d(x, 3, 1, "SAME")
  share = _padded_pool(tf.nn.avg_pool2d, tf.ones_like(x[:1, :, :, :1]), strides, 0)
  return _padded_pool(tf.nn.avg_pool2d, x, strides, 0) / share


def batch_norm(x: tf.Tensor, moving_mean: keras.Variable,
               moving_variance: keras.Variable, training: bool,
               gamma: keras.Variable | None = None,
               beta: keras.Variable | None = None, sync: bool = True) -> tf.Tensor:
  """Fused batch norm over the last axis of an NHWC tensor.

  In training, normalises with the batch statistics and moves the running
  statistics towards them (with the unbiased batch variance, as PyTorch does),
  the moving average computed inside the fused op.

  Args:
    x: NHWC tensor.
    moving_mean: running mean variable, shape `(C,)`.
    moving_variance: running variance variable, shape `(C,)`.
    training: use and update batch statistics.
    gamma: optional scale; ones when absent (an affine-free batch norm).
    beta: optional offset; zeros when absent.
    sync: under a distribution strategy with several replicas, normalise with the
      statistics of the global batch (all-reduced across replicas), so that a step
      on N replicas computes what one device computes on the whole batch; False
      normalises each replica's sub-batch alone, as PyTorch's DataParallel does.
 In training without an offset (float32), the
  derivatives of the gradients are in closed form (`_offset_free_batch_norm`).

  Returns:
    The normalised tensor, of the dtype of `x`.
  """
  channels = x.shape[-1]
  if training and sync and distribution.replicas_in_sync() > 1:
    return _batch_norm_synchronized(x, moving_mean, moving_variance, gamma, beta)
  if x.dtype == tf.float64:
    return _batch_norm_float64(x, moving_mean, moving_variance, training, gamma, beta)
  scale = None if gamma is None else tf.cast(gamma, tf.float32)
  moving = tf.convert_to_tensor(moving_mean), tf.convert_to_tensor(moving_variance)
  if training and beta is None and x.dtype == tf.float32:
    y, mean, variance = _offset_free_batch_norm(x, scale, *moving)
  else:
    if scale is None:
      scale = tf.ones([channels], tf.float32)
    offset = tf.zeros([channels], tf.float32) if beta is None else tf.cast(beta, tf.float32)
    y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=scale, offset=offset, mean=moving[0], variance=moving[1],
        epsilon=BN_EPSILON, exponential_avg_factor=1.0 - BN_MOMENTUM if training else 1.0,
        is_training=training)
  if training:
    moving_mean.assign(mean)
    moving_variance.assign(variance)
  return y


def _offset_free_batch_norm(x: tf.Tensor, scale: tf.Tensor | None, moving_mean: tf.Tensor,
                            moving_variance: tf.Tensor):
  """Training-mode fused batch norm without offset, with fast second derivatives.

  The value and the gradients are the fused kernels' (FusedBatchNormV3 and its
  gradient op). What changes is the derivative of those gradients, which the exact
  Hessian-vector product of second-order search takes: TensorFlow's registered one
  rebuilds the gradients from about twenty elementwise ops and differentiates them,
  which costs much of the double-backward pass's time and memory;
  `_batch_norm_gradients` gives it in closed form.

  A gradient tape asks a `tf.custom_gradient` function for the gradient of each of
  its results and (in a graph) of each of its arguments, and builds zeros for those
  no one consumed. So only what needs a gradient goes in or out: the running
  statistics are read from the closure and returned beside the function, and an
  affine-free batch norm (`scale` None) has no scale argument at all.

  Args:
    x: NHWC float32 input.
    scale: the per-channel scale gamma, `(C,)` (the search cells fold the
      architecture weights into it), or None for ones.
    moving_mean: the running mean, `(C,)`.
    moving_variance: the running variance, `(C,)`.

  Returns:
    The normalised tensor and the updated running mean and variance (no gradient
    flows through these two).
  """
  channels = x.shape[-1]
  statistics = []

  @tf.custom_gradient
  def normalise(x, *gamma):
    scale = gamma[0] if gamma else tf.ones([channels], tf.float32)
    y, mean, variance, *saved = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=scale, offset=tf.zeros([channels], tf.float32), mean=moving_mean,
        variance=moving_variance, epsilon=BN_EPSILON,
        exponential_avg_factor=1.0 - BN_MOMENTUM, is_training=True)
    statistics.extend([mean, variance])

    def grad(dy):
      # Through identities, the nested functions close over tensors of the graph they
      # are called in: a tape outside a tf.function differentiates that graph.
      dx, dscale = _batch_norm_gradients(
          dy, *(tf.identity(t) for t in (x, scale, *saved)), scaled=bool(gamma))
      return (dx, dscale) if gamma else dx

    return y, grad

  y = normalise(x) if scale is None else normalise(x, scale)
  return (y, *statistics)


def _batch_norm_gradients(dy: tf.Tensor, x: tf.Tensor, scale: tf.Tensor,
                          saved_mean: tf.Tensor, saved_variance: tf.Tensor,
                          reserve: tf.Tensor, scaled: bool) -> tuple:
  """Input and scale gradients of a training batch norm, with derivatives in closed form.

  Per channel, with means <.> over the batch and both spatial axes (n elements),
  sigma^2 the biased batch variance plus epsilon, y = (x - <x>) / sigma the
  normalised input and g = dy, the gradients are

      dx = gamma F(g),  F(g) = (g - <g> - y <g y>) / sigma,      dgamma = n <g y>.

  F is linear in g and symmetric ({1, y} is orthonormal under <.>). For upstream
  gradients h (of dx) and k (of dgamma), with a = <h y>, b = <g y> and
  c = <g h> - <g><h> - a b, the derivatives of <h, dx> + k dgamma are

      d/dg     = gamma F(h) + k y,
      d/dx     = -gamma (a (g - <g>) + b (h - <h>) + (c - 2 a b) y) / sigma^2 + k F(g),
      d/dgamma = n c / sigma.

  Args:
    dy: the output gradient g.
    x: the batch norm's input.
    scale: gamma.
    saved_mean, saved_variance, reserve: the forward op's reserve spaces.
    scaled: whether gamma is a variable (else a constant: no dgamma, and no
      derivatives with respect to it).

  Returns:
    dx and dgamma (None when not `scaled`).
  """
  def gradients(upstream, x, scale, saved):
    return tf.raw_ops.FusedBatchNormGradV3(
        y_backprop=upstream, x=x, scale=scale, reserve_space_1=saved[0],
        reserve_space_2=saved[1], reserve_space_3=saved[2], epsilon=BN_EPSILON,
        is_training=True)[:2]

  def derivatives(h, k, dy, x, scale, saved):
    # The statistics from x, not the reserve spaces, whose meaning depends on the
    # device (with cuDNN the second holds the inverted variance, per the op's docs).
    axes = [0, 1, 2]
    centred = x - tf.reduce_mean(x, axes)
    inv_sigma = tf.math.rsqrt(tf.reduce_mean(tf.square(centred), axes) + BN_EPSILON)
    y = centred * inv_sigma
    g_mean, h_mean = tf.reduce_mean(dy, axes), tf.reduce_mean(h, axes)
    a, b = tf.reduce_mean(h * y, axes), tf.reduce_mean(dy * y, axes)
    c = tf.reduce_mean(dy * h, axes) - g_mean * h_mean - a * b
    d_dy = gradients(h, x, scale, saved)[0]
    d_x = (-scale * tf.square(inv_sigma)) * (
        a * (dy - g_mean) + b * (h - h_mean) + (c - 2.0 * a * b) * y)
    if not scaled:
      return d_dy, d_x, None, None, None
    d_scale = _count(x) * c * inv_sigma
    if k is not None:
      d_dy += k * y
      d_x += (k * inv_sigma) * (dy - g_mean - b * y)
    return d_dy, d_x, d_scale, None, None, None

  # A constant gamma is no argument: no dgamma, and no zeros for its gradient. The
  # reserve spaces are arguments: the decorator looks for variables between a
  # function's arguments and its results, and would walk the whole graph behind them.
  if scaled:
    @tf.custom_gradient
    def with_scale(dy, x, scale, *saved):
      return gradients(dy, x, scale, saved), lambda h, k: derivatives(
          h, k, dy, x, scale, saved)
    return with_scale(dy, x, scale, saved_mean, saved_variance, reserve)

  @tf.custom_gradient
  def input_only(dy, x, *saved):
    return gradients(dy, x, scale, saved)[0], lambda h: derivatives(
        h, None, dy, x, scale, saved)
  return input_only(dy, x, saved_mean, saved_variance, reserve), None


def _count(x: tf.Tensor) -> tf.Tensor:
  """Elements per channel of an NHWC tensor (static when the shape is known)."""
  if x.shape[:3].is_fully_defined():
    return tf.constant(float(x.shape[:3].num_elements()), x.dtype)
  return tf.cast(tf.reduce_prod(tf.shape(x)[:3]), x.dtype)


def _batch_norm_synchronized(x, moving_mean, moving_variance, gamma, beta):
  """Training batch norm with the statistics of the global batch (all replicas).

  Each replica's count, mean and centred sum of squares are gathered and combined
  exactly (the parallel variance of Chan, Golub and LeVeque), in float64. The
  one-pass E[x^2] - mean^2 would lose most float32 digits in channels whose variance
  is small against their squared mean, such as convolutions of flat backgrounds.
  Normalisation runs in float32, or in float64 for a float64 input, so that a float64
  network on N replicas computes what it computes on one device, to float64 rounding.
  """
  context = tf.distribute.get_replica_context()
  dtype = tf.float64 if x.dtype == tf.float64 else tf.float32
  xc = tf.cast(x, dtype)
  count = _count(xc)
  local_mean = tf.reduce_mean(xc, axis=[0, 1, 2])
  local_m2 = tf.reduce_sum(tf.square(xc - local_mean), axis=[0, 1, 2])
  local = tf.stack([tf.fill(tf.shape(local_mean), count), local_mean, local_m2])
  # Each replica's statistics in its own row: the sum gathers them (adding zeros is exact).
  row = tf.one_hot(context.replica_id_in_sync_group, context.num_replicas_in_sync,
                   dtype=dtype)
  rows = context.all_reduce(tf.distribute.ReduceOp.SUM, row[:, None, None] * local)
  counts, means, m2 = tf.unstack(tf.cast(rows, tf.float64), axis=1)
  n = tf.reduce_sum(counts, axis=0)
  mean = tf.reduce_sum(counts * means, axis=0) / n
  variance = (tf.reduce_sum(m2, axis=0)
              + tf.reduce_sum(counts * tf.square(means - mean), axis=0)) / n
  mean, variance, n = (tf.cast(t, dtype) for t in (mean, variance, n[0]))
  _update_moving_statistics(moving_mean, moving_variance, mean, variance, n)
  cast = lambda v: None if v is None else tf.cast(v, dtype)
  y = tf.nn.batch_normalization(xc, mean, variance, cast(beta), cast(gamma), BN_EPSILON)
  return tf.cast(y, x.dtype)


def _update_moving_statistics(moving_mean, moving_variance, mean, variance, count):
  """PyTorch's running averages: the batch variance enters unbiased (n / (n - 1))."""
  dtype = mean.dtype
  unbiased = variance * count / tf.maximum(count - 1.0, 1.0)
  keep = tf.constant(BN_MOMENTUM, dtype)
  moving_mean.assign(keep * tf.cast(moving_mean, dtype) + (1.0 - keep) * mean)
  moving_variance.assign(keep * tf.cast(moving_variance, dtype) + (1.0 - keep) * unbiased)


def _batch_norm_float64(x, moving_mean, moving_variance, training, gamma, beta):
  """`batch_norm` from its definition, for float64 (the fused kernel has none)."""
  if training:
    # Not tf.nn.moments: its stop_gradient on the mean makes second derivatives wrong.
    mean = tf.reduce_mean(x, axis=[0, 1, 2])
    variance = tf.reduce_mean(tf.square(x - mean), axis=[0, 1, 2])
    count = _count(x)
    _update_moving_statistics(moving_mean, moving_variance, mean, variance, count)
  else:
    mean = tf.cast(moving_mean, x.dtype)
    variance = tf.cast(moving_variance, x.dtype)
  cast = lambda v: None if v is None else tf.cast(v, x.dtype)
  return tf.nn.batch_normalization(x, mean, variance, cast(beta), cast(gamma),
                                   BN_EPSILON)


def factorized_reduce(x: tf.Tensor, kernel_a: tf.Tensor, kernel_b: tf.Tensor) -> tf.Tensor:
  """ReLU, then two 1x1 stride-2 convs, the second on the input shifted by a pixel.

  Args:
    x: NHWC input.
    kernel_a: `(C_in, C_a)` kernel applied at even positions.
    kernel_b: `(C_in, C_b)` kernel applied at odd positions (`x[:, 1:, 1:]`).

  Returns:
    The two results, concatenated on channels (before batch norm).
  """
  r = tf.nn.relu(x)  # The shifted stride-2 conv reads the odd positions only.
  return tf.concat([pointwise_conv(r, kernel_a, 2),
                    pointwise_conv(r[:, 1::2, 1::2, :], kernel_b)], axis=-1)
