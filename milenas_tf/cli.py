"""Shared plumbing of the `bin/` scripts: one-line errors instead of tracebacks, and
TensorFlow's oneDNN kernels on.

The scripts import this module before anything that imports TensorFlow: oneDNN
(`TF_ENABLE_ONEDNN_OPTS`) is read when TensorFlow is imported. TensorFlow enables it
by default only on CPUs with AVX-512 VNNI or AMX; on a 2-core AVX2 CPU it makes the
search step about 0.75x and the training step about 0.6x as long (docs/benchmarks.md). An
explicit `TF_ENABLE_ONEDNN_OPTS=0` in the environment is respected.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position

from milenas_tf.errors import UserInputError  # pylint: disable=g-import-not-at-top

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs")


def check_no_arguments(argv: list[str]) -> None:
  """Rejects stray positional arguments."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run`, printing bad input and interruptions as one line."""

  def guarded(argv):
    try:
      main(argv)
    except UserInputError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except KeyboardInterrupt:
      print("Interrupted; rerun the same command to resume from the last finished epoch.",
            file=sys.stderr)
      sys.exit(130)

  app.run(guarded)
