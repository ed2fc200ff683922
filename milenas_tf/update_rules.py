"""Architecture (alpha) update rules: one small function per search method.

Every rule maps gradient passes to the gradient of alpha; the search step
(`search_model.SearchModel.train_step`) computes the passes a rule asks for, adds
coupled weight decay, and applies the alpha optimiser. Notation (MiLeNAS, Eq. 6-7):
L_tr and L_val are the cross-entropy losses on a search-train and a search-val batch.

- `milenas`: lambda_val * grad_alpha L_val(w, alpha) + lambda_train * grad_alpha L_tr(w, alpha).
  The paper's Eq. 6 weighs the val term (lambda_val; L_tr + lambda L_val); the
  reference code weighs the train term (lambda_train). Both are 1 by default.
- `darts_1st`: grad_alpha L_val(w, alpha) (DARTS first order).
- `single_level`: grad_alpha L_tr(w, alpha) (train and val data play the same role).
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import tensorflow as tf

from milenas_tf.errors import UserInputError

Gradients = Sequence[tf.Tensor]


class GradientPasses(Protocol):
  """Lazily computed alpha gradients at the current (w, alpha)."""

  def val_alpha_grads(self) -> Gradients:
    """grad_alpha L_val(w, alpha) on the step's search-val batch."""

  def train_alpha_grads(self) -> Gradients:
    """grad_alpha L_tr(w, alpha) on the step's search-train batch."""


def milenas(passes: GradientPasses, lambda_train: float = 1.0,
            lambda_val: float = 1.0) -> list[tf.Tensor]:
  """Mixed-level gradient (MiLeNAS Eq. 7, first order)."""
  return [lambda_val * gv + lambda_train * gt
          for gv, gt in zip(passes.val_alpha_grads(), passes.train_alpha_grads())]


def darts_1st(passes: GradientPasses, **unused) -> list[tf.Tensor]:
  """Bi-level, first-order approximation (DARTS Eq. 6 with xi = 0)."""
  return list(passes.val_alpha_grads())


def single_level(passes: GradientPasses, **unused) -> list[tf.Tensor]:
  """Single-level optimisation: alpha follows the training loss."""
  return list(passes.train_alpha_grads())


RULES: dict[str, Callable[..., list[tf.Tensor]]] = {
    "milenas": milenas,
    "darts_1st": darts_1st,
    "single_level": single_level,
}
METHODS = tuple(RULES)
ORDERS = ("reference", "fused")


def get_rule(method: str) -> Callable[..., list[tf.Tensor]]:
  """The rule of a method name.

  Raises:
    UserInputError: for an unknown method.
  """
  try:
    return RULES[method]
  except KeyError:
    raise UserInputError(
        f"Unknown search method {method!r}; choose one of {', '.join(METHODS)}.") from None


def check_order(order: str) -> str:
  """Validates an update order name.

  Raises:
    UserInputError: for an unknown order.
  """
  if order not in ORDERS:
    raise UserInputError(
        f"Unknown update order {order!r}; choose one of {', '.join(ORDERS)}.")
  return order
