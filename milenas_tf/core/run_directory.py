"""Output directories of resumable runs: their layout, and one configuration per
directory."""

from __future__ import annotations

import os
from typing import Sequence

from milenas_tf.core import files
from milenas_tf.core import lock
from milenas_tf.core.errors import UserInputError

# What every run directory holds (search and training add their own files).
CONFIG_FILE = "config.json"        # the run's configuration; a rerun must match it
EPOCH_LOG = "epochs.jsonl"         # one JSON line per finished epoch
CHECKPOINT_DIR = "checkpoints"     # the last finished epochs' state (`checkpoint`)
LOG_DIR = "logs"                   # TensorBoard
LOCK_FILE = lock.LOCK_FILE         # held by the running process (`lock.DirectoryLock`)
# Fields a saved configuration may have that the current one lacks before it counts as
# another kind of run rather than another configuration.
_FOREIGN_FIELDS = 3
# Keys that may differ between a run and its resumption: where the data comes from and
# how the same computation runs.
RESUME_FREE_KEYS = ("data_dir", "data_source", "distribution", "worker_timeout_s",
                    "remapping", "graph_optimizer")


def read_config(run_dir: str, defaults: dict | None = None) -> dict | None:
  """The configuration a run directory holds, or None if it holds none.

  Args:
    run_dir: the run's directory.
    defaults: the configuration's defaults: a key the saved configuration lacks
      (written before the key existed) counts as its default there.

  Raises:
    UserInputError: if `config.json` cannot be read.
  """
  path = os.path.join(run_dir, CONFIG_FILE)
  try:
    saved = files.read_json(path)
  except (OSError, ValueError) as e:
    raise UserInputError(f"{path} is unreadable ({e}); choose another directory.") from None
  if saved is None:
    return None
  return {**{k: v for k, v in (defaults or {}).items() if k not in saved}, **saved}


def check_output_dir(output_dir: str, config: dict, kind: str,
                     resume_free_keys: Sequence[str] = RESUME_FREE_KEYS,
                     defaults: dict | None = None) -> bool:
  """Checks an output directory, writing nothing; returns whether it holds this run.

  Args:
    output_dir: the run's directory.
    config: the run's configuration as a dict.
    kind: what the run is ("search", "training"), for messages.
    resume_free_keys: keys that may differ between a run and its resumption.
    defaults: the configuration's defaults: a key the saved configuration lacks
      (written before the key existed) counts as its default there.

  Returns:
    True if the directory holds a run of the same configuration (to resume);
    False if it is new or empty (a lock file alone, `LOCK_FILE`, counts as empty:
    the run's own lock, or one left by a killed run).

  Raises:
    UserInputError: if the directory holds another run, an unreadable
      configuration, or unrelated files.
  """
  saved = read_config(output_dir, defaults)
  if saved is not None:
    # Fields the other kind of run has (a training's genotype in a search's directory).
    foreign = sorted(set(saved) - set(config) - set(defaults or {}))
    if len(foreign) >= _FOREIGN_FIELDS:
      raise UserInputError(
          f"{output_dir} holds another kind of run than a {kind} (its configuration has "
          f"{', '.join(foreign[:3])}, ...); choose another --output_dir.")
    diffs = [f"{k}: {saved.get(k)!r} in the run, {config.get(k)!r} now"
             for k in sorted(set(saved) | set(config))
             if k not in resume_free_keys and saved.get(k) != config.get(k)]
    if diffs:
      raise UserInputError(
          f"{output_dir} holds a {kind} with another configuration ({'; '.join(diffs)}); "
          "rerun with the same configuration to resume, or choose another --output_dir.")
    return True
  if os.path.isdir(output_dir) and set(os.listdir(output_dir)) - {LOCK_FILE}:
    raise UserInputError(
        f"{output_dir} is not empty and holds no {kind} ({CONFIG_FILE} is missing); "
        "choose a new or empty --output_dir.")
  return False
