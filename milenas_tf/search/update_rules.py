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

Gumbel-softmax (GDAS; Dong & Yang, CVPR 2019): the network samples one op per
edge, h = one_hot(argmax y) + y - stop_gradient(y), y = softmax((log_softmax(alpha)
+ g) / tau), and each pass computes only the sampled ops (`gumbel`); the gradients
are straight-through estimates through h, with fresh noise in every pass:

- `gdas`: grad_alpha L_val(w, alpha; h) (GDAS: bi-level, first order).
- `milenas_gdas`: lambda_val * grad_alpha L_val(w, alpha; h)
  + lambda_train * grad_alpha L_tr(w, alpha; h') (mixed level through the sampled path).

Second order (MiLeNAS supplementary B; DARTS Eq. 7): with the virtual weights
w' = w - xi grad_w L_tr(w, alpha) and, for a split s, v_s = grad_w' L_s(w', alpha),

    G_s = grad_alpha L_s(w', alpha) - xi grad^2_{alpha,w} L_tr(w, alpha) v_s.

- `darts_2nd`: G_val.
- `milenas_2nd`: lambda_val * G_val + lambda_train * G_tr.

With xi = 0 they are `darts_1st` and `milenas`.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import tensorflow as tf

from milenas_tf.core import validation
from milenas_tf.core.errors import UserInputError

Gradients = Sequence[tf.Tensor]


class GradientPasses(Protocol):
  """Lazily computed alpha gradients at the current (w, alpha)."""

  def val_alpha_grads(self) -> Gradients:
    """grad_alpha L_val(w, alpha) on the step's search-val batch."""

  def train_alpha_grads(self) -> Gradients:
    """grad_alpha L_tr(w, alpha) on the step's search-train batch."""


class SecondOrderPasses(GradientPasses, Protocol):
  """Adds the virtual step and the mixed Hessian-vector products."""

  xi: tf.Tensor
  """The virtual step size: the current w learning rate."""

  def unrolled_grads(self, split: str) -> tuple[Gradients, Gradients]:
    """(grad_alpha L_s(w', alpha), grad_w' L_s(w', alpha)) for split "train" or "val"."""

  def hessian_vector_products(self, terms: Sequence[tuple[float, Gradients]]) -> Gradients:
    """sum_i c_i grad^2_{alpha,w} L_tr(w, alpha) v_i for terms (c_i, v_i), at w."""


def milenas(passes: GradientPasses, lambda_train: float = 1.0,
            lambda_val: float = 1.0) -> list[tf.Tensor]:
  """Mixed-level gradient (MiLeNAS Eq. 7, first order).

  The train pass runs before the val pass, as in the reference code: the batch-norm
  running statistics that the passes update then come out the same.
  """
  train = passes.train_alpha_grads()
  val = passes.val_alpha_grads()
  return [lambda_val * gv + lambda_train * gt for gv, gt in zip(val, train)]


def darts_1st(passes: GradientPasses, **unused) -> list[tf.Tensor]:
  """Bi-level, first-order approximation (DARTS Eq. 6 with xi = 0)."""
  return list(passes.val_alpha_grads())


def single_level(passes: GradientPasses, **unused) -> list[tf.Tensor]:
  """Single-level optimisation: alpha follows the training loss."""
  return list(passes.train_alpha_grads())


def gdas(passes: GradientPasses, **unused) -> list[tf.Tensor]:
  """GDAS: grad_alpha L_val through the sampled path (the network samples; see `gumbel`)."""
  return darts_1st(passes)


def milenas_gdas(passes: GradientPasses, lambda_train: float = 1.0,
                 lambda_val: float = 1.0) -> list[tf.Tensor]:
  """Mixed level through the sampled path: `milenas` on a Gumbel-sampling network."""
  return milenas(passes, lambda_train=lambda_train, lambda_val=lambda_val)


def _unrolled(passes: SecondOrderPasses, coefficients: dict[str, float]
              ) -> list[tf.Tensor]:
  """sum_s c_s G_s over the splits s with a non-zero coefficient c_s."""
  if not any(coefficients.values()):
    raise UserInputError("lambda_val and lambda_train are both 0: the alpha gradient would "
                         "be zero; set at least one of them.")
  unrolled = {s: passes.unrolled_grads(s) for s, c in coefficients.items() if c}
  direct = [tf.add_n([coefficients[s] * g[0][i] for s, g in unrolled.items()])
            for i in range(len(next(iter(unrolled.values()))[0]))]
  implicit = passes.hessian_vector_products(
      [(coefficients[s], g[1]) for s, g in unrolled.items()])
  return [d - tf.cast(passes.xi, d.dtype) * h for d, h in zip(direct, implicit)]


def darts_2nd(passes: SecondOrderPasses, **unused) -> list[tf.Tensor]:
  """Bi-level, second order (DARTS Eq. 7-8): G_val."""
  return _unrolled(passes, {"val": 1.0})


def milenas_2nd(passes: SecondOrderPasses, lambda_train: float = 1.0,
                lambda_val: float = 1.0) -> list[tf.Tensor]:
  """Mixed-level, second order (MiLeNAS supplementary B): lambda_val G_val + lambda_train G_tr."""
  return _unrolled(passes, {"val": lambda_val, "train": lambda_train})


RULES: dict[str, Callable[..., list[tf.Tensor]]] = {
    "milenas": milenas,
    "darts_1st": darts_1st,
    "single_level": single_level,
    "milenas_2nd": milenas_2nd,
    "darts_2nd": darts_2nd,
    "gdas": gdas,
    "milenas_gdas": milenas_gdas,
}
METHODS = tuple(RULES)
SECOND_ORDER_METHODS = ("milenas_2nd", "darts_2nd")
# Methods on a network that samples one op per edge (`SearchNetwork(mixed_op="gumbel")`).
GUMBEL_METHODS = ("gdas", "milenas_gdas")
ORDERS = ("reference", "fused")


def get_rule(method: str) -> Callable[..., list[tf.Tensor]]:
  """The rule of a method name.

  Raises:
    UserInputError: for an unknown method.
  """
  return RULES[validation.check_choice("search method", method, METHODS)]
