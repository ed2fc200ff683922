"""The run state of a finished epoch, committed as one unit and verified on load.

A checkpoint is a directory `checkpoints/epoch_NNN/` holding

- `ckpt.weights.h5`: the network (w, alpha, batch-norm statistics) and the
  optimisers' state (iterations and so the schedules, momentum buffers, Adam
  moments);
- `state.json`: the epochs done, the optimisers' update rules, the random
  generators' states (drop path) and a manifest of the weights file (size and
  SHA-256).

It is written under a temporary name, flushed, and renamed into place: a reader
sees the whole checkpoint or none of it, so a resume never pairs weights with
another epoch's state. The previous checkpoint stays until the new one is
committed. On load the newest checkpoint that verifies is used; a damaged one is
skipped with a one-line warning, and when none verifies the run stops with one
line naming the file and the fix. Checkpoints of the earlier layout
(`checkpoints/ckpt.weights.h5` and `checkpoints/state.json`) still load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import sys
import tempfile

import keras
import numpy as np

from milenas_tf.core import files
from milenas_tf.core import optimization
from milenas_tf.core.errors import UserInputError

WEIGHTS = "ckpt.weights.h5"
STATE = "state.json"
# The optimisers' update rules the state was saved with: checkpoints without it hold
# Keras's SGD velocities, converted on restore (`optimization.from_keras_state`).
OPTIMIZER_RULES = "pytorch"
KEEP = 2  # committed checkpoints kept: the newest and the one before it
_NAME = re.compile(r"^epoch_(\d+)$")


@dataclasses.dataclass
class Checkpoint:
  """A committed checkpoint.

  Attributes:
    directory: where its files are.
    epochs_done: the epochs finished when it was written.
    state: its `state.json`.
  """
  directory: str
  epochs_done: int
  state: dict

  @property
  def weights(self) -> str:
    return os.path.join(self.directory, WEIGHTS)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _seed_generator_states(model: keras.Model) -> list:
  """The state variables of the model's random generators (drop path), in the model's
  order: weights files omit them, and their names depend on what the process built
  before, so they are matched by position."""
  return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def _fsync_directory(directory: str) -> None:
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def commit(model: keras.Model, directory: str, epochs_done: int) -> str:
  """Writes the model's state after `epochs_done` epochs as one checkpoint.

  Args:
    model: the built model (with its optimisers).
    directory: the run's `checkpoints/` directory.
    epochs_done: the epochs finished.

  Returns:
    The committed checkpoint's directory.

  Raises:
    OSError: if the disk refuses; the previous checkpoint is left as it was.
  """
  os.makedirs(directory, exist_ok=True)
  final = os.path.join(directory, f"epoch_{epochs_done:03d}")
  tmp = tempfile.mkdtemp(prefix=f".epoch_{epochs_done:03d}.", dir=directory)
  try:
    weights = os.path.join(tmp, WEIGHTS)
    files.save_weights_atomic(model, weights)
    state = {"epochs_done": epochs_done, "optimizer_rules": OPTIMIZER_RULES,
             "seed_generators": [np.asarray(v.numpy()).tolist()
                                 for v in _seed_generator_states(model)],
             "files": {WEIGHTS: {"bytes": os.path.getsize(weights),
                                 "sha256": _sha256(weights)}}}
    files.write_json_atomic(os.path.join(tmp, STATE), state)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    _fsync_directory(tmp)
    if os.path.exists(final):  # this epoch committed before, by a run that then died
      shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_directory(directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  _remove_older(directory)
  return final


def _committed(directory: str) -> list[tuple[int, str]]:
  """(epoch, path) of the committed checkpoints, newest first."""
  found = []
  if os.path.isdir(directory):
    for name in os.listdir(directory):
      match = _NAME.match(name)
      if match and os.path.isdir(os.path.join(directory, name)):
        found.append((int(match.group(1)), os.path.join(directory, name)))
  return sorted(found, reverse=True)


def _remove_older(directory: str) -> None:
  """Keeps the `KEEP` newest checkpoints; removes the rest, the earlier layout's files
  and the temporary directories of interrupted commits."""
  for _, path in _committed(directory)[KEEP:]:
    shutil.rmtree(path, ignore_errors=True)
  for name in os.listdir(directory):
    path = os.path.join(directory, name)
    if name in (WEIGHTS, STATE) or name.startswith("tmp."):
      os.remove(path)
    elif name.startswith(".epoch_"):
      shutil.rmtree(path, ignore_errors=True)


def _verify(path: str, max_epochs: int | None, legacy: bool = False) -> Checkpoint:
  """The checkpoint in `path`, checked; raises ValueError saying what is wrong."""
  state_path = os.path.join(path, STATE)
  try:
    state = files.read_json(state_path)
  except (OSError, ValueError) as e:
    raise ValueError(f"{state_path} is unreadable ({e})") from None
  if not isinstance(state, dict):
    raise ValueError(f"{state_path} is missing" if state is None
                     else f"{state_path} holds no checkpoint state")
  done = state.get("epochs_done")
  if not isinstance(done, int) or isinstance(done, bool) or done < 1:
    raise ValueError(f"{state_path} has no valid epochs_done ({done!r})")
  if max_epochs is not None and done > max_epochs:
    raise ValueError(f"{state_path} records {done} epochs, more than the "
                     f"{max_epochs} configured")
  weights = os.path.join(path, WEIGHTS)
  if not os.path.isfile(weights):
    raise ValueError(f"{weights} is missing")
  manifest = (state.get("files") or {}).get(WEIGHTS)
  if not legacy:
    if not manifest:
      raise ValueError(f"{state_path} has no manifest of {WEIGHTS}")
    if os.path.getsize(weights) != manifest.get("bytes") or _sha256(weights) != manifest.get(
        "sha256"):
      raise ValueError(f"{weights} does not match its manifest (damaged or replaced)")
  return Checkpoint(path, done, state)


def latest(directory: str, max_epochs: int | None = None) -> Checkpoint | None:
  """The newest checkpoint of `directory` that verifies; None if there is none.

  A damaged checkpoint is skipped with a one-line warning on stderr when an older one
  verifies.

  Args:
    directory: a run's `checkpoints/` directory.
    max_epochs: the configured epochs; a checkpoint claiming more is damaged.

  Raises:
    UserInputError: if checkpoints exist and none of them verifies.
  """
  candidates = [(path, False) for _, path in _committed(directory)]
  if os.path.isfile(os.path.join(directory, STATE)) or os.path.isfile(
      os.path.join(directory, WEIGHTS)):
    candidates.append((directory, True))  # the earlier layout
  problems = []
  for path, legacy in candidates:
    try:
      checkpoint = _verify(path, max_epochs, legacy)
    except ValueError as e:
      problems.append(str(e))
      continue
    for problem in problems:
      print(f"warning: {problem}; resuming from the checkpoint of epoch "
            f"{checkpoint.epochs_done} instead.", file=sys.stderr)
    return checkpoint
  if problems:
    raise UserInputError(
        f"{problems[0]}; no checkpoint in {directory} can be resumed: restore the file, "
        f"or remove {directory} to start the run over.")
  return None


def restore(model: keras.Model, directory: str, max_epochs: int | None = None) -> int:
  """Loads the newest verified checkpoint into a built model; returns its epochs done
  (0 without one).

  Raises:
    UserInputError: if no checkpoint verifies, or the weights do not load.
  """
  checkpoint = latest(directory, max_epochs)
  if checkpoint is None:
    return 0
  try:
    model.load_weights(checkpoint.weights)
  except (OSError, ValueError, KeyError) as e:
    raise UserInputError(
        f"{checkpoint.weights} does not load ({str(e).splitlines()[0][:200]}); restore "
        f"the file, or remove {directory} to start the run over.") from None
  if checkpoint.state.get("optimizer_rules") != OPTIMIZER_RULES:
    optimization.from_keras_state(model.optimizer)
  seeds = checkpoint.state.get("seed_generators")
  variables = _seed_generator_states(model)
  if seeds is not None and len(seeds) == len(variables):  # absent in the earlier layout
    for variable, state in zip(variables, seeds):
      variable.assign(np.asarray(state, dtype=variable.dtype))
  return checkpoint.epochs_done
