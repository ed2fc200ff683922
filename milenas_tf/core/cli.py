"""Shared plumbing of the `bin/` scripts: one-line errors instead of tracebacks,
TensorFlow's oneDNN kernels on, and the configuration files.

The scripts import this module before anything that imports TensorFlow: oneDNN
(`TF_ENABLE_ONEDNN_OPTS`) is read when TensorFlow is imported, and TensorFlow
enables it by itself only on CPUs with AVX-512 VNNI or AMX, while it also makes
the search and training steps shorter on AVX2 CPUs (docs/benchmarks.md). An
explicit `TF_ENABLE_ONEDNN_OPTS=0` in the environment is respected.

Bad input ends a script with one line on stderr and exit status 2: a missing or
broken configuration file, an unknown `--config.FIELD`, a value of the wrong type,
and every `UserInputError` of the library (a diverged run's `DivergenceError`
included). So does a fault of the disk or of permissions (an `OSError`: no space
left, a read-only directory, a path in the way that is a file): its reason, the
path and what to do.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from typing import Callable, NoReturn

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from ml_collections import config_flags

from milenas_tf.core.errors import UserInputError
# pylint: enable=g-import-not-at-top,wrong-import-position

# Where the configuration files are: `configs/` beside the package in a source tree,
# or where `setup.py` installs them (`<prefix>/share/milenas_tf/configs`).
_CONFIG_DIRS = (
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))), "configs"),
    os.path.join(sys.prefix, "share", "milenas_tf", "configs"),
)


def config_file(name: str) -> str:
  """The path of a configuration file of `configs/`, in a source tree or installed.

  Args:
    name: the file's name, e.g. "search_fashion_mnist.py".
  """
  for directory in _CONFIG_DIRS:
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  return os.path.join(_CONFIG_DIRS[0], name)


def check_no_arguments(argv: list[str]) -> None:
  """Rejects stray positional arguments."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")


def _fail(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _config_paths(argv: list[str]) -> list[str]:
  """The configuration files named by `--config=PATH` or `--config PATH`."""
  paths = []
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      paths.append(arg.split("=", 1)[1])
    elif arg == "--config" and i + 1 < len(argv):
      paths.append(argv[i + 1])
  return [p.split(":", 1)[0] for p in paths]  # config_flags allows "PATH:ARGUMENT"


def define_config_file(default: str | None, help_text: str):
  """`--config` (a configuration file) and its `--config.FIELD=VALUE` overrides.

  ml_collections reads the overrides of the command line when the flag is defined,
  so a missing file or an unknown field is reported here, in one line.

  Args:
    default: the default file's name in `configs/` (`config_file`), or None.
    help_text: the flag's help.

  Returns:
    The flag holder; its `.value` is the configuration.
  """
  for path in _config_paths(sys.argv):
    if not os.path.isfile(path):
      _fail(f"configuration file {path} does not exist; pass one of the files of "
            f"configs/, such as {config_file('search_cifar10.py')}.")
  try:
    return config_flags.DEFINE_config_file(
        "config", config_file(default) if default else None, help_text)
  except (AttributeError, KeyError) as e:  # an override of a field the config lacks
    field = str(e).strip("\"'")
    _fail(f"--config.{field}: the configuration has no field {field!r}; see "
          "docs/search.md or docs/training.md for the fields.")


def parse_flags(argv: list[str]) -> list[str]:
  """Parses the command line, ending with one line for a flag error."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f"{e}; see --helpfull for the flags.")


# What to do about an `OSError`, by errno; `_OS_ERROR_FIX` for the others.
_OS_ERROR_FIXES = {
    errno.ENOSPC: "free some space, or choose a directory on another disk, then rerun "
                  "(a run resumes from its last finished epoch)",
    errno.EDQUOT: "free some of your quota, or choose a directory on another disk, then "
                  "rerun (a run resumes from its last finished epoch)",
    errno.EROFS: "choose a path on a writable disk",
    errno.EACCES: "change its permissions, or choose a path you may write to",
    errno.EPERM: "change its permissions, or choose a path you may write to",
    errno.ENOTDIR: "a part of the path is a file, not a directory; choose another path",
    errno.EEXIST: "a file is in the way; choose another path or move the file",
    errno.EISDIR: "a directory is where a file should be; choose another path",
    errno.ENOENT: "check the path",
}
_OS_ERROR_FIX = "check the path, the disk and the permissions, then rerun"


def os_error_line(e: OSError) -> str:
  """An `OSError` as one line: "<reason>: <path>; <what to do>".

  Args:
    e: the error (its `strerror`, `filename` and `filename2` when set).
  """
  reason = e.strerror or (str(e).splitlines() or [type(e).__name__])[0]
  paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
  where = f": {' -> '.join(paths)}" if paths else ""
  return f"{reason}{where}; {_OS_ERROR_FIXES.get(e.errno, _OS_ERROR_FIX)}."


# Lines of a TensorFlow error message before its cause.
_NOT_THE_REASON = re.compile(r'^(Graph execution error:|Detected at node .*:$|File ")')


def _fail_on_tensorflow_error(e: Exception) -> None:
  """TensorFlow's own file and memory errors (writing a SavedModel or an event file to
  a full disk, running out of memory) and a lost worker as one line; any other error
  propagates."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # loaded by now
  lines = [line.strip() for line in (getattr(e, "message", "") or "").splitlines()]
  # A graph's error starts with headers and the stack where the failing op was made;
  # the cause is further down.
  lines = [line for line in lines if line and not _NOT_THE_REASON.match(line)]
  # A function's error starts with its node's name: "{{function_node ...}} reason".
  reason = re.sub(r"^\{\{[^}]*\}\}\s*", "", (lines or [type(e).__name__])[0])[:300]
  if isinstance(e, (tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError)):
    _fail(f"{reason}; free disk space or memory, or fix the permissions, then rerun "
          "(a run resumes from its last finished epoch).")
  if isinstance(e, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                    tf.errors.AbortedError, tf.errors.CancelledError)):
    _fail(f"a worker of the cluster stopped or does not answer ({type(e).__name__}: "
          f"{reason}); restart every worker with the same command to resume from the "
          "chief's last finished epoch.")
  raise e


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run`, printing bad input, disk and permission faults, and interruptions
  as one line."""

  def guarded(argv):
    try:
      main(argv)
    except UserInputError as e:
      _fail(str(e))
    except OSError as e:
      _fail(os_error_line(e))
    except Exception as e:  # pylint: disable=broad-except
      _fail_on_tensorflow_error(e)
    except KeyboardInterrupt:
      print("Interrupted; rerun the same command to resume from the last finished epoch.",
            file=sys.stderr)
      sys.exit(130)

  app.run(guarded, flags_parser=parse_flags)
