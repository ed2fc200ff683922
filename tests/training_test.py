"""Training an evaluation network: the step against a hand update, the recipe pieces,
a short real run on Fashion-MNIST with interruption and resumption, evaluation."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from milenas_tf.core import graph_options
from milenas_tf.core import optimization
from milenas_tf.core import run_directory
from milenas_tf.core.callbacks import EpochCheckpoint
from milenas_tf.core.callbacks import read_epoch_log
from milenas_tf.core.errors import UserInputError
from milenas_tf.data import datasets
from milenas_tf.serving import export
from milenas_tf.space import layers
from milenas_tf.train import callbacks as train_callbacks
from milenas_tf.train import config as train_config
from milenas_tf.train import inputs as train_inputs
from milenas_tf.train import model as train_model
from milenas_tf.train import networks
from milenas_tf.train import restore
from milenas_tf.train import run as train_run

ONE_ROUND = rewriter_config_pb2.RewriterConfig.ONE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_label_smoothed_loss_equals_a_float64_computation():
  rng = np.random.default_rng(0)
  logits, labels = rng.normal(size=(6, 5)), rng.integers(0, 5, size=6)
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  for s in (0.0, 0.1):
    targets = (1 - s) * np.eye(5)[labels] + s / 5
    want = -(targets * log_probs).sum(axis=1).mean()
    got = train_model.classification_loss(tf.constant(labels), tf.constant(logits), s)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_train_step_is_clip_then_coupled_decay_then_sgd():
  network = networks.NetworkCIFAR("DARTS_V2", num_classes=10, init_channels=4,
                                  num_cells=3, auxiliary=True, input_shape=(24, 24, 3))
  model = train_model.TrainModel(network, auxiliary_weight=0.4, weight_decay=0.01,
                                 grad_clip=0.5)
  model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=False)
  rng = np.random.default_rng(1)
  x = tf.constant(rng.normal(size=(4, 24, 24, 3)), tf.float32)
  y = tf.constant(rng.integers(0, 10, size=4), tf.int32)
  weights = network.trainable_variables
  before = [v.numpy().astype(np.float64) for v in weights]
  with tf.GradientTape() as tape:  # drop path is 0: the pass is deterministic
    logits, aux = network(x, training=True)
    loss = (tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
            + 0.4 * tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, aux)))
  grads = [g.numpy().astype(np.float64) for g in tape.gradient(loss, weights)]
  norm = np.sqrt(sum((g ** 2).sum() for g in grads))
  assert norm > 0.5  # so that clipping acts
  want = [w - 0.1 * (g * 0.5 / norm + 0.01 * w) for w, g in zip(before, grads)]
  model.train_on_batch(x, y)
  for w, expected in zip(weights, want):
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_schedules_step_once_per_epoch():
  exponential = optimization.EpochExponentialDecay(0.1, 0.97, steps_per_epoch=10)
  assert [float(exponential(s)) for s in (0, 9, 10, 25)] == pytest.approx(
      [0.1, 0.1, 0.097, 0.1 * 0.97 ** 2])
  config = train_config.default_config()
  config.update(epochs=4, learning_rate=0.2, learning_rate_min=0.0)
  cosine = train_model.learning_rate_schedule(config, steps_per_epoch=5)
  assert [float(cosine(s)) for s in (0, 5, 10, 15)] == pytest.approx(
      [0.2, 0.1 + 0.1 * np.cos(np.pi / 4), 0.1, 0.1 - 0.1 * np.cos(np.pi / 4)])


def test_cutout_zeroes_one_clipped_square_per_image():
  images = tf.ones((400, 12, 12, 2))
  out = datasets.cutout(images, tf.constant([4, 2]), 6).numpy()
  sizes = []
  for image in out:
    hole = image[:, :, 0] == 0
    np.testing.assert_array_equal(hole, image[:, :, 1] == 0)  # all channels
    rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
    assert hole.sum() == len(rows) * len(cols)  # one rectangle
    assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
    sizes.append((len(rows), len(cols)))
  assert max(sizes) == (6, 6) and min(min(s) for s in sizes) >= 3  # clipped at borders
  assert len(set(sizes)) > 3


def test_drop_path_schedule_is_linear_in_the_epoch():
  network = networks.NetworkCIFAR("DARTS_V2", init_channels=4, num_cells=3,
                                  input_shape=(24, 24, 3))
  model = train_model.TrainModel(network)
  schedule = train_callbacks.DropPathSchedule(0.2, epochs=8)
  schedule.set_model(model)
  for epoch in (0, 3, 7):
    schedule.on_epoch_begin(epoch)
    assert float(network.drop_path_rate.numpy()) == pytest.approx(0.2 * epoch / 8)


def tiny_config(**overrides):
  config = train_config.default_config()
  config.update({**dict(dataset="fashion_mnist", setting="fashion_mnist", limit=1280,
                        batch_size=32, epochs=2, init_channels=6, num_cells=3,
                        learning_rate=0.05, cutout_length=8, drop_path_rate=0.2),
                 **overrides})
  return config


class Interrupt(keras.callbacks.Callback):

  def on_epoch_end(self, epoch, logs=None):
    self.weights = [v.numpy() for v in self.model.network.trainable_variables]
    raise KeyboardInterrupt


class RecordStart(keras.callbacks.Callback):

  def on_train_begin(self, logs=None):
    self.weights = [v.numpy() for v in self.model.network.trainable_variables]
    self.iterations = int(self.model.optimizer.iterations)


@pytest.fixture(scope="module")
def interrupted_then_resumed(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("train") / "run")
  interrupt, start = Interrupt(), RecordStart()
  with pytest.raises(KeyboardInterrupt):
    train_run.run_training(tiny_config(), out, verbose=0, extra_callbacks=[interrupt])
  result = train_run.run_training(tiny_config(), out, verbose=0, extra_callbacks=[start])
  return out, interrupt, start, result


def test_training_learns_and_resumes(interrupted_then_resumed):
  out, interrupt, start, result = interrupted_then_resumed
  for saved, restored in zip(interrupt.weights, start.weights):
    np.testing.assert_array_equal(saved, restored)
  assert start.iterations == 40  # 1280 images / batch 32
  assert result.resumed_after == 1 and len(result.history["loss"]) == 1
  # Chance is 0.1. After two short epochs the test top-1 depends on the data order
  # (it differs between a resumed run and a whole one) and on float round-off: whole
  # runs with seeds 0-7 gave 0.35-0.66, twice over (two exact formulations of the 5x5
  # depthwise input gradient).
  assert result.test["top1"] > 0.3
  records = read_epoch_log(os.path.join(out, run_directory.EPOCH_LOG))
  assert [r["epoch"] for r in records] == [1, 2]
  assert [r["drop_path_rate"] for r in records] == pytest.approx([0.0, 0.1])
  assert records[0]["learning_rate"] == pytest.approx(0.05)
  assert EpochCheckpoint.finished_epochs(os.path.join(out, "checkpoints")) == 2
  # config.remapping "auto": Grappler's remapper off unless a GPU is visible;
  # config.graph_optimizer "light": one round of Grappler.
  assert (tf.config.optimizer.get_experimental_options()["remapping"]
          is bool(tf.config.list_logical_devices("GPU")))
  assert graph_options.rewrite_options().meta_optimizer_iterations == ONE_ROUND
  best = max(records, key=lambda r: r["val_top1"])
  assert result.best["epoch"] == best["epoch"]
  assert result.best["value"] == pytest.approx(best["val_top1"])


def test_evaluation_of_the_saved_weights(interrupted_then_resumed):
  out, _, _, result = interrupted_then_resumed
  last = restore.evaluate_checkpoint(out)
  assert last["epoch"] == 2
  assert last["top1"] == pytest.approx(result.test["top1"], abs=1e-6)
  script = os.path.join(ROOT, "bin", "evaluate.py")
  run = subprocess.run([sys.executable, script, f"--output_dir={out}", "--which=best",
                        "--json"], capture_output=True, text=True, check=True)
  best = json.loads(run.stdout)
  assert best["epoch"] == result.best["epoch"]
  assert best["top1"] == pytest.approx(result.best["value"], abs=1e-6)


def test_the_trained_run_exports_with_its_test_accuracy(interrupted_then_resumed, tmp_path):
  out, _, _, result = interrupted_then_resumed
  with open(os.path.join(out, train_inputs.DATASET_FILE)) as f:
    saved_info = json.load(f)
  info = datasets.dataset_info("fashion_mnist")
  assert tuple(saved_info["class_names"]) == info.class_names
  assert tuple(saved_info["mean"]) == info.mean
  exported = export.export_run(out, str(tmp_path), which="last")
  signature = tf.saved_model.load(exported.path).signatures["serving_default"]
  images, labels = datasets.load_arrays("fashion_mnist", "test")
  top = np.concatenate([signature(images=tf.constant(images[i:i + 320]))["classes"][:, 0]
                        for i in range(0, 1280, 320)])  # the run's test split: 1280 images
  assert np.mean(top == labels[:1280]) == pytest.approx(result.test["top1"], abs=1.5 / 1280)


def test_another_configuration_is_refused(interrupted_then_resumed):
  out = interrupted_then_resumed[0]
  with pytest.raises(UserInputError, match="holds a training with another configuration"):
    train_run.run_training(tiny_config(num_cells=4), out, verbose=0)


@pytest.mark.parametrize("overrides,message", [
    ({"schedule": "step"}, "Unknown schedule"),
    ({"setting": "svhn"}, "Unknown setting"),
    ({"drop_path_rate": 1.0}, "drop_path_rate"),
    ({"genotype": "NO_SUCH_CELL"}, "NO_SUCH_CELL"),
    ({"mult_add_budget": 1000}, "over the budget"),
    ({"base_batch_size": 0}, "config.base_batch_size must be a positive integer, got 0"),
    ({"precision": "float16"}, "Unknown precision"),
    ({"remapping": "yes"}, "Unknown remapping setting 'yes'; choose one of auto, on, off"),
    ({"graph_optimizer": "none"}, "Unknown graph_optimizer setting 'none'"),
    ({"worker_timeout_s": -1.0}, r"config.worker_timeout_s must be >= 0, got -1.0"),
    ({"dataset": "svhn"}, "Unknown dataset name 'svhn'"),
])
def test_bad_configuration_is_a_one_line_error(tmp_path, overrides, message):
  with pytest.raises(UserInputError, match=message):
    train_run.run_training(tiny_config(**overrides), str(tmp_path / "run"), verbose=0)
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("sync", [True, False])
def test_sync_batch_norm_reaches_every_batch_norm(sync):
  config = tiny_config(sync_batch_norm=sync)
  model = train_model.build_train_model(config, datasets.dataset_info("fashion_mnist"), 1)
  norms = [layer for layer in model.network._flatten_layers()  # pylint: disable=protected-access
           if isinstance(layer, layers.BatchNorm)]
  assert len(norms) > 10 and {layer.sync for layer in norms} == {sync}


def test_cli_reports_bad_input_in_one_line(tmp_path):
  run = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "evaluate.py"),
                        f"--output_dir={tmp_path}"], capture_output=True, text=True)
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1].startswith("error:")
  assert "holds no training run" in run.stderr and "Traceback" not in run.stderr


def _write_image_folder(root, split, num_classes, per_class, size=(48, 40)):
  rng = np.random.default_rng(len(split))
  for label in range(num_classes):
    directory = root / split / f"n{label:08d}"
    directory.mkdir(parents=True)
    for i in range(per_class):
      colour = np.full(size + (3,), 60 * label + 40, np.uint8)
      noise = rng.integers(0, 20, size + (3,), dtype=np.uint8)
      (directory / f"{i}.JPEG").write_bytes(tf.io.encode_jpeg(colour + noise).numpy())


def test_imagenet_recipe_trains_from_an_image_folder(tmp_path):
  for split, per_class in (("train", 4), ("val", 2)):
    _write_image_folder(tmp_path / "imagenet", split, num_classes=3, per_class=per_class)
  config = train_config.imagenet_config()
  config.update(dict(data_dir=str(tmp_path / "imagenet"), init_channels=4, num_cells=3,
                     batch_size=4, epochs=2))
  config.imagenet.update(dict(image_size=192, resize_size=208))
  out = str(tmp_path / "run")
  result = train_run.run_training(config, out, verbose=0)
  records = read_epoch_log(os.path.join(out, run_directory.EPOCH_LOG))
  # 12 training images in batches of 4: 3 steps per epoch, x0.97 after each epoch.
  assert [r["learning_rate"] for r in records] == pytest.approx([0.1, 0.1 * 0.97])
  assert [r["drop_path_rate"] for r in records] == [0.0, 0.0]
  assert all(np.isfinite(r["loss"]) for r in records)
  last = restore.evaluate_checkpoint(out)
  assert last["epoch"] == 2
  assert last["top1"] == pytest.approx(result.test["top1"], abs=1e-6)
  with pytest.raises(UserInputError, match="validation set"):
    restore.evaluate_checkpoint(out, split="train")


def _write_tfrecord(path, count):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for i in range(count):
      image = tf.io.encode_jpeg(np.full((20, 20, 3), 9 * i, np.uint8)).numpy()
      features = {
          "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
          "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1])),
      }
      writer.write(tf.train.Example(
          features=tf.train.Features(feature=features)).SerializeToString())


def test_imagenet_tfrecord_epoch_length_comes_from_the_config(tmp_path):
  for split in ("train", "validation"):
    _write_tfrecord(tmp_path / f"{split}-00000-of-00001", 10)
  config = train_config.imagenet_config()
  config.update(dict(data_dir=str(tmp_path), batch_size=4))
  config.imagenet.update(dict(image_size=16, resize_size=16, train_examples=10))
  train_ds, _, info, steps = train_inputs.load_datasets(config)
  assert int(train_ds.cardinality()) < 0  # shards cannot be counted without reading
  assert steps == 2 and info.num_classes == 1000
  config.limit = 5
  assert train_inputs.load_datasets(config)[3] == 1
