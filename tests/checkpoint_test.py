"""Checkpoints are committed as one unit: killed writes, damaged files, the earlier layout,
and a training run with drop path resumed exactly."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from milenas_tf.core import checkpoint
from milenas_tf.core import files
from milenas_tf.core import optimization
from milenas_tf.core.errors import UserInputError
from milenas_tf.train import config as train_config
from milenas_tf.train import run as train_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(seed=0):
  keras.utils.set_random_seed(seed)
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
  model.compile(optimizer=optimization.weight_optimizer(0.1, 0.9), loss="mse")
  model.optimizer.build(model.trainable_variables)
  return model


def weights_of(model):
  return [w.copy() for w in model.get_weights()]


def test_commits_keep_the_two_newest_and_restore_the_newest(tmp_path):
  directory = str(tmp_path / "checkpoints")
  saved = {}
  for epoch in (1, 2, 3):
    model = tiny_model(seed=epoch)
    checkpoint.commit(model, directory, epoch)
    saved[epoch] = weights_of(model)
  assert sorted(os.listdir(directory)) == ["epoch_002", "epoch_003"]
  state = files.read_json(os.path.join(directory, "epoch_003", checkpoint.STATE))
  assert state["epochs_done"] == 3 and state["files"][checkpoint.WEIGHTS]["sha256"]
  restored = tiny_model(seed=9)
  assert checkpoint.restore(restored, directory, max_epochs=3) == 3
  for got, want in zip(restored.get_weights(), saved[3]):
    np.testing.assert_array_equal(got, want)


DAMAGE = {
    "truncated weights": lambda d: _truncate(os.path.join(d, checkpoint.WEIGHTS)),
    "replaced weights": lambda d: _write(os.path.join(d, checkpoint.WEIGHTS), b"garbage"),
    "empty state": lambda d: _write(os.path.join(d, checkpoint.STATE), b""),
    "garbage state": lambda d: _write(os.path.join(d, checkpoint.STATE), b"{not json"),
    "deleted state": lambda d: os.remove(os.path.join(d, checkpoint.STATE)),
    "too many epochs": lambda d: _edit_state(d, epochs_done=99),
}


def _write(path, data):
  with open(path, "wb") as f:
    f.write(data)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _edit_state(directory, **changes):
  path = os.path.join(directory, checkpoint.STATE)
  state = files.read_json(path)
  state.update(changes)
  files.write_json_atomic(path, state)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd,
                                                                    damage):
  directory = str(tmp_path / "checkpoints")
  first = tiny_model(seed=1)
  checkpoint.commit(first, directory, 1)
  checkpoint.commit(tiny_model(seed=2), directory, 2)
  DAMAGE[damage](os.path.join(directory, "epoch_002"))
  restored = tiny_model(seed=9)
  assert checkpoint.restore(restored, directory, max_epochs=5) == 1
  for got, want in zip(restored.get_weights(), first.get_weights()):
    np.testing.assert_array_equal(got, want)
  warnings = [l for l in capfd.readouterr().err.splitlines() if l.startswith("warning:")]
  assert len(warnings) == 1 and "epoch_002" in warnings[0]
  assert warnings[0].endswith("resuming from the checkpoint of epoch 1 instead.")


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_no_verified_checkpoint_is_a_one_line_error(tmp_path, damage):
  directory = str(tmp_path / "checkpoints")
  checkpoint.commit(tiny_model(), directory, 1)
  DAMAGE[damage](os.path.join(directory, "epoch_001"))
  with pytest.raises(UserInputError) as error:
    checkpoint.restore(tiny_model(), directory, max_epochs=5)
  message = str(error.value)
  assert "\n" not in message and "epoch_001" in message
  assert message.endswith(f"restore the file, or remove {directory} to start the run over.")


def test_the_earlier_layout_still_restores(tmp_path):
  directory = str(tmp_path / "checkpoints")
  os.makedirs(directory)
  model = tiny_model(seed=4)
  model.save_weights(os.path.join(directory, checkpoint.WEIGHTS))
  files.write_json_atomic(os.path.join(directory, checkpoint.STATE),
                          {"epochs_done": 2, "optimizer_rules": checkpoint.OPTIMIZER_RULES})
  restored = tiny_model(seed=9)
  assert checkpoint.restore(restored, directory, max_epochs=4) == 2
  for got, want in zip(restored.get_weights(), model.get_weights()):
    np.testing.assert_array_equal(got, want)
  checkpoint.commit(restored, directory, 3)  # the next commit replaces the old layout
  assert sorted(os.listdir(directory)) == ["epoch_003"]


# Killed while committing: a child process commits epoch 1, then dies in the middle of
# epoch 2's commit at the point the test names.
KILLED = textwrap.dedent("""
    import os, signal, sys
    import keras
    from milenas_tf.core import checkpoint, files, optimization

    directory, point = sys.argv[1:]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=optimization.weight_optimizer(0.1, 0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    checkpoint.commit(model, directory, 1)
    die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
    if point == "before the weights":
      files.save_weights_atomic = die
    elif point == "between the weights and the state":
      files.write_json_atomic = die
    elif point == "after the rename":
      checkpoint._remove_older = die
    checkpoint.commit(model, directory, 2)
""")


@pytest.mark.parametrize("point,resumed", [("before the weights", 1),
                                           ("between the weights and the state", 1),
                                           ("after the rename", 2)])
def test_a_commit_killed_at_any_point_leaves_a_checkpoint_that_resumes(tmp_path, point,
                                                                       resumed):
  directory = str(tmp_path / "checkpoints")
  proc = subprocess.run([sys.executable, "-c", KILLED, directory, point],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  assert checkpoint.latest(directory, max_epochs=2).epochs_done == resumed
  # The next commit clears what the killed one left behind.
  checkpoint.commit(tiny_model(), directory, resumed + 1)
  assert all(name.startswith("epoch_") for name in os.listdir(directory))


def tiny_training(epochs=2, **overrides):
  config = train_config.default_config()
  config.update(dataset="fashion_mnist", setting="fashion_mnist", limit=96, batch_size=32,
                epochs=epochs, init_channels=4, num_cells=3, drop_path_rate=0.3,
                cutout_length=8, seed=5, **overrides)
  return config


class StopAfterFirstEpoch(keras.callbacks.Callback):
  """Ends the run after the first epoch's checkpoint, as a kill there would."""

  def on_epoch_end(self, epoch, logs=None):
    if epoch == 0:
      raise KeyboardInterrupt


def test_training_with_drop_path_resumes_exactly(tmp_path):
  """An interrupted training run (drop path, cutout, augmentation on) continues as the
  uninterrupted one: the drop-path generators' states are part of the checkpoint."""
  whole = train_run.run_training(tiny_training(), str(tmp_path / "whole"), verbose=0)
  out = str(tmp_path / "resumed")
  with pytest.raises(KeyboardInterrupt):
    train_run.run_training(tiny_training(), out, verbose=0,
                           extra_callbacks=[StopAfterFirstEpoch()])
  resumed = train_run.run_training(tiny_training(), out, verbose=0)
  assert resumed.resumed_after == 1
  assert resumed.history["loss"] == whole.history["loss"][1:]
  for name in ("whole", "resumed"):
    latest = checkpoint.latest(str(tmp_path / name / "checkpoints"))
    assert latest.epochs_done == 2
  states = [json.dumps(checkpoint.latest(str(tmp_path / n / "checkpoints")).state[
      "seed_generators"], sort_keys=True) for n in ("whole", "resumed")]
  assert states[0] == states[1] and states[0] != "[]"


def test_a_run_whose_checkpoints_are_gone_is_refused(tmp_path):
  out = str(tmp_path / "run")
  train_run.run_training(tiny_training(epochs=2), out, verbose=0)
  for name in os.listdir(os.path.join(out, "checkpoints")):
    os.rename(os.path.join(out, "checkpoints", name), os.path.join(tmp_path, name))
  with pytest.raises(UserInputError, match="logged 2 finished epochs but holds no checkpoint"):
    train_run.run_training(tiny_training(epochs=2), out, verbose=0)


SEARCH_FLAGS = ["--config.limit=128", "--config.epochs=3", "--config.batch_size=16",
                "--config.init_channels=4", "--config.num_cells=3"]


def search_command(out):
  return [sys.executable, os.path.join(ROOT, "bin", "search.py"), f"--output_dir={out}",
          *SEARCH_FLAGS]


def test_a_search_killed_at_random_points_resumes_exactly(tmp_path):
  """kill -9 at seeded random moments (tracing, mid-epoch, mid-checkpoint), rerun after
  each: the search ends with the alpha of the uninterrupted run, bit for bit."""
  whole = subprocess.run(search_command(tmp_path / "whole"), capture_output=True,
                         text=True, timeout=600)
  assert whole.returncode == 0, whole.stderr[-2000:]
  out = tmp_path / "killed"
  rng = np.random.default_rng(0)
  kills = 0
  for delay in rng.uniform(5.0, 30.0, size=2):
    proc = subprocess.Popen(search_command(out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
      proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
      proc.send_signal(signal.SIGKILL)
      kills += 1
    finally:
      proc.kill()
      proc.wait(timeout=60)
  final = subprocess.run(search_command(out), capture_output=True, text=True, timeout=600)
  assert final.returncode == 0, final.stderr[-2000:]
  assert kills >= 1
  want, got = (np.load(tmp_path / name / "alphas.npz") for name in ("whole", "killed"))
  for key in ("alphas_normal", "alphas_reduce"):
    np.testing.assert_array_equal(got[key], want[key])
