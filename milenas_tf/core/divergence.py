"""The divergence guard: a run stops at its first NaN or infinite loss or weight.

A diverged run otherwise goes on to the end producing nothing but NaN, and writes
its NaN weights as the checkpoint (which a rerun would resume) and, in training,
possibly as the best weights. `DivergenceGuard` stops `fit` with a one-line
`DivergenceError` instead:

- after every `check_every`-th training step, if the logged loss (the epoch's running
  mean, which Keras has already computed for the other callbacks) is not finite;
- at the end of every epoch, before any callback that writes files, if a weight of
  the model (trainable or not: batch-norm statistics too) is not finite, which
  catches an update that broke the weights at the epoch's last step.

`first_non_finite` and `check_finite` are the same test for weights loaded from a
file (the export refuses non-finite weights).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import keras
import tensorflow as tf

from milenas_tf.core.errors import DivergenceError
from milenas_tf.core.errors import UserInputError

# The configuration fields whose lowering most often cures a divergence, in the order
# the advice names them (the search has both, training the first).
LEARNING_RATE_FIELDS = ("learning_rate", "arch_learning_rate")


def first_non_finite(variables: Sequence[Any]) -> str | None:
  """The name (path) of the first floating-point variable holding a NaN or an infinity.

  One reduction per variable and one transfer to the host for all of them.

  Args:
    variables: Keras or TensorFlow variables (integer ones are skipped).

  Returns:
    The variable's path (its name for a TensorFlow variable), or None if all are finite.
  """
  floats = [v for v in variables if tf.as_dtype(v.dtype).is_floating]
  if not floats:
    return None
  finite = tf.stack([tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(v)))
                     for v in floats]).numpy()
  for variable, ok in zip(floats, finite):
    if not ok:
      return getattr(variable, "path", None) or variable.name
  return None


def check_finite(variables: Sequence[Any], source: str, fix: str) -> None:
  """Raises a one-line `UserInputError` if a variable holds a NaN or an infinity.

  Args:
    variables: the variables to check.
    source: where they come from, e.g. a weights file's path.
    fix: what to do instead, the message's end.

  Raises:
    UserInputError: "{source} holds non-finite weights (NaN or inf in {name}); {fix}".
  """
  name = first_non_finite(variables)
  if name is not None:
    raise UserInputError(f"{source} holds non-finite weights (NaN or inf in {name}); {fix}")


def advice_for(config: Mapping[str, Any]) -> str:
  """What to try after a divergence, naming the configuration's learning rates.

  Args:
    config: the run's configuration (a dict or ConfigDict).

  Returns:
    E.g. "rerun in another --output_dir with a lower --config.learning_rate (now 1.0)".
  """
  rates = [f"--config.{field} (now {config[field]!r})" for field in LEARNING_RATE_FIELDS
           if field in config]
  lower = " or a lower ".join(rates) if rates else "--config.learning_rate"
  # The other settings make the directory hold another configuration, so a rerun
  # needs a new directory (or the diverged one removed).
  return f"rerun in another --output_dir with a lower {lower}"


class DivergenceGuard(keras.callbacks.Callback):
  """Stops `fit` with a `DivergenceError` at the first non-finite loss or weight.

  Put it before every callback that writes the model at epoch end (the checkpoint,
  the best weights): Keras calls callbacks in order, so non-finite weights are never
  written.

  Args:
    kind: what the run is called in the message ("search", "training").
    advice: what to try, the message's end (`advice_for` the run's configuration);
      by default, a lower --config.learning_rate.
    check_every: check the loss after every this many training steps (1: all).
  """

  def __init__(self, kind: str = "run", advice: str | None = None, check_every: int = 1):
    super().__init__()
    if check_every < 1:
      raise ValueError(f"check_every must be a positive integer, got {check_every}.")
    self.kind, self.check_every = kind, check_every
    self.advice = advice or advice_for({})
    self._epoch = 0

  def _fail(self, what: str, where: str) -> None:
    raise DivergenceError(f"The {self.kind} diverged: {what} {where}, so nothing of that "
                          f"epoch was saved; {self.advice}.")

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    if (batch + 1) % self.check_every:
      return
    loss = _as_float((logs or {}).get("loss"))
    if loss is not None and not math.isfinite(loss):
      self._fail(f"the training loss is {loss}", f"at epoch {self._epoch + 1}, step {batch + 1}")

  def on_epoch_end(self, epoch, logs=None):
    where = f"at the end of epoch {epoch + 1}"
    loss = _as_float((logs or {}).get("loss"))
    if loss is not None and not math.isfinite(loss):
      self._fail(f"the training loss is {loss}", where)
    name = first_non_finite(self.model.weights)
    if name is not None:
      self._fail(f"weight {name} holds NaN or inf", where)


def _as_float(value: Any) -> float | None:
  """A logged value as a float, or None if it is missing or not a number."""
  try:
    return None if value is None else float(value)
  except (TypeError, ValueError):
    return None
