"""Errors raised for bad user input."""


class UserInputError(ValueError):
  """Bad input from the user: a one-line message naming the problem and the fix."""
