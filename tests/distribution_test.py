"""Strategies: two replicas compute one device's step; checkpoints cross strategies."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from milenas_tf.core import distribution
from milenas_tf.core import optimization
from milenas_tf.core.errors import UserInputError
from milenas_tf.train import config as train_config
from milenas_tf.train import model as train_model

# Runs in a fresh process: the CPU must be split before TensorFlow starts.
CHILD = textwrap.dedent("""
    import json, sys
    from milenas_tf.core import distribution
    distribution.split_cpu(2)
    import keras, numpy as np, tensorflow as tf
    from milenas_tf.space import kernels
    from milenas_tf.train import config as train_config
    from milenas_tf.train import model as train_model
    from milenas_tf.train import networks
    from milenas_tf.train import run as train_run

    def make(strategy, sync_batch_norm=True):
      with strategy.scope():
        net = networks.NetworkCIFAR("DARTS_V2", init_channels=4, num_cells=3,
                                    input_shape=(24, 24, 3),
                                    sync_batch_norm=sync_batch_norm)
        model = train_model.TrainModel(net, weight_decay=3e-4, grad_clip=0.5)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      jit_compile=False)
      return model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 24, 24, 3)).astype("float32")
    y = rng.integers(0, 10, 8)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    two_devices = distribution.get_strategy("/cpu:0,/cpu:1")
    try:
      distribution.strategy_for_batch("/cpu:0,/cpu:1", 9)
      uneven = ""
    except Exception as error:  # pylint: disable=broad-except
      uneven = str(error)
    # Global-batch statistics of channels with a large mean and a small spread.
    bn_x = (100.0 + 0.01 * rng.normal(size=(8, 4, 4, 2))).astype("float32")

    def two_replica_batch_norm(dtype):
      with two_devices.scope():
        stats = [keras.Variable(np.full(2, v), trainable=False, dtype=dtype)
                 for v in (0.0, 1.0)]
      x = bn_x.astype(dtype)
      halves = two_devices.experimental_distribute_values_from_function(
          lambda context: x[4 * context.replica_id_in_sync_group:][:4])
      normalized = two_devices.run(
          tf.function(lambda v: kernels.batch_norm(v, *stats, training=True)),
          args=(halves,))
      return np.concatenate(
          [t.numpy() for t in two_devices.experimental_local_results(normalized)])

    normalized = two_replica_batch_norm("float32")
    # The same in float64: computed in float64 throughout.
    normalized64 = two_replica_batch_norm("float64")
    x64 = bn_x.astype("float64")
    expected = (x64 - x64.mean((0, 1, 2))) / np.sqrt(x64.var((0, 1, 2)) + 1e-5)
    config = train_config.default_config()  # a whole run, under two replicas
    config.update(dataset="fashion_mnist", setting="fashion_mnist", limit=256,
                  batch_size=32, epochs=1, init_channels=4, num_cells=3,
                  distribution="/cpu:0,/cpu:1")
    run = train_run.run_training(config, sys.argv[2], verbose=0)
    one = make(distribution.get_strategy("default"))
    start = one.get_weights()
    one.fit(data, epochs=2, verbose=0)  # two steps: momentum is used
    result = {"replicas": two_devices.num_replicas_in_sync, "uneven": uneven,
              "bn_error": float(np.abs(normalized - expected).max()),
              "bn_error_float64": float(np.abs(normalized64 - expected).max()),
              "bn_dtype": normalized64.dtype.name,
              "run_top1": run.test["top1"], "run_steps": len(run.history["loss"])}
    for sync in (True, False):
      two = make(two_devices, sync_batch_norm=sync)
      two.set_weights(start)
      two.fit(data, epochs=2, verbose=0)
      result[f"diff_sync_{sync}"] = max(
          float(np.abs(a - b).max()) for a, b in zip(one.get_weights(), two.get_weights()))
      # Each replica's copy of the batch norms' moving averages.
      copies = [[c.numpy() for c in v.value.values] for v in two.variables
                if v.path.endswith(("moving_mean", "moving_variance"))]
      result[f"moving_stats_{sync}"] = len(copies)
      result[f"copies_apart_sync_{sync}"] = max(float(np.abs(a - b).max()) for a, b in copies)
    result["moved"] = max(float(np.abs(a - b).max())
                          for a, b in zip(one.get_weights(), start))
    path = sys.argv[1]
    two.save_weights(path)  # written under two replicas, read on one device
    restored = make(distribution.get_strategy("default"))
    restored.load_weights(path)
    result["restore_diff"] = max(float(np.abs(a - b).max())
                                 for a, b in zip(two.get_weights(), restored.get_weights()))
    print(json.dumps(result))
""")


# Seeded search runs on one device and on two replicas, in a fresh process.
SEARCH_CHILD = textwrap.dedent("""
    import json, os, sys
    from milenas_tf.core import distribution
    distribution.split_cpu(2)
    import keras, numpy as np
    from milenas_tf.search import config as search_config
    from milenas_tf.search import run as search_run

    class Record(keras.callbacks.Callback):
      def on_train_begin(self, logs=None):
        self.start = [v.numpy() for v in self.model.network.arch_variables]
        self.start_weights = [v.numpy() for v in self.model.network.weight_variables]

      def on_train_end(self, logs=None):
        network = self.model.network
        self.alphas = [v.numpy() for v in network.arch_variables]
        self.weights = [v.numpy() for v in network.weight_variables]

    def config(spec):
      config = search_config.default_config()
      # Two steps in the fused order: it runs both pass kinds (alpha; alpha and w).
      # Clipped: on this tiny network a ReLU or max-pool tie that float32 rounding
      # flips in one run and not the other changes a few gradients by O(1), and an
      # unclipped step turns that into half of w's move.
      config.update(dataset="fashion_mnist", limit=32, batch_size=8, epochs=1,
                    init_channels=2, num_cells=3, order="fused", distribution=spec,
                    grad_clip=5.0)
      return config

    runs, records = {}, {}
    for name, spec in (("one", "default"), ("two", "/cpu:0,/cpu:1")):
      records[name] = Record()
      runs[name] = search_run.run_search(config(spec), os.path.join(sys.argv[1], name),
                                         verbose=0, extra_callbacks=[records[name]])
    one, two = records["one"], records["two"]
    diff = lambda a, b: max(float(np.abs(x - y).max()) for x, y in zip(a, b))
    run = runs["two"]
    result = {
        "same_start": diff(one.start, two.start),
        "weights_diff": diff(one.weights, two.weights),
        "alphas_diff": diff(one.alphas, two.alphas),
        "alphas_apart": [np.abs(a - b).ravel().tolist() for a, b in zip(one.alphas, two.alphas)],
        "moved": min(float(np.abs(a - s).max()) for a, s in zip(one.alphas, one.start)),
        "weights_moved": diff(one.weights, one.start_weights),
        "run": {"epochs_done": run.epochs_done, "val_loss": run.history["val_loss"],
                "genotype": os.path.exists(os.path.join(run.output_dir,
                                                        "genotype.json"))},
    }
    print(json.dumps(result))
""")


# One second-order step on one device and on two replicas, float64, in a fresh
# process; eager (traced inline under two replicas, the step's graph takes minutes).
SECOND_ORDER_CHILD = textwrap.dedent("""
    import json, sys
    from milenas_tf.core import distribution
    distribution.split_cpu(2)
    import keras, numpy as np, tensorflow as tf
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    tf.config.run_functions_eagerly(True)
    from milenas_tf.search import model as search_model

    rng = np.random.default_rng(0)
    batch = lambda: (rng.normal(size=(4, 8, 8, 1)), rng.integers(0, 10, 4).astype("int32"))
    data = (batch(), batch())
    one_device = distribution.get_strategy("default")
    two_replicas = distribution.get_strategy("/cpu:0,/cpu:1")
    halves = two_replicas.experimental_distribute_values_from_function(
        lambda context: tf.nest.map_structure(
            lambda t: t[2 * context.replica_id_in_sync_group:][:2], data))
    result = {}
    for method in sys.argv[1:]:
      models = []
      for strategy in (one_device, two_replicas):
        with strategy.scope():
          models.append(search_model.build_search_model(
              10, (8, 8, 1), init_channels=2, num_cells=3, method=method, epochs=1,
              steps_per_epoch=2))
      one, two = models
      two.set_weights(one.get_weights())
      start = {id(v): v.numpy() for v in one.network.variables}
      one.train_step(data)
      two_replicas.run(two.train_step, args=(halves,))
      def apart(get):
        return max(float(np.abs(a.numpy() - b.numpy()).max())
                   for a, b in zip(get(one.network), get(two.network)))
      alphas = lambda n: n.arch_variables
      weights = lambda n: n.weight_variables
      result[method] = {
          "alpha_apart": apart(alphas), "weights_apart": apart(weights),
          "alpha_moved": min(float(np.abs(v.numpy() - start[id(v)]).max())
                             for v in one.network.arch_variables),
          "weights_moved": max(float(np.abs(v.numpy() - start[id(v)]).max())
                               for v in one.network.weight_variables)}
    print(json.dumps(result))
""")


@pytest.fixture(scope="module")
def two_replica_run(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("ckpt") / "two.weights.h5")
  out = str(tmp_path_factory.mktemp("run") / "train")
  proc = subprocess.run([sys.executable, "-c", CHILD, path, out], capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_two_replicas_equal_one_device_on_the_same_global_batch(two_replica_run):
  assert two_replica_run["replicas"] == 2
  assert two_replica_run["moved"] > 1e-2  # the steps changed the weights
  assert two_replica_run["diff_sync_True"] < 1e-5
  # Per-replica batch statistics (sync off) compute another function: the test
  # above would see it.
  assert two_replica_run["diff_sync_False"] > 1e-3


def test_replicas_keep_one_copy_of_the_moving_statistics(two_replica_run):
  # Global-batch statistics are the same on every replica; per-replica ones are not,
  # and the moving averages follow the first replica's rather than drifting apart.
  for sync in (True, False):
    assert two_replica_run[f"moving_stats_{sync}"] > 10
    assert two_replica_run[f"copies_apart_sync_{sync}"] == 0.0


def test_global_batch_statistics_keep_float32_precision(two_replica_run):
  # Mean 100, spread 0.01: E[x^2] - mean^2 in float32 would be off by more than the
  # variance itself (an error of 6.6 here); the outputs are O(1).
  assert two_replica_run["bn_error"] < 1e-2
  # float64 in, float64 throughout: a float32 part would leave errors near 1e-5.
  assert two_replica_run["bn_dtype"] == "float64"
  assert two_replica_run["bn_error_float64"] < 1e-9


def test_checkpoint_from_two_replicas_restores_on_one_device(two_replica_run):
  assert two_replica_run["restore_diff"] == 0.0


def test_a_batch_the_replicas_cannot_share_is_refused(two_replica_run):
  assert "batch_size=9 must divide evenly among the 2 replicas" in two_replica_run["uneven"]


def test_training_run_under_two_replicas(two_replica_run):
  assert two_replica_run["run_steps"] == 1
  assert 0.0 <= two_replica_run["run_top1"] <= 1.0


@pytest.fixture(scope="module")
def two_replica_search(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("search"))
  # TensorFlow's own kernels in both runs, whatever an earlier test left in the
  # environment (importing core.cli turns oneDNN on): oneDNN's differ more between
  # the one-device and two-replica graphs, enough to flip the sign of near-zero alpha
  # gradients, whose Adam steps (eps 1e-8, PyTorch's) then differ by whole steps.
  env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}
  proc = subprocess.run([sys.executable, "-c", SEARCH_CHILD, out], capture_output=True,
                        text=True, timeout=900, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_search_run_on_two_replicas_equals_the_one_device_run(two_replica_search):
  # Same seed: same initial weights and the same batches (Keras iterates the data
  # once more under a strategy; the pipelines give an epoch's batches regardless).
  assert two_replica_search["same_start"] == 0.0
  assert two_replica_search["moved"] > 1e-4  # two Adam steps of 3e-4 moved each alpha
  # Adam's first steps are lr * g / (|g| + eps), with PyTorch's eps = 1e-8 added after
  # the bias correction: for the few alpha gradients within some eps of zero, the
  # float32 difference between the two runs' gradients (batch norm by different
  # kernels) moves the step by a part of lr (a third of the move seen on one entry).
  # A replica bug (per-replica statistics, an unsummed gradient, other batches)
  # changes most gradients' signs and moves alpha by whole steps.
  apart = np.concatenate([np.asarray(a) for a in two_replica_search["alphas_apart"]])
  moved = two_replica_search["moved"]
  assert two_replica_search["alphas_diff"] < moved  # no entry a whole move away
  assert np.mean(apart > 0.1 * moved) < 0.05  # nearly every entry within a tenth
  assert np.median(apart) < 0.01 * moved
  # float32 rounding (batch norm by different kernels): 1.1e-3 of the move seen. When
  # the two runs saw other batches (before the pipelines fixed an epoch's data), w
  # differed by 0.6 of its move and alpha by twice its step.
  assert two_replica_search["weights_moved"] > 1e-3
  assert two_replica_search["weights_diff"] < 1e-2 * two_replica_search["weights_moved"]


def test_search_run_on_two_replicas(two_replica_search):
  run = two_replica_search["run"]
  assert run["epochs_done"] == 1 and run["genotype"]
  assert 0.0 < run["val_loss"][0] < 10.0


@pytest.fixture(scope="module")
def second_order_steps():
  env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}
  # milenas_2nd only: darts_2nd's passes are its val split's (the same code, fewer terms).
  proc = subprocess.run([sys.executable, "-c", SECOND_ORDER_CHILD, "milenas_2nd"],
                        capture_output=True, text=True, timeout=900, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_second_order_step_on_two_replicas_equals_one_device(second_order_steps):
  # The virtual step, the finite differences and the restore assign each replica's
  # copy of w with the same global values; one step on the global batch matches to
  # float64 rounding (measured 4e-15 of alpha's move, 2e-15 of w's).
  step = second_order_steps["milenas_2nd"]
  assert step["alpha_moved"] > 1e-4 and step["weights_moved"] > 1e-2
  assert step["alpha_apart"] < 1e-10 * step["alpha_moved"]
  assert step["weights_apart"] < 1e-10 * step["weights_moved"]


def test_strategy_names():
  assert distribution.get_strategy("default").num_replicas_in_sync == 1
  auto = distribution.get_strategy("auto")  # no GPUs here: one device
  assert auto.num_replicas_in_sync == max(1, len(tf.config.list_logical_devices("GPU")))
  with pytest.raises(UserInputError, match="Unknown device"):
    distribution.get_strategy("/gpu:7,/cpu:0")
  with pytest.raises(UserInputError, match="Unknown distribution 'tpu'"):
    distribution.get_strategy("tpu")
  with pytest.raises(UserInputError, match="before TensorFlow initialises"):
    tf.constant(1.0)
    distribution.split_cpu(2)


def test_linear_learning_rate_scaling():
  assert optimization.scaled_learning_rate(0.1, 1024, 128) == pytest.approx(0.8)
  config = train_config.default_config()
  config.update(batch_size=192, base_batch_size=96, learning_rate=0.025)
  assert float(train_model.learning_rate_schedule(config, 10)(0)) == pytest.approx(0.025)
  config.scale_learning_rate = True
  assert float(train_model.learning_rate_schedule(config, 10)(0)) == pytest.approx(0.05)
