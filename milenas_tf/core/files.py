"""Atomic file writes of run state, and reading it back.

Every file a run writes goes through `atomic_write`: it is written beside its
target under a temporary name, flushed, and renamed into place, so a reader (or a
resumed run) sees the old file or the new one, never half of one; a failed write
removes its temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Callable, Iterator

import keras
import numpy as np


@contextlib.contextmanager
def _temporary_beside(path: str, suffix: str) -> Iterator[str]:
  """A fresh temporary path in `path`'s directory (created), removed unless renamed."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                             suffix=suffix)
  os.close(fd)
  try:
    yield tmp
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None],
                 suffix: str = ".tmp") -> None:
  """Writes `path` through `write(tmp)` and an atomic rename; creates parent folders.

  Args:
    path: the file to write.
    write: writes the whole content to the path it is given.
    suffix: the temporary file's suffix (some writers need their format's,
      such as ".weights.h5" for Keras or ".npz" for NumPy).
  """
  path = os.fspath(path)
  with _temporary_beside(path, suffix) as tmp:
    write(tmp)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
    with open(tmp, "rb") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
  """Writes a text file atomically."""

  def write(tmp):
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)

  atomic_write(path, write)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
  """Writes JSON atomically, indented for reading."""
  write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
  """The JSON value in `path`, or None if the file does not exist.

  Raises:
    ValueError: if the file is not valid JSON.
  """
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def save_weights_atomic(model: keras.Model, path: str | os.PathLike[str]) -> None:
  """Saves a model's weights (`.weights.h5`) atomically."""
  atomic_write(path, model.save_weights, suffix=".weights.h5")


def save_arrays_atomic(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
  """Saves NumPy arrays as an `.npz` file atomically."""
  atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")
