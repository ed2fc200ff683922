"""Checks of user input, each raising a one-line `UserInputError` that names the fix.

Every configuration is checked as a whole before any work starts (the `validate`
functions of `search.config` and `train.config`), through these helpers; scripts,
benchmarks and library functions that take user values call the same ones.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable, Mapping, Sequence, TypeVar

from milenas_tf.core.errors import UserInputError

T = TypeVar("T")


def check_choice(what: str, value: T, choices: Iterable[Any]) -> T:
  """Returns `value` if it is one of `choices`.

  Raises:
    UserInputError: "Unknown {what} {value!r}; choose one of ...".
  """
  choices = tuple(choices)
  if value not in choices:
    raise UserInputError(f"Unknown {what} {value!r}; choose one of "
                         f"{', '.join(str(c) for c in choices)}.")
  return value


def check_int(what: str, value: Any, minimum: int = 1, allow_none: bool = False) -> Any:
  """Returns `value` if it is an integer >= `minimum` (or None, if allowed).

  Raises:
    UserInputError: "{what} must be a positive integer, got ...".
  """
  if value is None and allow_none:
    return value
  if not _is_int(value) or value < minimum:
    kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise UserInputError(f"{what} must be {kind}, got {value!r}.")
  return value


def check_number(what: str, value: Any, minimum: float | None = None,
                 maximum: float | None = None, *, exclude_minimum: bool = False,
                 exclude_maximum: bool = False) -> float:
  """Returns `value` as a float if it is a real number in the given range.

  Args:
    what: the value's name in the message, e.g. "config.learning_rate".
    value: the value.
    minimum: the lower bound, if any.
    maximum: the upper bound, if any.
    exclude_minimum: the lower bound itself is out of range.
    exclude_maximum: the upper bound itself is out of range.

  Raises:
    UserInputError: "{what} must be in [a, b), got ...".
  """
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or value != value):  # NaN
    raise UserInputError(f"{what} must be a number, got {value!r}.")
  low_ok = minimum is None or (value > minimum if exclude_minimum else value >= minimum)
  high_ok = maximum is None or (value < maximum if exclude_maximum else value <= maximum)
  if not (low_ok and high_ok):
    bounds = _range(minimum, maximum, exclude_minimum, exclude_maximum)
    raise UserInputError(f"{what} must be {bounds}, got {value!r}.")
  return float(value)


def check_fields(config: Mapping[str, Any], defaults: Mapping[str, Any], what: str,
                 optional: Mapping[str, Mapping[str, Any]] | None = None,
                 prefix: str = "config.") -> None:
  """Checks that `config` has only the fields of `defaults`, each of their type.

  Integers are accepted where the default is a float; a nested dict is checked
  against the nested defaults.

  Args:
    config: the configuration, as a mapping.
    defaults: the default configuration: its fields and their types.
    what: the kind of configuration, for messages ("search", "training").
    optional: nested sections that may be absent, with their defaults (e.g. the
      ImageNet options of a training configuration).
    prefix: the fields' prefix in messages.

  Raises:
    UserInputError: for an unknown field or a value of another type.
  """
  sections = dict(optional or {})
  known = set(defaults) | set(sections)
  for key, value in config.items():
    name = f"{prefix}{key}"
    if key not in known:
      raise UserInputError(
          f"{name} is not a field of the {what} configuration; remove it or use one of "
          f"{', '.join(sorted(known))}.")
    default = defaults[key] if key in defaults else sections[key]
    if isinstance(default, Mapping):
      if not isinstance(value, Mapping):
        raise UserInputError(f"{name} must be a group of fields, got {value!r}.")
      check_fields(value, default, what, prefix=f"{name}.")
    elif not _same_type(value, default):
      raise UserInputError(f"{name} must be {_type_name(default)}, got {value!r}.")


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _same_type(value: Any, default: Any) -> bool:
  if isinstance(default, bool):
    return isinstance(value, bool)
  if _is_int(default):
    return _is_int(value)
  if isinstance(default, numbers.Real):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
  if isinstance(default, str):
    return isinstance(value, str)
  if isinstance(default, Sequence):
    return isinstance(value, Sequence) and not isinstance(value, str)
  return default is None or isinstance(value, type(default))


def _type_name(default: Any) -> str:
  if isinstance(default, bool):
    return "true or false"
  if _is_int(default):
    return "an integer"
  if isinstance(default, numbers.Real):
    return "a number"
  if isinstance(default, str):
    return "a string"
  return f"a {type(default).__name__}"


def _range(minimum, maximum, exclude_minimum, exclude_maximum) -> str:
  if maximum is None:
    return f"{'>' if exclude_minimum else '>='} {minimum:g}"
  if minimum is None:
    return f"{'<' if exclude_maximum else '<='} {maximum:g}"
  return (f"in {'(' if exclude_minimum else '['}{minimum:g}, "
          f"{maximum:g}{')' if exclude_maximum else ']'}")


def check_run_options(config: Mapping[str, Any]) -> None:
  """Checks the fields every run has: epochs, batch size, seed and how it runs.

  Touches no device: the strategy is created later, and some strategies must be
  created before TensorFlow's context starts.

  Raises:
    UserInputError: for the first bad field.
  """
  # Imported here: both modules check their own settings with this module's helpers.
  from milenas_tf.core import distribution  # pylint: disable=g-import-not-at-top
  from milenas_tf.core import graph_options  # pylint: disable=g-import-not-at-top
  check_int("config.epochs", config["epochs"])
  check_int("config.batch_size", config["batch_size"])
  check_int("config.seed", config["seed"], minimum=0)
  distribution.check_spec(config["distribution"])
  check_number("config.worker_timeout_s", config["worker_timeout_s"], minimum=0)
  check_choice("remapping setting", config["remapping"], graph_options.REMAPPING)
  check_choice("graph_optimizer setting", config["graph_optimizer"],
               graph_options.GRAPH_OPTIMIZER)
