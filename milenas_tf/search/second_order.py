"""The pieces of the second-order alpha gradient: virtual step, Hessian-vector products.

MiLeNAS supplementary Section B (and DARTS Eq. 7-8) approximate w*(alpha) by one
virtual SGD step, w' = w - xi grad_w L_tr(w, alpha), and need the mixed second
derivative of the training loss along a vector v of the shape of w:

    H v = grad^2_{alpha, w} L_tr(w, alpha) v = grad_alpha <grad_w L_tr(w, alpha), v>.

Three ways to compute it:

- `finite_difference_hvp` (the papers'): central differences of grad_alpha L_tr at
  w+ = w + eps v and w- = w - eps v, eps = radius / ||v||; two passes, error O(eps^2).
- `exact_hvp`: the gradient of <grad_w L_tr, v> with respect to alpha by nested
  gradient tapes; one double-backward pass, exact to rounding.
- `segmented_exact_hvp`: the same product with the network cut in two, each
  part's double backward in turn: less memory, one more pass through the first part.

`HESSIANS` names the choices of the search step: "finite_difference" (one central
difference per vector, as the seed's formula for MiLeNAS-2nd, with its own eps for
each split), "finite_difference_combined" (H v is linear in v: one central
difference along the weighted sum of the vectors, two passes instead of four for
MiLeNAS-2nd, with eps taken from the sum's norm), "exact" (always along the sum)
and "exact_recompute" (the exact product, segmented after the cells before the first
reduction).

`VIRTUAL_STEPS` names what the virtual step (and so the vector v) covers, three
semantics found in the papers and their code:

- "sgd" (the default): the seed's formula (MiLeNAS supplementary B, DARTS Eq. 7),
  w' = w - xi grad_w L_tr(w, alpha); v = grad_w' L_s(w', alpha).
- "darts": DARTS's code (`architect._compute_unrolled_model`), w' = w - xi (grad_w
  L_tr + weight_decay w + momentum buf) with the w optimiser's momentum buffers;
  alpha is not among the stepped parameters.
- "reference_code": the official MiLeNAS code, whose alpha are `nn.Parameter`s of the
  model and so stepped with w: no momentum buffer exists for alpha, so none is used
  for any parameter; (w', alpha') = (w, alpha) - xi (grad L_tr + weight_decay (w,
  alpha)); v = grad_{(w', alpha')} L_s(w', alpha') has a part for alpha, which enters
  eps = radius / ||v|| and moves alpha by +/- eps v_alpha in the central difference.
  Finite differences only: the product then differentiates through alpha too.
- "optimizer" is the earlier name of "darts", kept for runs written with it.

The functions are pure over tensors and variables: the caller evaluates passes at
other weights by assigning them (`assign`) inside `preserved`, which puts every
variable back, bit for bit, when it exits.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import tensorflow as tf

HESSIANS = ("finite_difference", "finite_difference_combined", "exact", "exact_recompute")
# The products formed once along the weighted sum of the vectors.
COMBINED_HESSIANS = ("finite_difference_combined", "exact", "exact_recompute")
EXACT_HESSIANS = ("exact", "exact_recompute")
VIRTUAL_STEPS = ("sgd", "darts", "reference_code", "optimizer")
# Earlier names of a virtual step.
VIRTUAL_STEP_ALIASES = {"optimizer": "darts"}

Tensors = Sequence[tf.Tensor]


def virtual_step(weights: Tensors, grads: Tensors, xi: tf.Tensor, *,
                 weight_decay: float = 0.0, momentum: float = 0.0,
                 buffers: Sequence | None = None) -> list[tf.Tensor]:
  """One virtual SGD step, w' = w - xi (g + weight_decay w + momentum buf).

  With `weight_decay=0` and no buffers this is the papers' w - xi grad_w L_tr.
  With the w optimiser's coupled decay, momentum and momentum buffers (PyTorch's,
  `optimization.TorchSGD`) it is the step that optimiser would take next,
  unclipped (DARTS's `_compute_unrolled_model`).

  Args:
    weights: w, tensors or variables.
    grads: grad_w L_tr(w, alpha).
    xi: the step size (the current w learning rate).
    weight_decay: coupled L2 added to the gradient.
    momentum: the optimiser's momentum.
    buffers: the optimiser's momentum buffer per weight, or None (no momentum term).

  Returns:
    w', one tensor per weight.
  """
  weights = [tf.convert_to_tensor(w) for w in weights]
  # The scalars once per dtype, not once per weight: the step's graph stays small.
  scalars = {dtype: (tf.cast(-xi, dtype), tf.constant(weight_decay, dtype),
                     tf.constant(momentum, dtype))
             for dtype in {w.dtype for w in weights}}
  out = []
  for i, (w, g) in enumerate(zip(weights, grads)):
    neg_xi, decay, momentum_ = scalars[w.dtype]
    g = tf.cast(g, w.dtype)
    direction = g + decay * w if weight_decay else g
    if buffers and momentum:
      direction += momentum_ * tf.cast(buffers[i], w.dtype)
    out.append(w + neg_xi * direction)
  return out


def linear_combination(terms: Sequence[tuple[float, Tensors]]) -> list[tf.Tensor]:
  """sum_i c_i v_i, tensor by tensor, for terms (c_i, v_i); no product where c_i is 1."""
  scaled = [[t if c == 1 else c * t for t in v] for c, v in terms]
  return [tensors[0] if len(tensors) == 1 else tf.add_n(list(tensors))
          for tensors in zip(*scaled)]


def global_norm(tensors: Tensors) -> tf.Tensor:
  """sqrt(sum ||t||^2) over all tensors."""
  return tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(t)) for t in tensors]))


def finite_difference_hvp(alpha_grads_at: Callable[[Tensors], Tensors],
                          weights: Tensors, vector: Tensors,
                          radius: float = 0.01) -> list[tf.Tensor]:
  """H v by central differences (MiLeNAS supplementary B; DARTS Eq. 8).

      H v ~ (grad_alpha L_tr(w + eps v) - grad_alpha L_tr(w - eps v)) / (2 eps),
      eps = radius / ||v||.

  Args:
    alpha_grads_at: maps weight values to grad_alpha L_tr at those weights.
    weights: w (the points w +/- eps v are built from w, not from w').
    vector: v.
    radius: eps * ||v||, the length of the perturbation (0.01 in the papers).

  Returns:
    The approximate product, one tensor per alpha.
  """
  weights = [tf.convert_to_tensor(w) for w in weights]
  norm = global_norm(vector)
  # v = 0 gives a zero product; the guard keeps eps finite.
  eps = radius / tf.maximum(norm, tf.constant(1e-12, norm.dtype))
  steps = [tf.cast(eps, v.dtype) * v for v in vector]
  plus = alpha_grads_at([w + step for w, step in zip(weights, steps)])
  minus = alpha_grads_at([w - step for w, step in zip(weights, steps)])
  return [(p - m) / tf.cast(2.0 * eps, p.dtype) for p, m in zip(plus, minus)]


def exact_hvp(loss_fn: Callable[[], tf.Tensor], weights: Sequence, alphas: Sequence,
              vector: Tensors) -> list[tf.Tensor]:
  """H v = grad_alpha <grad_w L_tr(w, alpha), v> by nested gradient tapes.

  Args:
    loss_fn: computes L_tr from the current variables.
    weights: the variables w.
    alphas: the variables alpha.
    vector: v, one tensor per weight.

  Returns:
    The product, one tensor per alpha.
  """
  with tf.GradientTape(watch_accessed_variables=False) as outer:
    outer.watch(_tf_variables(alphas))
    with tf.GradientTape(watch_accessed_variables=False) as inner:
      inner.watch(_tf_variables(weights))
      loss = loss_fn()
    grads = inner.gradient(loss, weights)
  # grad_alpha <g, v> is the backward pass from g with v as g's output gradient: no
  # products and sums to build and differentiate, one pair per weight.
  targets, output_gradients = _connected(grads, vector)
  return outer.gradient(targets, alphas, output_gradients=output_gradients,
                        unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _connected(targets: Sequence, output_gradients: Sequence) -> tuple[list, list]:
  """The (target, output gradient) pairs of a backward pass, without the None targets
  (weights the loss does not reach) and with each gradient in its target's dtype."""
  pairs = [(t, tf.cast(g, t.dtype)) for t, g in zip(targets, output_gradients)
           if t is not None]
  return [t for t, _ in pairs], [g for _, g in pairs]


def segmented_exact_hvp(first: Callable[[tf.Tensor], Tensors],
                        second: Callable[[Tensors], tf.Tensor], inputs: tf.Tensor,
                        weights: tuple[Sequence, Sequence], alphas: Sequence,
                        vector: tuple[Tensors, Tensors]) -> list[tf.Tensor]:
  """`exact_hvp` of a network cut in two, holding one part's passes at a time.

  The loss is L = second(h; w2, alpha) of the boundary h = first(inputs; w1, alpha).
  With dh = grad_h L, grad_w1 L = J1^T dh (J1 = dh/dw1) and so

      <grad_w L, v> = <grad_w2 L, v2> + <dh, J1 v1>.

  The product is the sum of three backward passes, each through one part:

  1. hdot = J1 v1, the derivative of <J1^T u, v1> with respect to u (a backward
     pass through the first part's backward pass, linear in u);
  2. through the second part, from grad_w2 L (output gradient v2) and dh (hdot):
     its alpha gradient and hbar, the gradient with respect to h;
  3. through the first part, from J1^T dh (output gradient v1) and h (hbar).

  Each pass starts once the one before has ended (`run_after`), so the double
  backward of each part holds that part's activations and backward pass only
  (`exact_hvp` holds both parts' at once). The first part's forward pass runs
  twice.

  Args:
    first: computes the boundary tensors h from `inputs` and the variables.
    second: computes the loss from h and the variables.
    inputs: the input batch.
    weights: (w1, w2), the variables read by `first` and by `second`.
    alphas: the variables alpha (read by both).
    vector: (v1, v2), v split as the weights are.

  Returns:
    The product, one tensor per alpha.
  """
  (w1, w2), (v1, v2) = weights, vector
  w1, w2, alpha_vars = _tf_variables(w1), _tf_variables(w2), _tf_variables(alphas)
  num_alpha = len(alphas)

  # 1. hdot = J1 v1 (and h).
  with tf.GradientTape(watch_accessed_variables=False) as transpose:
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(w1)
      h = list(first(inputs))
    u = [tf.zeros_like(t) for t in h]
    transpose.watch(u)
    grads = tape.gradient(h, w1, output_gradients=u)
  targets, output_gradients = _connected(grads, v1)
  hdot = transpose.gradient(targets, u, output_gradients=output_gradients,
                            unconnected_gradients=tf.UnconnectedGradients.ZERO)
  h = [tf.stop_gradient(run_after(hdot, t)) for t in h]

  # 2. The second part: its alpha gradient, and hbar.
  with tf.GradientTape(watch_accessed_variables=False) as outer:
    outer.watch(alpha_vars + h)
    with tf.GradientTape(watch_accessed_variables=False) as inner:
      inner.watch(w2 + h)
      loss = second(h)
    grads = inner.gradient(loss, w2 + h)
  dh = [tf.stop_gradient(g) for g in grads[len(w2):]]
  targets, output_gradients = _connected(grads, list(v2) + hdot)
  grads = outer.gradient(targets, alpha_vars + h, output_gradients=output_gradients,
                         unconnected_gradients=tf.UnconnectedGradients.ZERO)
  second_part, hbar = grads[:num_alpha], grads[num_alpha:]

  # 3. The first part, from J1^T dh and h.
  with tf.GradientTape(watch_accessed_variables=False) as outer:
    outer.watch(alpha_vars)
    with tf.GradientTape(watch_accessed_variables=False) as inner:
      inner.watch(w1)
      h = list(first(run_after(second_part + hbar, inputs)))
    grads = inner.gradient(h, w1, output_gradients=dh)
  targets, output_gradients = _connected(list(grads) + h, list(v1) + hbar)
  first_part = outer.gradient(targets, alpha_vars, output_gradients=output_gradients,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
  return [a + b for a, b in zip(first_part, second_part)]


def run_after(tensors: Tensors, x: tf.Tensor) -> tf.Tensor:
  """`x`, available only once every tensor of `tensors` has been computed.

  In a graph, two computations that do not consume each other's results may
  overlap: the executor would run one's forward pass during the other's backward
  pass, and both passes' activations would be live at once. A control dependency
  on the previous results does not prevent it when those come from an inlined
  function call: it waits only for the function's stateful ops (batch norm's
  moving-statistics updates, done by the end of the forward pass). `IdentityN`
  consumes the results themselves, so what reads `x` starts after they exist.
  """
  tensors = [t for t in tensors if t is not None]
  if not tensors or tf.executing_eagerly():
    return x
  done = tf.raw_ops.IdentityN(input=tensors)
  with tf.control_dependencies([done[0].op]):
    return tf.identity(x)


def _tf_variables(variables: Sequence) -> list:
  # Keras variables wrap a tf.Variable, which is what a tape can watch.
  return [getattr(v, "value", v) for v in variables]


def assign(variables: Sequence, values: Tensors) -> None:
  """Assigns each value to its variable."""
  for variable, value in zip(variables, values):
    variable.assign(tf.cast(value, variable.dtype))


@contextlib.contextmanager
def preserved(variables: Sequence) -> Iterator[list[tf.Tensor]]:
  """Snapshots `variables`; on exit assigns the snapshot back (bit-exact).

  Yields:
    The snapshot, one tensor per variable.
  """
  snapshot = [tf.convert_to_tensor(v) for v in variables]
  try:
    yield snapshot
  finally:
    assign(variables, snapshot)
