"""Atomic file writes of run state, and reading it back.

Every file a run writes goes through `atomic_write`: it is written beside its
target under a temporary name, flushed, and renamed into place, so a reader (or a
resumed run) sees the old file or the new one, never half of one; a failed write
removes its temporary file.

Keras weights files are written by HDF5, which does not survive a full disk (the
process crashes while closing the half-written file), so `save_weights_atomic`
first checks that the file fits (`check_free_space`) and raises an `OSError`
(ENOSPC) that the scripts print in one line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator

import keras
import numpy as np
import tensorflow as tf


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


def check_free_space(path: str | os.PathLike[str], needed: int) -> None:
  """Raises `OSError` (ENOSPC) if `needed` bytes do not fit beside `path`.

  Args:
    path: the file about to be written (its directory is created if missing).
    needed: the bytes it needs.

  Raises:
    OSError: ENOSPC, with the free and needed sizes and the path.
  """
  directory = os.path.dirname(os.path.abspath(os.fspath(path)))
  os.makedirs(directory, exist_ok=True)
  free = shutil.disk_usage(directory).free
  if free < needed:
    raise OSError(errno.ENOSPC, f"No space left on device ({free / 2**20:.1f} MiB free, "
                                f"about {needed / 2**20:.1f} MiB needed)", os.fspath(path))


def weights_file_bytes(model: keras.Model, path: str | os.PathLike[str]) -> int:
  """A generous estimate of the size of `model`'s weights file at `path`.

  The larger of the file already there (the previous checkpoint) and three times the
  model's weights (the weights and up to two optimiser slots each), plus a tenth and
  1 MiB for HDF5's metadata.
  """
  weights = sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in model.weights)
  existing = os.path.getsize(path) if os.path.exists(path) else 0
  return int(max(existing, 3 * weights) * 1.1) + 2**20


def save_weights_atomic(model: keras.Model, path: str | os.PathLike[str]) -> None:
  """Saves a model's weights (`.weights.h5`) atomically, if they fit on the disk.

  Raises:
    OSError: ENOSPC if the disk has no room for them (checked before HDF5 writes).
  """
  check_free_space(path, weights_file_bytes(model, path))
  atomic_write(path, model.save_weights, suffix=".weights.h5")


def save_arrays_atomic(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
  """Saves NumPy arrays as an `.npz` file atomically."""
  atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def fingerprint(*parts: str | bytes) -> int:
  """A 62-bit integer digest (SHA-256) of `parts`, to compare states across processes."""
  digest = hashlib.sha256()
  for part in parts:
    digest.update(part.encode() if isinstance(part, str) else part)
  return int.from_bytes(digest.digest()[:8], "little") >> 2
