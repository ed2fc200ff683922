"""The divergence guard: the first NaN or infinite loss or weight stops search and
training with one line saying where and what to lower, before anything non-finite is
saved; the export refuses non-finite weights."""

import glob
import os
import re
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from milenas_tf.core import divergence
from milenas_tf.core import files
from milenas_tf.core import run_directory
from milenas_tf.core.callbacks import EpochCheckpoint
from milenas_tf.core.errors import DivergenceError
from milenas_tf.core.errors import UserInputError
from milenas_tf.data import datasets
from milenas_tf.search import config as search_config
from milenas_tf.search import run as search_run
from milenas_tf.serving import export
from milenas_tf.train import callbacks as train_callbacks
from milenas_tf.train import config as train_config
from milenas_tf.train import model as train_model
from milenas_tf.train import run as train_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHERE = re.compile(r"at (?:epoch (\d+), step \d+|the end of epoch (\d+))")


def tiny_training(**overrides):
  config = train_config.default_config()
  config.update({**dict(dataset="fashion_mnist", setting="fashion_mnist", limit=64,
                        batch_size=32, epochs=2, init_channels=6, num_cells=3,
                        learning_rate=1e6, cutout_length=8, drop_path_rate=0.2),
                 **overrides})
  return config


def tiny_search(**overrides):
  config = search_config.default_config()
  config.update({**dict(dataset="fashion_mnist", limit=128, batch_size=32, epochs=2,
                        init_channels=4, num_cells=3, learning_rate=1e6), **overrides})
  return config


def non_finite_datasets(path):
  """The float datasets of an HDF5 file that hold a NaN or an infinity."""
  bad = []

  def visit(name, item):
    if (isinstance(item, h5py.Dataset) and item.dtype.kind == "f"
        and not np.isfinite(item[()]).all()):
      bad.append(name)

  with h5py.File(path, "r") as f:
    f.visititems(visit)
  return bad


def diverged_epoch(message):
  """The (1-based) epoch a divergence message names."""
  match = WHERE.search(message)
  assert match, message
  return int(match.group(1) or match.group(2))


def assert_nothing_non_finite_saved(out, epoch, weights_files):
  """Every weights file the run left is finite, and none is of the diverged epoch."""
  for path in weights_files:
    if os.path.exists(path):
      assert non_finite_datasets(path) == [], path
  done = EpochCheckpoint.finished_epochs(os.path.join(out, run_directory.CHECKPOINT_DIR))
  assert done < epoch  # the diverged epoch was not checkpointed


# The guard alone, on a model small enough to reason about.

class _Recorder(keras.callbacks.Callback):
  """Stands for the checkpoint: records the epochs whose end it saw."""

  def __init__(self):
    super().__init__()
    self.ends = []

  def on_epoch_end(self, epoch, logs=None):
    self.ends.append(epoch)


def _dense_model():
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
  model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", jit_compile=False)
  return model


def test_a_nan_loss_stops_fit_before_the_callbacks_that_save():
  x = np.ones((8, 3), np.float32)
  x[5] = np.nan  # the third batch of two
  recorder = _Recorder()
  with pytest.raises(DivergenceError) as stopped:
    _dense_model().fit(x, np.ones((8, 1), np.float32), batch_size=2, epochs=2, verbose=0,
                       shuffle=False,
                       callbacks=[divergence.DivergenceGuard("training", "lower it"),
                                  recorder])
  assert str(stopped.value) == (
      "The training diverged: the training loss is nan at epoch 1, step 3, so nothing of "
      "that epoch was saved; lower it.")
  assert recorder.ends == []


def test_non_finite_weights_stop_at_the_end_of_the_epoch():
  model = _dense_model()
  guard = divergence.DivergenceGuard("search", "lower it")
  guard.set_model(model)
  guard.on_epoch_end(0, {"loss": 1.0})  # finite: nothing happens
  kernel = model.layers[0].kernel
  kernel.assign(np.array([[1.0], [np.inf], [0.0]], np.float32))
  with pytest.raises(DivergenceError, match=re.escape(
      f"The search diverged: weight {kernel.path} holds NaN or inf at the end of epoch 4")):
    guard.on_epoch_end(3, {"loss": 1.0})


def test_check_every_skips_steps_and_the_epoch_end_catches_the_loss():
  guard = divergence.DivergenceGuard(check_every=3)
  guard.set_model(_dense_model())
  guard.on_epoch_begin(0)
  guard.on_train_batch_end(0, {"loss": float("nan")})  # step 1: not checked
  with pytest.raises(DivergenceError, match="loss is inf at epoch 1, step 3"):
    guard.on_train_batch_end(2, {"loss": float("inf")})
  with pytest.raises(DivergenceError, match="loss is nan at the end of epoch 1"):
    guard.on_epoch_end(0, {"loss": float("nan")})


def test_advice_names_the_configuration_learning_rates():
  assert divergence.advice_for(tiny_training()) == (
      "rerun in another --output_dir with a lower --config.learning_rate (now 1000000.0)")
  assert divergence.advice_for(tiny_search()) == (
      "rerun in another --output_dir with a lower --config.learning_rate (now 1000000.0) "
      "or a lower --config.arch_learning_rate (now 0.0003)")


def test_first_non_finite_skips_integer_variables():
  assert divergence.first_non_finite([tf.Variable([1, 2]), tf.Variable([0.5])]) is None
  assert divergence.first_non_finite([tf.Variable([np.nan], name="w")]) == "w:0"


# Real runs with a learning rate that cannot work.

def test_a_diverging_training_stops_in_one_line_and_saves_nothing_non_finite(tmp_path):
  out = str(tmp_path / "run")
  with pytest.raises(DivergenceError) as stopped:
    train_run.run_training(tiny_training(), out, verbose=0)
  message = str(stopped.value)
  assert "\n" not in message
  assert message.startswith("The training diverged: ")
  assert message.endswith("rerun in another --output_dir with a lower "
                          "--config.learning_rate (now 1000000.0).")
  best = os.path.join(out, train_callbacks.BEST_DIR, train_callbacks.BestWeights.WEIGHTS)
  checkpoints = glob.glob(os.path.join(out, run_directory.CHECKPOINT_DIR, "*", "*.h5"))
  assert_nothing_non_finite_saved(out, diverged_epoch(message), [best, *checkpoints])
  assert not os.path.exists(os.path.join(out, run_directory.LOCK_FILE))  # released


def test_a_diverging_search_stops_in_one_line_and_saves_nothing_non_finite(tmp_path):
  out = str(tmp_path / "run")
  with pytest.raises(DivergenceError) as stopped:
    search_run.run_search(tiny_search(), out, verbose=0)
  message = str(stopped.value)
  assert "\n" not in message
  assert message.startswith("The search diverged: ")
  assert "--config.arch_learning_rate (now 0.0003)" in message
  checkpoints = glob.glob(os.path.join(out, run_directory.CHECKPOINT_DIR, "*", "*.h5"))
  epoch = diverged_epoch(message)
  assert_nothing_non_finite_saved(out, epoch, checkpoints)
  assert not os.path.exists(os.path.join(out, "alphas.npz"))  # the run did not finish
  saved = files.read_json(os.path.join(out, "genotype.json"))
  assert saved is None or saved["epoch"] < epoch


def test_train_script_ends_a_diverging_run_with_one_error_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "bin", "train.py"),
       f"--output_dir={tmp_path / 'run'}", "--config.learning_rate=1e6",
       "--config.limit=320", "--config.epochs=2", "--config.batch_size=32",
       "--config.init_channels=6", "--config.num_cells=3"],
      capture_output=True, text=True, timeout=600, cwd=ROOT,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith("error: The training diverged: ")
  assert "--config.learning_rate (now 1000000.0)" in lines[0]
  assert "Traceback" not in proc.stderr


# The export.

def test_export_refuses_non_finite_weights_naming_the_file(tmp_path):
  config = train_config.default_config()
  config.update(genotype="DARTS_V2", init_channels=4, num_cells=3, dataset="fashion_mnist",
                setting="fashion_mnist")
  model = train_model.build_train_model(config, datasets.dataset_info("fashion_mnist"), 1)
  weights = model.network.trainable_weights[-1]
  weights.assign(np.full(weights.shape, np.nan, np.float32))
  path = str(tmp_path / "nan.weights.h5")
  files.save_weights_atomic(model, path)
  base = tmp_path / "serving"
  with pytest.raises(UserInputError) as refused:
    export.export_weights(config, path, str(base), "nan")
  message = str(refused.value)
  assert "\n" not in message
  assert message.startswith(f"{path} holds non-finite weights (NaN or inf in "
                            f"{weights.path}); the training that wrote them diverged;")
  assert "--config.learning_rate" in message
  assert not base.exists()  # nothing written
  with pytest.raises(UserInputError, match="the network to export holds non-finite"):
    export.export_network(model.network, datasets.dataset_info("fashion_mnist"), str(base),
                          "nan")
  assert not base.exists()


def test_export_run_refuses_a_runs_non_finite_best_weights(tmp_path):
  config = train_config.default_config()
  config.update(genotype="DARTS_V2", init_channels=4, num_cells=3, dataset="fashion_mnist",
                setting="fashion_mnist")
  model = train_model.build_train_model(config, datasets.dataset_info("fashion_mnist"), 1)
  bn = [w for w in model.network.non_trainable_weights if "moving_variance" in w.path][0]
  bn.assign(np.full(bn.shape, np.inf, np.float32))
  run = tmp_path / "run"
  files.write_json_atomic(run / run_directory.CONFIG_FILE, config.to_dict())
  path = run / train_callbacks.BEST_DIR / train_callbacks.BestWeights.WEIGHTS
  files.save_weights_atomic(model, path)
  with pytest.raises(UserInputError, match=re.escape(
      f"{path} holds non-finite weights (NaN or inf in {bn.path})")):
    export.export_run(str(run), str(tmp_path / "serving"))
  assert not (tmp_path / "serving").exists()
