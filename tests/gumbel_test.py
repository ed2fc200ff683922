"""Gumbel-softmax search (gdas, milenas_gdas): the sample, its gradient, the temperature,
the sampled ops alone running, the step, the configuration, the network's config and an
exact resume."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from milenas_tf.core.errors import UserInputError
from milenas_tf.search import config as search_config
from milenas_tf.search import gumbel
from milenas_tf.search import model as search_model
from milenas_tf.search import run as search_run
from milenas_tf.search import update_rules
from milenas_tf.search.model import cross_entropy
from milenas_tf.search.network import SearchNetwork
from milenas_tf.space import genotypes
from milenas_tf.space import layers

SHAPE = (8, 8, 1)
BATCH = 4


def tiny_network(**kwargs):
  tf.keras.utils.set_random_seed(0)
  network = SearchNetwork(3, init_channels=4, num_cells=3, mixed_op="gumbel", **kwargs)
  network.build((None,) + SHAPE)
  # Alphas far from uniform, so that the softmax's Jacobian is not degenerate.
  for v in network.arch_variables:
    v.assign(np.random.default_rng(1).normal(size=v.shape).astype(np.float32))
  return network


def batch(seed=7):
  rng = np.random.default_rng(seed)
  return (tf.constant(rng.normal(size=(BATCH,) + SHAPE), tf.float32),
          tf.constant(rng.integers(0, 3, BATCH), tf.int32))


def test_sample_is_one_hot_with_the_tempered_softmax_gradient():
  alpha = tf.constant(np.random.default_rng(0).normal(size=(14, 8)), tf.float32)
  seed = keras.random.SeedGenerator(3)
  with tf.GradientTape() as tape:
    tape.watch(alpha)
    hard, index = gumbel.gumbel_softmax(alpha, 2.0, seed)
    loss = tf.reduce_sum(hard * tf.range(8, dtype=tf.float32))
  values = hard.numpy()
  # Exactly one 1 per row, every other entry exactly 0, at the sampled index.
  assert set(np.unique(values)) <= {0.0, 1.0}
  np.testing.assert_array_equal(values.sum(axis=1), np.ones(14))
  np.testing.assert_array_equal(values.argmax(axis=1), index.numpy())
  # Straight through: the gradient is that of y = softmax((log_softmax(alpha) + g) / tau),
  # whose rows sum to a zero gradient and are non-zero.
  grad = tape.gradient(loss, alpha).numpy()
  assert np.all(np.isfinite(grad))
  assert np.all(np.abs(grad).sum(axis=1) > 0)
  np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-5)


def test_noise_is_fresh_each_call_and_reproducible_from_the_seed():
  alpha = tf.zeros((14, 8))
  first = keras.random.SeedGenerator(5)
  draws = [gumbel.gumbel_softmax(alpha, 1.0, first)[1].numpy() for _ in range(2)]
  assert not np.array_equal(draws[0], draws[1])
  again = keras.random.SeedGenerator(5)
  np.testing.assert_array_equal(gumbel.gumbel_softmax(alpha, 1.0, again)[1].numpy(), draws[0])


def test_gradients_reach_every_alpha_row():
  network = tiny_network()
  x, y = batch()
  with tf.GradientTape() as tape:
    loss = cross_entropy(y, network(x, training=True))
  grads = tape.gradient(loss, network.arch_variables)
  for grad in grads:
    grad = grad.numpy()
    assert grad.shape == (genotypes.NUM_EDGES, len(genotypes.PRIMITIVES))
    assert np.all(np.isfinite(grad))
    # Every edge row, whichever op it sampled (`none` included), gets a gradient.
    assert np.all(np.abs(grad).sum(axis=1) > 0), np.abs(grad).sum(axis=1)


def test_temperature_falls_linearly_over_the_epochs():
  schedule = gumbel.TemperatureSchedule(10.0, 0.1, epochs=5, steps_per_epoch=10)
  # tau(epoch) = 10 - 9.9 * epoch / 4, by hand: epochs 0, 2 (middle), 4 (last).
  for step, want in [(0, 10.0), (9, 10.0), (20, 5.05), (29, 5.05), (40, 0.1), (49, 0.1),
                     (500, 0.1)]:
    np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-6, err_msg=str(step))


def test_search_step_sets_the_temperature_from_the_step_counter():
  model = search_model.build_search_model(
      num_classes=3, input_shape=SHAPE, init_channels=4, num_cells=3, method="gdas",
      epochs=5, steps_per_epoch=10, gumbel_tau_max=8.0, gumbel_tau_min=0.5)
  assert float(model.network.temperature) == 8.0
  # A variable read in the traced step, not a constant of the trace.
  update = tf.function(model.update_temperature)
  for step, want in [(0, 8.0), (25, 8.0 - 7.5 * 2 / 4), (45, 0.5)]:
    model.optimizer.iterations.assign(step)
    update()
    np.testing.assert_allclose(float(model.network.temperature), want, rtol=1e-6)


def test_only_the_sampled_operations_run():
  """In the traced cell, the primitives not sampled neither run nor get gradients.

  Batch norm moves its running statistics only when it runs; the weights of the
  primitives not sampled get zero gradients; the sampled ones' get non-zero ones.
  """
  tf.keras.utils.set_random_seed(0)
  cell = gumbel.GumbelCell(4, reduction=True, reduction_prev=False)
  cell.build([(None, 8, 8, 6), (None, 8, 8, 6)])
  rng = np.random.default_rng(0)
  inputs = [tf.constant(rng.normal(size=(BATCH, 8, 8, 6)), tf.float32) for _ in range(2)]
  # Every primitive on some edge, both on strided edges and on the others.
  indices = tf.constant([(3 * e + 1) % 8 for e in range(genotypes.NUM_EDGES)], tf.int32)
  hard = tf.one_hot(indices, len(genotypes.PRIMITIVES))
  edges = {e: edge for into in cell.edges for _, e, edge in into}
  before = {e: edge.flat_statistics.numpy() for e, edge in edges.items()}
  weights = [edge.flat_weights for edge in edges.values()]

  @tf.function
  def grads():
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(cell(inputs, hard, indices, training=True)))
    return tape.gradient(loss, weights)

  by_edge = dict(zip(edges, [g.numpy() for g in grads()]))
  sampled_with_weights = 0
  for e, edge in edges.items():
    chosen = int(indices[e])
    after = edge.flat_statistics.numpy()
    for column, (weight_layout, statistic_layout) in enumerate(edge.layout):
      name = genotypes.PRIMITIVES[column]
      norms = [np.linalg.norm(by_edge[e][o:o + int(np.prod(sh))]) for o, sh in weight_layout]
      moved = [not np.array_equal(after[o:o + sh[0]], before[e][o:o + sh[0]])
               for o, sh in statistic_layout]
      if column == chosen:
        assert all(n > 0 for n in norms), (e, name, norms)
        assert all(moved), (e, name)
        sampled_with_weights += bool(norms)
      else:
        assert not any(norms), (e, name, norms)
        assert not any(moved), (e, name)
  assert sampled_with_weights >= 5  # the check saw sampled ops that have weights


def test_milenas_gdas_step_changes_alpha_and_w():
  tf.keras.utils.set_random_seed(0)
  model = search_model.build_search_model(
      num_classes=3, input_shape=SHAPE, init_channels=4, num_cells=3,
      method="milenas_gdas", epochs=4, steps_per_epoch=10)
  network = model.network
  assert all(isinstance(cell, gumbel.GumbelCell) for cell in network.cells)
  alphas = [v.numpy() for v in network.arch_variables]
  weights = [v.numpy() for v in network.weight_variables]
  logs = model.train_step((batch(7), batch(8)))
  assert np.isfinite(float(logs["loss"]))
  for v, before in zip(network.arch_variables, alphas):
    assert not np.allclose(v.numpy(), before, rtol=0, atol=1e-6), v.path
  assert any(not np.allclose(v.numpy(), w) for v, w in zip(network.weight_variables, weights))
  assert int(model.optimizer.iterations) == 1
  assert float(network.temperature) == 10.0
  assert isinstance(network.genotype(), genotypes.Genotype)


class _FakePasses:
  def train_alpha_grads(self):
    return [tf.constant(2.0)]

  def val_alpha_grads(self):
    return [tf.constant(3.0)]


def test_gumbel_rules():
  assert update_rules.GUMBEL_METHODS == ("gdas", "milenas_gdas")
  assert set(update_rules.GUMBEL_METHODS) <= set(update_rules.METHODS)
  assert float(update_rules.get_rule("gdas")(_FakePasses())[0]) == 3.0
  got = update_rules.get_rule("milenas_gdas")(_FakePasses(), lambda_train=0.5, lambda_val=2.0)
  assert float(got[0]) == 2.0 * 3.0 + 0.5 * 2.0


def test_method_and_network_must_match():
  network = SearchNetwork(3, init_channels=4, num_cells=3)
  with pytest.raises(UserInputError, match="'gdas' needs SearchNetwork.mixed_op='gumbel'"):
    search_model.SearchModel(network, method="gdas")
  with pytest.raises(UserInputError, match="Unknown mixed op 'hard'"):
    SearchNetwork(3, init_channels=4, num_cells=3, mixed_op="hard")


# Runs in a fresh process: the CPU must be split before TensorFlow starts.
SEVERAL_REPLICAS = textwrap.dedent("""
    from milenas_tf.core import distribution
    distribution.split_cpu(2)
    import tensorflow as tf
    from milenas_tf.core.errors import UserInputError
    from milenas_tf.search import model as search_model
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
      try:
        search_model.build_search_model(3, (8, 8, 1), init_channels=4, num_cells=3,
                                        method="milenas_gdas")
      except UserInputError as e:
        print("refused:", e)
""")


def test_gumbel_methods_refuse_several_replicas():
  proc = subprocess.run([sys.executable, "-c", SEVERAL_REPLICAS], capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert ("refused: Method 'milenas_gdas' runs on one device, not on 2 replicas; set "
          "config.distribution=default.") in proc.stdout


def test_gumbel_network_round_trips_its_config():
  network = SearchNetwork(3, init_channels=4, num_cells=3, mixed_op="gumbel",
                          gumbel_temperature=5.0, gumbel_seed=11)
  config = network.get_config()
  assert (config["mixed_op"], config["gumbel_temperature"], config["gumbel_seed"]) == (
      "gumbel", 5.0, 11)
  restored = SearchNetwork.from_config(config)
  assert restored.get_config() == config
  restored.build((None,) + SHAPE)
  assert float(restored.temperature) == 5.0
  assert all(isinstance(cell, gumbel.GumbelCell) for cell in restored.cells)


@pytest.mark.parametrize("changes,message", [
    (dict(gumbel_tau_min=2.0, gumbel_tau_max=1.0),
     r"config.gumbel_tau_min \(2.0\) is above config.gumbel_tau_max \(1.0\); set min <= max"),
    (dict(gumbel_tau_max=0.0), "config.gumbel_tau_max must be"),
    (dict(gumbel_tau_min=-1.0), "config.gumbel_tau_min must be"),
])
def test_config_validation(changes, message):
  config = search_config.default_config()
  config.update(changes)
  with pytest.raises(UserInputError, match=message) as error:
    search_config.validate(config)
  assert "\n" not in str(error.value)


def test_default_config_is_valid_for_gumbel_methods():
  config = search_config.default_config()
  assert (config.gumbel_tau_max, config.gumbel_tau_min) == (10.0, 0.1)
  for method in update_rules.GUMBEL_METHODS:
    config.method = method
    search_config.validate(config)


def _keras_primitive(name, channels, strides):
  """The primitive as the layers of `space.layers` (a pool followed by an affine-free
  batch norm), and its weights and running statistics in `primitive_shapes`' order."""
  if name in ("max_pool_3x3", "avg_pool_3x3"):
    pool, bn = layers.Pooling(name[:3], strides), layers.BatchNorm(affine=False)
    bn.build((None, None, None, channels))
    return (lambda x, training: bn(pool(x), training=training)), [], [
        bn.moving_mean, bn.moving_variance]
  op = layers.make_operation(name, channels, strides, affine=False)
  op.build((None, 8, 8, channels))
  if name in ("none",) or (name == "skip_connect" and strides == 1):
    return (lambda x, training: op(x)), [], []
  parts = [op.first, op.second] if isinstance(op, layers.SepConv) else [op]
  weights, statistics = [], []
  for part in parts:
    if isinstance(part, layers.FactorizedReduce):
      weights += [part.kernel_a, part.kernel_b]
    else:
      weights += [part.depthwise, part.pointwise]
    statistics += [part.bn.moving_mean, part.bn.moving_variance]
  return (lambda x, training: op(x, training=training)), weights, statistics


@pytest.mark.parametrize("strides", [1, 2])
def test_sampled_path_computes_the_primitives_of_space_layers(strides):
  """Each branch equals the Keras layers of its primitive with the same weights: output,
  input and weight gradients, and the running statistics it moves."""
  c = 4
  x = tf.constant(np.random.default_rng(2).normal(size=(BATCH, 8, 8, c)), tf.float32)
  dy = tf.constant(np.random.default_rng(3).normal(
      size=(BATCH, 8 // strides, 8 // strides, c)), tf.float32)
  tf.keras.utils.set_random_seed(0)
  edge = gumbel.GumbelEdge(strides)
  edge.build((None, 8, 8, c))
  flat = edge.flat_weights.numpy()
  for column, name in enumerate(genotypes.PRIMITIVES):
    weight_layout, statistic_layout = edge.layout[column]
    call, weights, statistics = _keras_primitive(name, c, strides)
    assert [tuple(v.shape) for v in weights] == [sh for _, sh in weight_layout], name
    assert len(statistics) == len(statistic_layout), name
    for v, (o, sh) in zip(weights, weight_layout):
      v.assign(flat[o:o + int(np.prod(sh))].reshape(sh))
    with tf.GradientTape() as tape:
      tape.watch(x)
      want = call(x, True)
    want_grads = tape.gradient(want, [x] + weights, output_gradients=dy,
                               unconnected_gradients=tf.UnconnectedGradients.ZERO)
    edge.flat_statistics.assign(np.concatenate(
        [np.zeros(c) if i % 2 == 0 else np.ones(c) for i in range(
            edge.flat_statistics.shape[0] // c)]).astype(np.float32))
    with tf.GradientTape() as tape:
      tape.watch(x)
      got = edge(x, tf.constant(1.0), tf.constant(0.0), tf.constant(column), training=True)
    got_x, got_flat = tape.gradient(got, [x, edge.flat_weights], output_gradients=dy)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(got_x.numpy(), want_grads[0].numpy(), rtol=1e-4, atol=1e-5,
                               err_msg=name)
    for g, (o, sh) in zip(want_grads[1:], weight_layout):
      np.testing.assert_allclose(got_flat.numpy()[o:o + int(np.prod(sh))].reshape(sh),
                                 g.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    moved = edge.flat_statistics.numpy()
    for v, (o, sh) in zip(statistics, statistic_layout):
      np.testing.assert_allclose(moved[o:o + sh[0]], v.numpy(), rtol=1e-5, atol=1e-6,
                                 err_msg=name)


class _StopAfterFirstEpoch(keras.callbacks.Callback):
  """Stops the run as Ctrl-C would, after the first epoch's checkpoint."""

  def on_epoch_end(self, epoch, logs=None):
    self.temperature = float(self.model.network.temperature)
    raise KeyboardInterrupt


def test_interrupted_gumbel_search_resumes_exactly(tmp_path):
  # The noise generator's state, the temperature's step counter and both optimisers come
  # back from the checkpoint: the resumed run draws the samples the whole run draws.
  config = search_config.default_config()
  config.update(dataset="fashion_mnist", limit=256, batch_size=32, epochs=2,
                init_channels=4, num_cells=3, method="milenas_gdas")
  stop = _StopAfterFirstEpoch()
  with pytest.raises(KeyboardInterrupt):
    search_run.run_search(config, str(tmp_path / "resumed"), verbose=0,
                          extra_callbacks=[stop])
  assert stop.temperature == 10.0  # the first epoch's
  resumed = search_run.run_search(config, str(tmp_path / "resumed"), verbose=0)
  whole = search_run.run_search(config, str(tmp_path / "whole"), verbose=0)
  assert resumed.resumed_after == 1 and whole.resumed_after == 0
  with np.load(os.path.join(tmp_path, "resumed", "alphas.npz")) as a, \
       np.load(os.path.join(tmp_path, "whole", "alphas.npz")) as b:
    for name in ("alphas_normal", "alphas_reduce"):
      np.testing.assert_array_equal(a[name], b[name])
  assert resumed.genotype == whole.genotype
