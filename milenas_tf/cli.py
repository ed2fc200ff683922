"""Shared plumbing of the `bin/` scripts: one-line errors instead of tracebacks."""

from __future__ import annotations

import os
import sys
from typing import Callable

from absl import app

from milenas_tf.errors import UserInputError

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
