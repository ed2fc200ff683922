"""The search step: alpha gradients of each method, update orders, the w and alpha updates."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from milenas_tf.core.errors import UserInputError
from milenas_tf.search import cell
from milenas_tf.search import model as search_model
from milenas_tf.search.model import _Passes
from milenas_tf.search.model import cross_entropy
from milenas_tf.space import layers

SHAPE = (8, 8, 1)
BATCH = 4


def tiny_model(method="milenas", order="reference", **kwargs):
  tf.keras.utils.set_random_seed(0)
  model = search_model.build_search_model(
      num_classes=3, input_shape=SHAPE, init_channels=4, num_cells=3, method=method,
      order=order, epochs=4, steps_per_epoch=10, **kwargs)
  # Alphas far from uniform, so that every op matters.
  for v in model.network.arch_variables:
    v.assign(np.random.default_rng(1).normal(size=v.shape).astype(np.float32))
  return model


def batches():
  rng = np.random.default_rng(7)
  make = lambda: (tf.constant(rng.normal(size=(BATCH,) + SHAPE), tf.float32),
                  tf.constant(rng.integers(0, 3, BATCH), tf.int32))
  return make(), make()


def alpha_grads(model, x, y):
  """grad_alpha of the cross-entropy, by a tape of its own."""
  with tf.GradientTape() as tape:
    loss = cross_entropy(y, model.network(x, training=True))
  return [g.numpy() for g in tape.gradient(loss, model.network.arch_variables)]


@pytest.mark.parametrize("method,val_coef,train_coef", [
    ("milenas", 1.7, 0.3), ("darts_1st", 1.0, 0.0), ("single_level", 0.0, 1.0)])
def test_alpha_gradient_of_each_method(method, val_coef, train_coef):
  model = tiny_model(method, lambda_val=1.7, lambda_train=0.3)
  train, val = batches()
  want_val, want_train = alpha_grads(model, *val), alpha_grads(model, *train)
  got = model.arch_gradients(_Passes(model, train, val))
  for g, gv, gt in zip(got, want_val, want_train):
    np.testing.assert_allclose(g.numpy(), val_coef * gv + train_coef * gt,
                               rtol=1e-4, atol=1e-6)


def test_fused_and_reference_orders_update_alpha_identically():
  train, val = batches()
  alphas = {}
  for order in ("reference", "fused"):
    model = tiny_model("milenas", order)
    model.train_step((train, val))
    alphas[order] = [v.numpy() for v in model.network.arch_variables]
  initial = [v.numpy() for v in tiny_model().network.arch_variables]
  for a, b, a0 in zip(alphas["reference"], alphas["fused"], initial):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not np.allclose(a, a0, rtol=0, atol=1e-6)


def test_one_step_equals_hand_written_adam_then_sgd_momentum():
  """alpha: Adam on the milenas gradient with coupled decay; then w: clip, L2, momentum."""
  lr, wd, clip = 0.025, 3e-4, 0.05  # small clip so that clipping acts
  lr_a, b1, b2, wd_a = 3e-4, 0.5, 0.999, 1e-3
  model = tiny_model("milenas", grad_clip=clip)
  train, val = batches()
  net = model.network
  alphas0 = [v.numpy() for v in net.arch_variables]
  w0 = [v.numpy() for v in net.weight_variables]
  g_alpha = [gv + gt for gv, gt in zip(alpha_grads(model, *val), alpha_grads(model, *train))]

  model.train_step((train, val))

  want_alphas = []
  for a, g in zip(alphas0, g_alpha):
    g = g + wd_a * a
    m, v = (1 - b1) * g, (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1), v / (1 - b2)
    want_alphas.append(a - lr_a * m_hat / (np.sqrt(v_hat) + 1e-7))
  for got, want in zip(net.arch_variables, want_alphas):
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-8)

  # The w gradient at the new alpha and the old w, by an independent tape.
  reference = tiny_model("milenas")
  for v, value in zip(reference.network.arch_variables, [a.numpy() for a in net.arch_variables]):
    v.assign(value)
  with tf.GradientTape() as tape:
    loss = cross_entropy(train[1], reference.network(train[0], training=True))
  g_w = [g.numpy() for g in tape.gradient(loss, reference.network.weight_variables)]
  norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in g_w))
  assert norm > clip
  for got, w, g in zip(net.weight_variables, w0, g_w):
    buf = g * (clip / norm) + wd * w  # PyTorch: buf = momentum * 0 + g
    np.testing.assert_allclose(got.numpy(), w - lr * buf, rtol=1e-4, atol=1e-6)


def test_momentum_carries_over_between_steps():
  model = tiny_model("single_level", grad_clip=0.0)
  weights = model.network.weight_variables[:3]
  w0 = [v.numpy() for v in weights]
  rng = np.random.default_rng(3)
  grads = [[rng.normal(size=v.shape).astype(np.float32) for v in model.network.weight_variables]
           for _ in range(2)]
  for g in grads:
    model.apply_weight_gradients([tf.constant(x) for x in g])
  lr, mom, wd = 0.025, 0.9, 3e-4
  for i, w in enumerate(w0):
    d1 = grads[0][i] + wd * w
    w1 = w - lr * d1
    buf = mom * d1 + grads[1][i] + wd * w1
    np.testing.assert_allclose(weights[i].numpy(), w1 - lr * buf, rtol=1e-5, atol=1e-7)


def test_alpha_is_float32_and_tracked():
  model = tiny_model()
  names = [v.path for v in model.network.arch_variables]
  assert all(v.dtype == "float32" for v in model.network.arch_variables)
  assert {id(v) for v in model.network.arch_variables} <= {id(v) for v in model.trainable_variables}
  assert not {id(v) for v in model.network.arch_variables} & {
      id(v) for v in model.network.weight_variables}
  assert any("alphas_normal" in n for n in names) and any("alphas_reduce" in n for n in names)


def test_sync_batch_norm_reaches_every_batch_norm():
  for sync in (True, False):
    network = tiny_model(sync_batch_norm=sync).network
    found = network._flatten_layers()  # pylint: disable=protected-access
    # The stem's and preprocessing's batch-norm layers, and the edges' mixed ops.
    norms = [layer.sync for layer in found if isinstance(layer, layers.BatchNorm)]
    edges = [layer.sync_batch_norm for layer in found
             if isinstance(layer, cell.MixedOps)]
    assert len(norms) > 5 and len(edges) > 3 and set(norms + edges) == {sync}


def test_unknown_method_and_order_are_rejected():
  with pytest.raises(UserInputError, match="Unknown search method 'bogus'.*milenas"):
    tiny_model("bogus")
  with pytest.raises(UserInputError, match="Unknown update order 'sideways'.*fused"):
    tiny_model("milenas", "sideways")


# Run in a fresh process: the CPU allocator keeps statistics only when it is BFC-based,
# which depends on the environment TensorFlow was imported with.
MEASURE = """
import json, sys
import numpy as np, tensorflow as tf
from milenas_tf.search import model as search_model

def peak_bytes(function):
  function()  # traced and run once first
  tf.config.experimental.reset_memory_stats("CPU:0")
  start = tf.config.experimental.get_memory_info("CPU:0")["current"]
  function()
  return tf.config.experimental.get_memory_info("CPU:0")["peak"] - start

def tiny_model(method, **kwargs):
  tf.keras.utils.set_random_seed(0)
  model = search_model.build_search_model(
      num_classes=3, input_shape=(16, 16, 1), init_channels=8, num_cells=3,
      method=method, epochs=4, steps_per_epoch=10, **kwargs)
  model.build((None, 16, 16, 1))
  return model

rng = np.random.default_rng(7)
make = lambda: (tf.constant(rng.normal(size=(32, 16, 16, 1)), tf.float32),
                tf.constant(rng.integers(0, 3, 32), tf.int32))
train, val = make(), make()
# The graph optimiser is not under test; without it the first call is faster.
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
"""

PEAK_MEMORY = MEASURE + """
method, order = sys.argv[1:]
model = tiny_model(method, order=order, hessian="finite_difference_combined")
print(json.dumps({
    "one_pass": peak_bytes(tf.function(lambda: model.gradient_pass("all", *train)[2])),
    "step": peak_bytes(tf.function(lambda: model.train_step((train, val))))}))
"""

HVP_PEAK_MEMORY = MEASURE + """
peaks = {}
for hessian in ["exact", "exact_recompute"]:
  model = tiny_model("darts_2nd", hessian=hessian)
  v = [tf.constant(rng.normal(size=w.shape), tf.float32)
       for w in model.network.weight_variables]
  peaks[hessian] = peak_bytes(lambda: model.hessian_vector_product(*train, v))
print(json.dumps(peaks))
"""


def measure(script, tmp_path, *args):
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CPU_ALLOCATOR_USE_BFC": "true"}
  proc = subprocess.run([sys.executable, "-c", script, *args], env=env,
                        cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method,order", [
    ("milenas", "fused"), ("milenas_2nd", "reference")])
def test_passes_of_a_step_do_not_overlap(method, order, tmp_path):
  """The step's peak tensor memory is that of its largest pass (all-variable pass).

  Overlapping passes (one's forward during another's backward) would hold both
  passes' activations: 1.2-1.8x at these sizes (oneDNN on and off).
  """
  peak = measure(PEAK_MEMORY, tmp_path, method, order)
  assert peak["one_pass"] > 1e6
  assert peak["step"] < 1.15 * peak["one_pass"], peak


def test_recomputed_exact_product_holds_one_segment_at_a_time(tmp_path):
  """The segmented product's peak is below the unsegmented one's (0.62x measured).

  Were its three passes to overlap, it would hold both segments' activations and
  backward passes at once, as the unsegmented product does (1.06x measured).
  """
  peaks = measure(HVP_PEAK_MEMORY, tmp_path)
  assert peaks["exact"] > 1e6
  assert peaks["exact_recompute"] < 0.8 * peaks["exact"], peaks
