"""End to end: a short real search on Fashion-MNIST, interruption and resumption, bad input."""

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
from milenas_tf.core import run_directory
from milenas_tf.core.callbacks import EpochCheckpoint
from milenas_tf.core.callbacks import read_epoch_log
from milenas_tf.core.errors import UserInputError
from milenas_tf.search import config as search_config
from milenas_tf.search import run as search_run
from milenas_tf.space import genotypes

ONE_ROUND = rewriter_config_pb2.RewriterConfig.ONE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  config = search_config.default_config()
  config.update({**dict(dataset="fashion_mnist", limit=1280, batch_size=32, epochs=2,
                        init_channels=4, num_cells=3), **overrides})
  return config


class Interrupt(keras.callbacks.Callback):
  """Records the state after the first epoch, then stops the run as Ctrl-C would."""

  def on_epoch_end(self, epoch, logs=None):
    self.alphas = [v.numpy() for v in self.model.network.arch_variables]
    self.iterations = int(self.model.optimizer.iterations)
    raise KeyboardInterrupt


class RecordStart(keras.callbacks.Callback):

  def on_train_begin(self, logs=None):
    self.alphas = [v.numpy() for v in self.model.network.arch_variables]
    self.iterations = int(self.model.optimizer.iterations)
    self.arch_iterations = int(self.model.arch_optimizer.iterations)


@pytest.fixture(scope="module")
def interrupted_then_resumed(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("search") / "run")
  config = tiny_config()
  interrupt = Interrupt()
  with pytest.raises(KeyboardInterrupt):
    search_run.run_search(config, out, verbose=0, extra_callbacks=[interrupt])
  after_interrupt = sorted(os.listdir(out))
  start = RecordStart()
  result = search_run.run_search(config, out, verbose=0, extra_callbacks=[start])
  return out, interrupt, start, result, after_interrupt


def test_interrupted_search_kept_its_first_epoch(interrupted_then_resumed):
  out, interrupt, _, _, after_interrupt = interrupted_then_resumed
  assert {"config.json", "genotype.json", "genotypes", "checkpoints", "logs"} <= set(
      after_interrupt)
  assert interrupt.iterations == 20  # 640 search-train images / batch 32


def test_resumed_search_continues_from_the_saved_epoch(interrupted_then_resumed):
  out, interrupt, start, result, _ = interrupted_then_resumed
  for saved, restored in zip(interrupt.alphas, start.alphas):
    np.testing.assert_array_equal(saved, restored)
  assert start.iterations == start.arch_iterations == 20
  assert result.resumed_after == 1
  assert len(result.history["loss"]) == 1  # only the second epoch ran again
  assert EpochCheckpoint.finished_epochs(os.path.join(out, "checkpoints")) == 2
  records = read_epoch_log(os.path.join(out, run_directory.EPOCH_LOG))
  assert [r["epoch"] for r in records] == [1, 2]
  assert all(r["seconds"] > 0 and 0 <= r["val_accuracy"] <= 1 for r in records)
  assert records[1]["val_accuracy"] == pytest.approx(result.history["val_accuracy"][-1])


def test_resumed_search_ends_where_an_uninterrupted_one_does(interrupted_then_resumed,
                                                             tmp_path):
  # Weights, alpha, both optimisers and the schedule are restored, and the second
  # epoch gets the batches it gets without the interruption.
  whole = str(tmp_path / "whole")
  search_run.run_search(tiny_config(), whole, verbose=0)
  with np.load(os.path.join(interrupted_then_resumed[0], "alphas.npz")) as resumed, \
       np.load(os.path.join(whole, "alphas.npz")) as uninterrupted:
    for name in ("alphas_normal", "alphas_reduce"):
      np.testing.assert_array_equal(resumed[name], uninterrupted[name])


def test_search_learns_and_moves_alpha(interrupted_then_resumed):
  out, interrupt, _, result, _ = interrupted_then_resumed
  assert result.history["val_accuracy"][-1] > 0.3  # chance is 0.1
  with np.load(os.path.join(out, "alphas.npz")) as alphas:
    assert np.abs(alphas["alphas_normal"]).max() > 5e-3  # initialised at 1e-3 scale
    assert not np.allclose(alphas["alphas_normal"], interrupt.alphas[0])
    want = genotypes.derive_genotype(alphas["alphas_normal"], alphas["alphas_reduce"])
  assert genotypes.load_genotype(os.path.join(out, "genotype.json")) == want == result.genotype
  assert sorted(os.listdir(os.path.join(out, "genotypes"))) == ["by_size", "epoch_001.json",
                                                                "epoch_002.json"]
  for cell in ("normal", "reduce"):
    with open(os.path.join(out, f"{cell}.png"), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  events = [f for _, _, files in os.walk(os.path.join(out, "logs")) for f in files]
  assert any(f.startswith("events.out.tfevents") for f in events)
  # config.remapping "auto": Grappler's remapper off unless a GPU is visible;
  # config.graph_optimizer "light": one round of Grappler.
  assert (tf.config.optimizer.get_experimental_options()["remapping"]
          is bool(tf.config.list_logical_devices("GPU")))
  assert graph_options.rewrite_options().meta_optimizer_iterations == ONE_ROUND


def test_output_dir_of_another_run_is_refused_and_kept(interrupted_then_resumed):
  out = interrupted_then_resumed[0]
  before = {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)}
  with pytest.raises(UserInputError, match="num_cells: 3 in the run, 4 now"):
    search_run.run_search(tiny_config(num_cells=4), out, verbose=0)
  assert before == {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)}
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["num_cells"] == 3


def test_non_empty_foreign_directory_is_refused(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(UserInputError, match="not empty and holds no search"):
    search_run.run_search(tiny_config(), str(tmp_path), verbose=0)
  assert os.listdir(tmp_path) == ["notes.txt"]


@pytest.mark.parametrize("flags,message", [
    (["--config.method=bogus"], "error: Unknown search method 'bogus'"),
    (["--config.method=darts_2nd", "--config.hessian=newton"],
     "error: Unknown hessian 'newton'; choose one of finite_difference, "
     "finite_difference_combined, exact"),
    (["--config.dataset=mnist"], "error: Unknown dataset name 'mnist'"),
    (["--config.remapping=yes"], "error: Unknown remapping setting 'yes'"),
    (["--config.graph_optimizer=none"], "error: Unknown graph_optimizer setting 'none'"),
    (["--config.data_source=idx", "--config.data_dir=/nonexistent"],
     "dataset-fashion-mnist"),
])
def test_cli_reports_bad_input_in_one_line(tmp_path, flags, message):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "bin", "search.py"),
       f"--output_dir={tmp_path / 'run'}"] + flags,
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "run").exists()  # nothing written for a run that cannot start


def test_compare_methods_runs_second_order_and_reports(tmp_path):
  out = tmp_path / "compare"
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "bin", "compare_methods.py"),
       f"--output_dir={out}", "--methods=milenas,darts_2nd", "--config.limit=192",
       "--config.epochs=1", "--config.init_channels=4", "--config.num_cells=3"],
      capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / "comparison.json") as f:
    report = json.load(f)
  assert [m["method"] for m in report["methods"]] == ["milenas", "darts_2nd"]
  milenas, darts_2nd = report["methods"]
  assert milenas["epoch_time_vs_milenas"] == 1.0
  assert darts_2nd["epoch_time_vs_milenas"] == pytest.approx(
      darts_2nd["mean_epoch_s"] / milenas["mean_epoch_s"], abs=0.01)
  with open(out / "darts_2nd" / "config.json") as f:
    assert json.load(f)["method"] == "darts_2nd"
  for m in report["methods"]:
    assert genotypes.Genotype.from_dict(m["genotype"]) == genotypes.load_genotype(
        str(out / m["method"] / "genotype.json"))
    assert 0 <= m["final_val_accuracy"] <= 1
  assert "| darts_2nd |" in (out / "comparison.md").read_text()
  assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
