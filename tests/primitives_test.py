"""The primitives against float64 re-computations of the reference definitions.

Values against NumPy; first and second derivatives of the faster formulations against
TF's straightforward ones (explicit padding, stride-1 ops subsampled).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from milenas_tf.core.errors import UserInputError
from milenas_tf.space import genotypes
from milenas_tf.space import kernels
from milenas_tf.space import layers

EPS = 1e-5


def np_depthwise(x, k, stride, pad, dil=1):
  """PyTorch's Conv2d(groups=C): symmetric zero padding, window start i*stride - pad."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ks = k.shape[0]
  span = dil * (ks - 1) + 1
  out_h = (x.shape[1] - span) // stride + 1
  out_w = (x.shape[2] - span) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
  for a in range(ks):
    for b in range(ks):
      patch = x[:, a * dil: a * dil + stride * (out_h - 1) + 1: stride,
                b * dil: b * dil + stride * (out_w - 1) + 1: stride, :]
      out += patch * k[a, b, :, 0]
  return out


def np_pool(x, stride, kind):
  """3x3 pooling, padding 1; max ignores padding, average excludes it from the count."""
  h, w = x.shape[1:3]
  out_h, out_w = (h + 2 - 3) // stride + 1, (w + 2 - 3) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
  for i in range(out_h):
    for j in range(out_w):
      r0, c0 = i * stride - 1, j * stride - 1
      win = x[:, max(r0, 0):r0 + 3, max(c0, 0):c0 + 3, :]
      out[:, i, j] = win.max(axis=(1, 2)) if kind == "max" else win.mean(axis=(1, 2))
  return out


def np_bn(x):
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  return (x - mean) / np.sqrt(var + EPS)


def relu(x):
  return np.maximum(x, 0)


def np_dil_conv(x, op, stride, pad, dil):
  y = np_depthwise(relu(x), op.depthwise.numpy().astype(np.float64), stride, pad, dil)
  return np_bn(y @ op.pointwise.numpy().astype(np.float64))


def reference(name, op, x, stride):
  if name == "none":
    return np.zeros_like(x[:, ::stride, ::stride])
  if name in ("max_pool_3x3", "avg_pool_3x3"):
    return np_pool(x, stride, name[:3])
  if name == "skip_connect":
    if stride == 1:
      return x
    r = relu(x)
    a = r[:, ::2, ::2] @ op.kernel_a.numpy()
    b = r[:, 1::2, 1::2] @ op.kernel_b.numpy()
    return np_bn(np.concatenate([a, b], axis=-1))
  k = int(name[-1])
  if name.startswith("sep"):
    return np_dil_conv(np_dil_conv(x, op.first, stride, k // 2, 1), op.second, 1, k // 2, 1)
  return np_dil_conv(x, op, stride, k - 1, 2)


# FactorizedReduce needs an even input size, as in the reference code.
CASES = [(name, stride, size) for name in genotypes.PRIMITIVES for stride in (1, 2)
         for size in (8, 7) if not (name == "skip_connect" and stride == 2 and size % 2)]


@pytest.mark.parametrize("name,stride,size", CASES)
def test_primitive_matches_reference_definition(name, stride, size):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, size, size, 4))
  op = layers.make_operation(name, 4, stride, affine=False)
  parametric = (layers.SepConv, layers.DilConv, layers.FactorizedReduce)
  x32 = tf.constant(x, tf.float32)
  got = op(x32, training=True) if isinstance(op, parametric) else op(x32)
  want = reference(name, op, x, stride)
  out = (size - 1) // stride + 1
  assert got.shape == (2, out, out, 4) == want.shape
  np.testing.assert_allclose(got.numpy(), want, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("kernel,padding", [(3, 2), (5, 4), (3, 3)])
def test_dilated_stride_two_is_stride_one_subsampled(size, kernel, padding):
  """The definition: the stride-2 dilated conv is the stride-1 one at even positions.

  Padding 2 and 4 take the subsampled-input shortcut; padding 3 the general path.
  """
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, size, size, 3))
  k = rng.normal(size=(kernel, kernel, 3, 1))
  got = kernels.depthwise_conv(tf.constant(x), tf.constant(k), 2, padding, 2).numpy()
  want = np_depthwise(x, k, 1, padding, 2)[:, ::2, ::2]
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-9)
  np.testing.assert_allclose(got, np_depthwise(x, k, 2, padding, 2), atol=1e-9)


def value_and_derivatives(f, *args):
  """f's value, and the first and second derivatives the searches take of it.

  The loss sum(g * f(args)^2) (a fixed cotangent g), its gradient with respect to
  every argument, and the gradient of that gradient's dot product with a fixed vector
  (a Hessian-vector product, through nested tapes, as the exact second-order search).
  """
  args = [tf.constant(a) for a in args]
  with tf.GradientTape() as outer:
    outer.watch(args)
    with tf.GradientTape() as inner:
      inner.watch(args)
      y = f(*args)
      g = tf.sin(tf.reshape(tf.range(tf.size(y), dtype=y.dtype), tf.shape(y)))
      loss = tf.reduce_sum(g * tf.square(y))
    grads = inner.gradient(loss, args)
    dot = tf.add_n([tf.reduce_sum(d * tf.cos(a)) for d, a in zip(grads, args)])
  return [t.numpy() for t in [y, *grads, *outer.gradient(dot, args)]]


def assert_same_derivatives(got, want):
  assert [a.shape for a in got] == [a.shape for a in want]
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


# (kernel, stride, padding, dilation, multiplier): the "SAME" path (3x3, multiplier
# 1), the custom input gradient of same-size stride-1 5x5 convs (with and without
# a multiplier), TF's kernels for 3x3 with a multiplier, explicit padding (stride 2),
# the phase split (dilation 2 and 3, where odd sizes are zero-extended), the
# subsampled-input shortcut and the general strided dilated path.
CONVS = [(3, 1, 1, 1, 1), (5, 1, 2, 1, 1), (5, 1, 2, 1, 2), (3, 1, 1, 1, 2),
         (3, 2, 1, 1, 1), (3, 1, 2, 2, 1), (5, 1, 4, 2, 2), (3, 1, 3, 3, 1),
         (3, 2, 2, 2, 1), (5, 2, 4, 2, 2), (3, 2, 3, 2, 1)]


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("kernel,stride,padding,dilation,multiplier", CONVS)
def test_depthwise_conv_derivatives_match_definition(kernel, stride, padding, dilation,
                                                     multiplier, size):
  """Value, gradients and second derivatives equal those of the definition.

  The definition: TF's stride-1 (dilated) convolution with explicit symmetric
  padding, subsampled at the stride.
  """
  rng = np.random.default_rng(6)
  x = rng.normal(size=(2, size, size, 3))
  k = rng.normal(size=(kernel, kernel, 3, multiplier))
  pads = [[0, 0], [padding, padding], [padding, padding], [0, 0]]

  def definition(x, k):
    y = tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], pads, dilations=[dilation] * 2)
    return y[:, ::stride, ::stride, :]

  got = value_and_derivatives(
      lambda x, k: kernels.depthwise_conv(x, k, stride, padding, dilation), x, k)
  assert_same_derivatives(got, value_and_derivatives(definition, x, k))


@pytest.mark.parametrize("multiplier", [1, 2])
def test_5x5_conv_derivatives_in_float32(multiplier):
  """In float32 (oneDNN's kernels where it is on; float64 has none) too."""
  rng = np.random.default_rng(7)
  x = rng.normal(size=(2, 9, 9, 3)).astype(np.float32)
  k = rng.normal(size=(5, 5, 3, multiplier)).astype(np.float32)
  pads = [[0, 0], [2, 2], [2, 2], [0, 0]]
  got = value_and_derivatives(lambda x, k: kernels.depthwise_conv(x, k, 1, 2), x, k)
  want = value_and_derivatives(
      lambda x, k: tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], pads), x, k)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_stride_two_pool_derivatives_match_definition(kind, size):
  """Against the stride-1 "SAME" pool (padding 1, excluded) subsampled at 2.

  Mostly negative inputs, so that a padding value of 0 would win some maxima.
  """
  x = np.random.default_rng(7).normal(-1.0, 1.0, size=(2, size, size, 3))
  ours, tf_pool = {"max": (kernels.max_pool, tf.nn.max_pool2d),
                   "avg": (kernels.avg_pool, tf.nn.avg_pool2d)}[kind]
  got = value_and_derivatives(lambda x: ours(x, 2), x)
  want = value_and_derivatives(lambda x: tf_pool(x, 3, 1, "SAME")[:, ::2, ::2, :], x)
  assert_same_derivatives(got, want)


@pytest.mark.parametrize("traced", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_max_pool_second_derivative_is_the_gradient_at_each_window_maximum(dtype, stride,
                                                                           traced):
  """d/dw sum sin(grad_x sum(w * maxpool(x))) = cos(that gradient at each window's argmax).

  In a tf.function only MaxPoolGradGrad reads cos(.), so TensorFlow's CPU kernel may
  reuse its buffer (which it zeroes before reading) when the shapes match: at stride 1
  TF's own second derivative comes out wrong there, by about 1.
  """
  rng = np.random.default_rng(11)
  x = tf.constant(rng.normal(size=(2, 6, 6, 3)), dtype)
  w = tf.Variable(rng.normal(size=(2, 6 // stride, 6 // stride, 3)), dtype=dtype)

  def derivatives():
    with tf.GradientTape() as outer:
      with tf.GradientTape() as inner:
        inner.watch(x)
        loss = tf.reduce_sum(w * kernels.max_pool(x, stride))
      g = inner.gradient(loss, x)
      total = tf.reduce_sum(tf.sin(g))
    return outer.gradient(total, w), g

  got, g = tf.function(derivatives)() if traced else derivatives()
  xs, gs = x.numpy(), g.numpy()
  want = np.zeros(w.shape)
  for b, i, j, c in np.ndindex(*want.shape):
    rows = range(max(stride * i - 1, 0), min(stride * i + 2, 6))
    cols = range(max(stride * j - 1, 0), min(stride * j + 2, 6))
    # The first maximum in row-major order (the one the gradient routes to).
    r, q = max(((r, q) for r in rows for q in cols), key=lambda p: xs[b, p[0], p[1], c])
    want[b, i, j, c] = np.cos(gs[b, r, q, c])
  np.testing.assert_allclose(got.numpy(), want, atol=1e-6 if dtype == "float32" else 1e-14)


def test_factorized_reduce_derivatives_match_definition():
  """Against the two stride-2 1x1 convs, the second on the input shifted by a pixel."""
  rng = np.random.default_rng(8)
  x = rng.normal(size=(2, 8, 8, 4))
  ka, kb = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))

  def definition(x, ka, kb):
    r = tf.nn.relu(x)
    return tf.concat([tf.nn.conv2d(r, ka[None, None], 2, "VALID"),
                      tf.nn.conv2d(r[:, 1:, 1:, :], kb[None, None], 2, "VALID")], axis=-1)

  assert_same_derivatives(value_and_derivatives(kernels.factorized_reduce, x, ka, kb),
                          value_and_derivatives(definition, x, ka, kb))


def test_stride_two_is_not_tf_same_padding():
  """Explicit symmetric padding differs from TF's "same" at stride 2 (a guard)."""
  x = tf.random.normal((1, 8, 8, 2), seed=3)
  k = tf.random.normal((3, 3, 2, 1), seed=4)
  ours = kernels.depthwise_conv(x, k, 2, 1)
  same = tf.nn.depthwise_conv2d(x, k, [1, 2, 2, 1], "SAME")
  assert not np.allclose(ours.numpy(), same.numpy())


# float32: the fused kernel (without offset, under closed-form second derivatives);
# float64: by definition.
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_running_statistics_follow_pytorch(dtype, affine):
  policy = keras.config.dtype_policy()
  keras.config.set_dtype_policy(dtype)
  try:
    bn = layers.BatchNorm(affine=affine)
  finally:
    keras.config.set_dtype_policy(policy)
  x = np.random.default_rng(2).normal(2.0, 3.0, size=(4, 5, 5, 3)).astype(dtype)
  bn.build(x.shape)
  y = bn(tf.constant(x), training=True).numpy()
  assert y.dtype == dtype
  np.testing.assert_allclose(y, np_bn(x.astype(np.float64)), atol=1e-4)
  flat = x.reshape(-1, 3).astype(np.float64)
  np.testing.assert_allclose(bn.moving_mean.numpy(), 0.1 * flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9 + 0.1 * flat.var(0, ddof=1),
                             rtol=1e-5)
  inference = bn(tf.constant(x), training=False).numpy()
  want = (x - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + EPS)
  np.testing.assert_allclose(inference, want, atol=1e-4)


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("traced", [False, True])
def test_batch_norm_derivatives_in_float32(traced, scaled):
  """The fused float32 path's first and second derivatives (with respect to the input
  and, when given, the scale) against the float64 definition, with batch statistics,
  eagerly and inside a tf.function."""
  rng = np.random.default_rng(3)
  x = rng.normal(1.0, 2.0, size=(3, 5, 5, 4))
  gamma = rng.normal(1.0, 0.5, size=4)

  def batch_norm(dtype):
    moving_mean = keras.Variable(np.zeros(4), dtype=dtype)
    moving_variance = keras.Variable(np.ones(4), dtype=dtype)
    f = lambda x, *gamma: kernels.batch_norm(x, moving_mean, moving_variance, training=True,
                                             gamma=gamma[0] if gamma else None)
    return tf.function(f) if traced else f

  args = (x, gamma) if scaled else (x,)
  got = value_and_derivatives(batch_norm("float32"), *(a.astype(np.float32) for a in args))
  want = value_and_derivatives(batch_norm("float64"), *args)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_unknown_operation_is_rejected():
  with pytest.raises(UserInputError, match="Unknown operation 'conv_7x7'.*sep_conv_3x3"):
    layers.make_operation("conv_7x7", 8, 1)
