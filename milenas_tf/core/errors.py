"""Errors raised for bad user input."""


class UserInputError(ValueError):
  """Bad input from the user: a one-line message naming the problem and the fix."""


class DivergenceError(UserInputError):
  """A run whose loss or weights became NaN or infinite: its settings (most often the
  learning rate) do not fit the problem. A `UserInputError`, so the scripts print it
  in one line: the epoch and step where it happened, and what to lower."""
