"""The derived cells' size, the per-size store, the early stop, alpha's history and
deterministic searches."""

import json
import os
import types

import numpy as np
import pytest
import tensorflow as tf

from milenas_tf.core import callbacks
from milenas_tf.core import determinism
from milenas_tf.core import run_directory
from milenas_tf.core.errors import UserInputError
from milenas_tf.search import alpha_history
from milenas_tf.search import callbacks as search_callbacks
from milenas_tf.search import config as search_config
from milenas_tf.search import run as search_run
from milenas_tf.search import size as cell_size
from milenas_tf.space import genotypes
from milenas_tf.train import model_size

DARTS_V2 = genotypes.load_genotype("DARTS_V2")  # 6 convolutions (normal), 0 (reduction)


def alphas_for(genotype):
  """alpha matrices whose derived genotype is `genotype`."""
  alphas = {}
  for cell in genotypes.CELL_TYPES:
    a = np.zeros((genotypes.NUM_EDGES, len(genotypes.PRIMITIVES)), np.float32)
    for i, (op, source) in enumerate(getattr(genotype, cell)):
      a[genotypes.edge_index(i // 2, source), genotypes.PRIMITIVES.index(op)] = 5.0
    alphas[cell] = a
  return alphas


def with_ops(genotype, cell, ops):
  """`genotype` with the operations of one cell replaced, sources kept."""
  pairs = tuple((op, source) for op, (_, source) in zip(ops, getattr(genotype, cell)))
  return genotype._replace(**{cell: pairs})


def test_size_figures_of_a_published_cell():
  meter = cell_size.SizeMeter(10, (32, 32, 3), init_channels=16, num_cells=8)
  measured = meter.measure(DARTS_V2)
  assert (measured.normal_convs, measured.reduce_convs, measured.normal_skips) == (6, 0, 2)
  described = model_size.describe(DARTS_V2, "cifar10", init_channels=16, num_cells=8)
  assert measured.params == described["params"]


@pytest.mark.parametrize("name", genotypes.genotype_names())
def test_parameter_count_equals_the_built_network(name):
  genotype = genotypes.load_genotype(name)
  for setting, channels, cells in (("fashion_mnist", 4, 3), ("cifar10", 6, 5)):
    described = model_size.describe(genotype, setting, init_channels=channels,
                                    num_cells=cells)
    assert cell_size.network_params(genotype, channels, cells, 10,
                                    described["input_shape"][-1]) == described["params"]


def test_size_follows_the_genotype_and_the_search_shape():
  meter = cell_size.SizeMeter(10, (28, 28, 1), init_channels=4, num_cells=3)
  fewer = with_ops(DARTS_V2, "normal", ["skip_connect"] * 4 + list(
      op for op, _ in DARTS_V2.normal[4:]))
  assert cell_size.conv_counts(fewer) == (2, 0)
  assert meter.measure(fewer).normal_skips == 6
  assert meter.params(fewer) < meter.params(DARTS_V2)
  described = model_size.describe(fewer, "fashion_mnist", init_channels=4, num_cells=3)
  assert meter.params(fewer) == described["params"]


def test_by_size_store_keeps_the_best_of_each_size(tmp_path):
  store = cell_size.BySizeStore(str(tmp_path))
  other = with_ops(DARTS_V2, "reduce", ["sep_conv_3x3"] * 8)
  size_a, size_b = cell_size.CellSize(6, 0, 2, 100), cell_size.CellSize(6, 8, 2, 200)
  assert store.update(DARTS_V2, size_a, 0.50, epoch=1)
  assert store.update(other, size_b, 0.40, epoch=2)
  assert not store.update(DARTS_V2, size_a, 0.45, epoch=3)  # worse: kept epoch 1
  assert not store.update(DARTS_V2, size_a, 0.50, epoch=4)  # a tie keeps the earlier
  assert store.update(DARTS_V2, size_a, 0.60, epoch=5)
  entries = store.entries()
  assert [(e["normal_convs"], e["reduce_convs"], e["epoch"], e["val_accuracy"])
          for e in entries] == [(6, 0, 5, 0.60), (6, 8, 2, 0.40)]
  assert genotypes.load_genotype(store.path(6, 8)) == other
  assert os.path.basename(entries[0]["path"]) == "n6_r0.json"


def test_early_stop_fires_at_the_first_epoch_that_reaches_the_target(tmp_path):
  # Hand-made alpha per epoch: (6, 2), (5, 0), (6, 0), (6, 0) convolutions.
  one_skip_more = ["skip_connect"] + [op for op, _ in DARTS_V2.normal[1:]]
  sequence = [with_ops(DARTS_V2, "reduce", ["sep_conv_3x3"] * 2 + ["max_pool_3x3"] * 6),
              with_ops(DARTS_V2, "normal", one_skip_more), DARTS_V2, DARTS_V2]
  state = {}
  network = types.SimpleNamespace(genotype=lambda: genotypes.derive_genotype(
      state["alphas"]["normal"], state["alphas"]["reduce"]))
  model = types.SimpleNamespace(network=network, stop_training=False)
  logger = search_callbacks.CellSizeLogger(
      str(tmp_path), cell_size.SizeMeter(10, (28, 28, 1), 4, 3), early_stop=(6, 0))
  logger.set_model(model)
  stopped_at = []
  for epoch, genotype in enumerate(sequence):
    state["alphas"] = alphas_for(genotype)
    logs = {"val_accuracy": 0.1 * epoch}
    logger.on_epoch_end(epoch, logs)
    assert (logs["normal_convs"], logs["reduce_convs"]) == cell_size.conv_counts(genotype)
    if model.stop_training:
      stopped_at.append(epoch + 1)
      break
  assert stopped_at == [3]
  assert logger.stopped_early
  assert [e["epoch"] for e in cell_size.BySizeStore(str(tmp_path)).entries()] == [2, 3, 1]


def test_entropy_against_a_hand_computation():
  alphas = np.zeros((14, 8))
  alphas[3] = np.log([1, 1, 2, 4, 0.5, 0.5, 1, 2])
  p = np.array([1, 1, 2, 4, 0.5, 0.5, 1, 2]) / 12.0
  entropy = alpha_history.edge_entropy(alphas)
  np.testing.assert_allclose(entropy[0], np.log(8), rtol=1e-12)
  np.testing.assert_allclose(entropy[3], -(p * np.log(p)).sum(), rtol=1e-12)
  assert entropy.shape == (14,)


def test_alpha_history_replaces_epochs_run_again(tmp_path):
  out = str(tmp_path)
  a = [np.full((14, 8), float(i)) for i in range(4)]
  for epoch in (1, 2, 3):
    alpha_history.append(out, epoch, a[epoch], -a[epoch])
  history = alpha_history.append(out, 2, a[0], a[0])  # a resumed run redoes epoch 2
  assert history["epochs"].tolist() == [1, 2]
  np.testing.assert_array_equal(history["normal"][0], a[1])
  np.testing.assert_array_equal(history["reduce"][1], a[0])
  loaded = alpha_history.load(out)
  assert {k: v.tolist() for k, v in loaded.items()} == {
      k: v.tolist() for k, v in history.items()}


@pytest.mark.parametrize("overrides, message", [
    (dict(early_stop_normal_convs=9), "a cell has 8 operations"),
    (dict(early_stop_normal_convs=6, track_size=False), "config.track_size=true"),
    (dict(early_stop_reduce_convs=-1), "config.early_stop_reduce_convs"),
])
def test_bad_size_options_are_refused(overrides, message):
  config = search_config.default_config()
  config.update(overrides)
  with pytest.raises(UserInputError, match=message.replace(".", r"\.")):
    search_config.validate(config)


def tiny_config(**overrides):
  config = search_config.default_config()
  # A constant w learning rate: the first epoch is the same whatever `epochs` is.
  config.update({**dict(dataset="fashion_mnist", limit=128, batch_size=16, epochs=1,
                        init_channels=4, num_cells=3, order="fused", learning_rate_min=0.025,
                        arch_learning_rate=3e-2, deterministic=True), **overrides})
  return config


def entropy_summaries(log_dir):
  """{(tag, step): value} of the scalar summaries under `log_dir`."""
  found = {}
  for root, _, names in os.walk(log_dir):
    for name in names:
      for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
        for value in event.summary.value:
          if value.tag.startswith("alpha_entropy/"):
            found[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
  return found


@pytest.fixture(scope="module")
def early_stopped(tmp_path_factory):
  """A deterministic one-epoch search, and a three-epoch one told to stop when its
  cells reach the first one's convolution counts."""
  root = tmp_path_factory.mktemp("size")
  first = search_run.run_search(tiny_config(), str(root / "first"), verbose=0)
  target = cell_size.conv_counts(first.genotype)
  config = tiny_config(epochs=3, early_stop_normal_convs=target[0],
                       early_stop_reduce_convs=target[1])
  stopped = search_run.run_search(config, str(root / "stopped"), verbose=0)
  again = search_run.run_search(config, str(root / "stopped"), verbose=0)
  return root, first, stopped, again


def test_two_deterministic_runs_give_the_same_alpha(early_stopped):
  root, first, stopped, _ = early_stopped
  a = np.load(root / "first" / "alphas.npz")
  b = np.load(root / "stopped" / "alphas.npz")
  for key in ("alphas_normal", "alphas_reduce"):
    np.testing.assert_array_equal(a[key], b[key])
  assert stopped.genotype == first.genotype
  assert not determinism.enabled()  # only during the runs


def test_search_stops_early_and_a_rerun_finds_it_finished(early_stopped):
  root, _, stopped, again = early_stopped
  out = root / "stopped"
  assert stopped.epochs_done == 1 and len(stopped.history["loss"]) == 1
  saved = json.loads((out / "genotype.json").read_text())
  assert (saved["epoch"], saved["final"], saved["stopped_early"]) == (1, True, True)
  assert again.epochs_done == 1 and again.history == {} and again.resumed_after == 1
  assert again.genotype == stopped.genotype
  assert len(callbacks.read_epoch_log(str(out / run_directory.EPOCH_LOG))) == 1


def test_search_logs_size_history_entropy_and_plots(early_stopped):
  root, first, _, _ = early_stopped
  out = root / "first"
  record, = callbacks.read_epoch_log(str(out / run_directory.EPOCH_LOG))
  config = tiny_config()
  meter = cell_size.SizeMeter(10, (28, 28, 1), config.init_channels, config.num_cells)
  assert {k: record[k] for k in cell_size.CellSize.__dataclass_fields__} == (
      meter.measure(first.genotype).logs())
  stored, = cell_size.BySizeStore(str(out)).entries()
  assert stored["val_accuracy"] == pytest.approx(record["val_accuracy"])
  history = alpha_history.load(str(out))
  final = np.load(out / "alphas.npz")
  assert history["epochs"].tolist() == [1]
  np.testing.assert_array_equal(history["normal"][0], final["alphas_normal"])
  summaries = entropy_summaries(str(out / "logs"))
  entropy = alpha_history.edge_entropy(final["alphas_reduce"])
  assert summaries[("alpha_entropy/reduce/mean", 1)] == pytest.approx(entropy.mean(),
                                                                      rel=1e-6)
  assert summaries[("alpha_entropy/reduce/node3_from4", 1)] == pytest.approx(
      entropy[13], rel=1e-6)
  for name in ("alphas_normal.png", "alphas_reduce.png", "size.png"):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
