"""Second-order search: virtual step, Hessian-vector products and the 2nd-order rules.

The gradient checks run a tiny search network in float64, eagerly, against
independent computations: Keras's `stateless_call` evaluates the network at
arbitrary weights, so the virtual step can be differentiated through directly.
"""

import numpy as np
import pytest
import tensorflow as tf

from milenas_tf.core import optimization
from milenas_tf.core.errors import UserInputError
from milenas_tf.search import model as search_model
from milenas_tf.search import second_order
from milenas_tf.search import update_rules
from milenas_tf.search.model import _Passes
from milenas_tf.search.model import cross_entropy
from milenas_tf.search.model import network_exact_hvp

SHAPE = (8, 8, 1)
BATCH = 4
XI = 0.5  # a large virtual step, so that the implicit term weighs


def tiny_model(method="milenas_2nd", xi=XI, **kwargs):
  tf.keras.utils.set_random_seed(0)
  model = search_model.build_search_model(
      num_classes=3, input_shape=SHAPE, init_channels=4, num_cells=3, method=method,
      epochs=4, steps_per_epoch=10, learning_rate=xi, learning_rate_min=xi, **kwargs)
  rng = np.random.default_rng(1)
  for v in model.network.arch_variables:
    v.assign(rng.normal(size=v.shape))
  return model


def batches(dtype=tf.float64):
  rng = np.random.default_rng(7)
  make = lambda: (tf.constant(rng.normal(size=(BATCH,) + SHAPE), dtype),
                  tf.constant(rng.integers(0, 3, BATCH), tf.int32))
  return make(), make()


def random_like(variables, seed=3):
  rng = np.random.default_rng(seed)
  return [tf.constant(rng.normal(size=v.shape), v.dtype) for v in variables]


class Stateless:
  """The tiny network's loss as a function of (w, alpha) tensors."""

  def __init__(self, network):
    self.network = network
    position = {id(v): i for i, v in enumerate(network.trainable_variables)}
    self.w_at = [position[id(v)] for v in network.weight_variables]
    self.alpha_at = [position[id(v)] for v in network.arch_variables]
    self.non_trainable = [tf.identity(v.value) for v in network.non_trainable_variables]

  def loss(self, w, alphas, batch):
    values = [None] * len(self.network.trainable_variables)
    for i, t in zip(self.w_at, w):
      values[i] = t
    for i, t in zip(self.alpha_at, alphas):
      values[i] = t
    logits, _ = self.network.stateless_call(values, self.non_trainable, batch[0],
                                            training=True)
    return cross_entropy(batch[1], logits)

  def alpha_grads(self, w, alphas, batch):
    with tf.GradientTape() as tape:
      tape.watch(alphas)
      loss = self.loss(w, alphas, batch)
    return tape.gradient(loss, alphas)


def values(variables):
  return [tf.identity(v.value) for v in variables]


def assert_close(got, want, rtol, atol=0.0):
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


def relative_error(got, want):
  diff = np.sqrt(sum(np.sum((np.asarray(g) - np.asarray(w)) ** 2) for g, w in zip(got, want)))
  return diff / np.sqrt(sum(np.sum(np.asarray(w) ** 2) for w in want))


# Pure functions.


def test_linear_combination_matches_numpy():
  rng = np.random.default_rng(5)
  u, v = ([tf.constant(rng.normal(size=(2, 3))), tf.constant(rng.normal(size=(4,)))]
          for _ in range(2))
  got = second_order.linear_combination([(1.0, u), (-0.3, v)])
  for g, a, b in zip(got, u, v):
    np.testing.assert_allclose(g.numpy(), a.numpy() - 0.3 * b.numpy(), rtol=1e-12)
  alone = second_order.linear_combination([(2.0, u)])
  np.testing.assert_allclose(alone[1].numpy(), 2.0 * u[1].numpy(), rtol=1e-12)
  assert second_order.linear_combination([(1.0, u)])[0] is u[0]


def test_finite_difference_hvp_error_is_the_central_difference_term():
  """f = sum(alpha * w^3): exact H v = 3 w^2 v; central differences add eps^2 v^3."""
  w = [tf.constant([0.5, -1.0, 2.0], tf.float64)]
  v = [tf.constant([1.0, 2.0, -2.0], tf.float64)]
  radius = 0.3
  got = second_order.finite_difference_hvp(lambda at: [at[0] ** 3], w, v, radius)
  eps = radius / np.linalg.norm(v[0].numpy())
  want = 3 * w[0].numpy() ** 2 * v[0].numpy() + eps ** 2 * v[0].numpy() ** 3
  np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-12)


def test_finite_difference_hvp_of_a_zero_vector_is_zero():
  w, v = [tf.constant([1.0, 2.0])], [tf.zeros(2)]
  got = second_order.finite_difference_hvp(lambda at: [at[0] ** 2], w, v)
  np.testing.assert_array_equal(got[0].numpy(), [0.0, 0.0])


def test_preserved_restores_variables_bit_exactly():
  v = tf.Variable([0.1, 0.7, 1e-8], dtype=tf.float32)
  before = v.numpy().copy()

  @tf.function
  def perturb_and_restore():
    with second_order.preserved([v]) as (snapshot,):
      v.assign_add([1e3, -1e3, 1.0])
      v.assign(v * 3.0 + snapshot)
    return v.read_value()

  np.testing.assert_array_equal(perturb_and_restore().numpy(), before)


class FakePasses:
  """Second-order passes with a linear 'Hessian' M (alpha = 2 values, w = 3)."""

  xi = tf.constant(0.25)
  M = tf.constant([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])

  def __init__(self):
    self.splits, self.terms = [], None

  def unrolled_grads(self, split):
    self.splits.append(split)
    g_alpha = tf.constant([1.0, 2.0]) if split == "val" else tf.constant([-3.0, 0.5])
    v = tf.constant([1.0, 0.0, 2.0]) if split == "val" else tf.constant([0.0, 4.0, 1.0])
    return [g_alpha], [v]

  def hessian_vector_products(self, terms):
    self.terms = terms
    return [tf.add_n([c * tf.linalg.matvec(self.M, v[0]) for c, v in terms])]


def test_second_order_rules_compose_direct_and_implicit_terms():
  passes = FakePasses()
  got = update_rules.milenas_2nd(passes, lambda_train=0.5, lambda_val=2.0)[0].numpy()
  m, xi = FakePasses.M.numpy(), 0.25
  g_val = np.array([1.0, 2.0]) - xi * m @ np.array([1.0, 0.0, 2.0])
  g_tr = np.array([-3.0, 0.5]) - xi * m @ np.array([0.0, 4.0, 1.0])
  np.testing.assert_allclose(got, 2.0 * g_val + 0.5 * g_tr, rtol=1e-6)
  assert [c for c, _ in passes.terms] == [2.0, 0.5]

  passes = FakePasses()
  got = update_rules.darts_2nd(passes)[0].numpy()
  np.testing.assert_allclose(got, g_val, rtol=1e-6)
  assert passes.splits == ["val"]  # no train pass at w' for DARTS
  with pytest.raises(UserInputError, match="lambda_val and lambda_train are both 0"):
    update_rules.milenas_2nd(FakePasses(), lambda_train=0.0, lambda_val=0.0)


# The tiny network, float64.


@pytest.mark.parametrize("hessian", second_order.EXACT_HESSIANS)
def test_exact_hvp_equals_a_float64_finite_difference(float64, hessian):
  model = tiny_model(hessian=hessian)
  net = model.network
  assert {v.dtype for v in net.variables} == {"float64"}
  train, _ = batches()
  v = random_like(net.weight_variables)
  got = model.hessian_vector_product(*train, v)

  stateless = Stateless(net)
  w, alphas = values(net.weight_variables), values(net.arch_variables)
  h = 1e-5 / np.sqrt(sum(np.sum(t.numpy() ** 2) for t in v))
  plus = stateless.alpha_grads([a + h * b for a, b in zip(w, v)], alphas, train)
  minus = stateless.alpha_grads([a - h * b for a, b in zip(w, v)], alphas, train)
  want = [(p - m) / (2 * h) for p, m in zip(plus, minus)]
  assert relative_error(got, want) < 1e-8
  assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cells", [1, 2])
def test_segmented_exact_hvp_equals_the_unsegmented_one(float64, cells):
  """Cut after cell 0 (a normal cell) or after cell 1 (the first reduction)."""
  net = tiny_model().network
  (x, y), _ = batches()
  v = random_like(net.weight_variables)
  weights = net.segment_weights(cells)
  assert len(weights[0]) + len(weights[1]) == len(net.weight_variables)
  assert_close(network_exact_hvp(net, x, y, v, cut=cells), network_exact_hvp(net, x, y, v),
               rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("hessian", second_order.EXACT_HESSIANS)
@pytest.mark.parametrize("method,coefficients", [
    ("darts_2nd", {"val": 1.0}), ("milenas_2nd", {"val": 1.3, "train": 0.6})])
def test_exact_second_order_gradient_differentiates_through_the_virtual_step(
    float64, method, coefficients, hessian):
  model = tiny_model(method, hessian=hessian, virtual_step="sgd", lambda_val=1.3,
                     lambda_train=0.6)
  net = model.network
  train, val = batches()
  got = model.arch_gradients(_Passes(model, train, val))

  stateless = Stateless(net)
  w, alphas = values(net.weight_variables), values(net.arch_variables)
  with tf.GradientTape() as outer:
    outer.watch(alphas)
    with tf.GradientTape() as inner:
      inner.watch(w)
      train_loss = stateless.loss(w, alphas, train)
    w_virtual = [a - XI * g for a, g in zip(w, inner.gradient(train_loss, w))]
    objective = sum(c * stateless.loss(w_virtual, alphas, val if s == "val" else train)
                    for s, c in coefficients.items())
  want = outer.gradient(objective, alphas)
  assert_close(got, want, rtol=1e-8, atol=1e-12)
  # The implicit term matters: the first-order gradient at w' alone is far off.
  direct = [tf.zeros_like(a) for a in alphas]
  for s, c in coefficients.items():
    grads = stateless.alpha_grads(w_virtual, alphas, val if s == "val" else train)
    direct = [d + c * g for d, g in zip(direct, grads)]
  assert relative_error(direct, want) > 1e-2


def count_passes(model):
  """Records the `wrt` of every gradient pass the model runs, in order."""
  calls, gradient_pass = [], model.gradient_pass
  model.gradient_pass = lambda wrt, x, y: calls.append(wrt) or gradient_pass(wrt, x, y)
  return calls


@pytest.mark.parametrize("method,hessian,passes", [
    ("darts_2nd", "finite_difference", ["weights", "all"] + ["alpha"] * 2),
    ("milenas_2nd", "finite_difference", ["weights", "all", "all"] + ["alpha"] * 4),
    ("milenas_2nd", "finite_difference_combined", ["weights", "all", "all"] + ["alpha"] * 2)])
def test_finite_differences_agree_with_exact(float64, method, hessian, passes):
  """Central differences approach the exact product: truncation O(eps^2), rounding O(u/eps).

  The radius is below the scale at which perturbations of this tiny ReLU network
  cross kinks (ReLU, max pooling); across a kink the difference quotient measures
  a jump of the gradient rather than a second derivative (see docs/search_methods.md).
  """
  train, val = batches()
  model = tiny_model(method, hessian="exact")
  exact = model.arch_gradients(_Passes(model, train, val))
  model = tiny_model(method, hessian=hessian)
  model.finite_difference_radius = 1e-6
  calls = count_passes(model)
  got = model.arch_gradients(_Passes(model, train, val))
  assert calls == passes
  assert relative_error(got, exact) < 1e-6


def test_combined_finite_difference_is_one_central_difference_along_the_weighted_sum(
    float64):
  """u = sum_s c_s v_s, eps = radius / ||u||, built here from the network's loss as a
  function of (w, alpha)."""
  coefficients = {"val": 1.3, "train": 0.6}
  model = tiny_model("milenas_2nd", hessian="finite_difference_combined",
                     virtual_step="sgd", lambda_val=coefficients["val"],
                     lambda_train=coefficients["train"])
  train, val = batches()
  got = model.arch_gradients(_Passes(model, train, val))

  net = model.network
  stateless = Stateless(net)
  w, alphas = values(net.weight_variables), values(net.arch_variables)
  with tf.GradientTape() as tape:
    tape.watch(w)
    train_loss = stateless.loss(w, alphas, train)
  w_virtual = [a - XI * g for a, g in zip(w, tape.gradient(train_loss, w))]
  direct = [tf.zeros_like(a) for a in alphas]
  u = [tf.zeros_like(t) for t in w]
  for split, c in coefficients.items():
    with tf.GradientTape() as tape:
      tape.watch(alphas + w_virtual)
      loss = stateless.loss(w_virtual, alphas, val if split == "val" else train)
    grads = tape.gradient(loss, alphas + w_virtual)
    direct = [d + c * g for d, g in zip(direct, grads[:len(alphas)])]
    u = [a + c * g for a, g in zip(u, grads[len(alphas):])]
  eps = 0.01 / np.sqrt(sum(np.sum(t.numpy() ** 2) for t in u))
  plus = stateless.alpha_grads([a + eps * b for a, b in zip(w, u)], alphas, train)
  minus = stateless.alpha_grads([a - eps * b for a, b in zip(w, u)], alphas, train)
  want = [d - XI * (p - m) / (2 * eps) for d, p, m in zip(direct, plus, minus)]
  assert_close(got, want, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("second,first,hessian", [
    ("milenas_2nd", "milenas", "finite_difference"), ("darts_2nd", "darts_1st", "exact")])
def test_zero_virtual_step_reduces_to_first_order(float64, second, first, hessian):
  train, val = batches()
  model = tiny_model(second, xi=0.0, hessian=hessian, lambda_train=0.7)
  got = model.arch_gradients(_Passes(model, train, val))
  model = tiny_model(first, xi=0.0, lambda_train=0.7)
  want = model.arch_gradients(_Passes(model, train, val))
  assert_close(got, want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("virtual_step", ["darts", "optimizer"])  # "optimizer": its old name
def test_darts_virtual_step_is_the_next_unclipped_optimizer_step(float64, virtual_step):
  model = tiny_model("milenas_2nd", grad_clip=None, virtual_step=virtual_step)
  assert model.virtual_step == "darts"
  train, val = batches()
  model.train_step((train, val))  # non-zero momentum buffers
  weights = model.network.weight_variables
  assert any(np.any(m.numpy()) for m in model.optimizer.momentum_buffers)
  grads = random_like(weights, seed=5)
  w_virtual = model.virtual_weights(values(weights), grads)
  model.optimizer.apply_gradients(
      zip(optimization.add_l2(grads, weights, model.weight_decay), weights))
  assert_close(w_virtual, values(weights), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method,coefficients,hessian", [
    ("darts_2nd", {"val": 1.0}, "finite_difference"),
    ("milenas_2nd", {"val": 1.3, "train": 0.6}, "finite_difference")])
def test_reference_code_virtual_step_re_derived(float64, method, coefficients, hessian):
  """The official MiLeNAS code's semantics, re-derived from the network's loss as a
  function of (w, alpha): alpha steps with w (no momentum, coupled decay on both), v
  has a part for alpha, which enters eps and moves alpha in the central difference."""
  model = tiny_model(method, hessian=hessian, virtual_step="reference_code",
                     lambda_val=coefficients["val"],
                     lambda_train=coefficients.get("train", 1.0))
  train, val = batches()
  model.train_step((train, val))  # momentum buffers exist: the virtual step ignores them
  net = model.network
  stateless = Stateless(net)
  w, alphas = values(net.weight_variables), values(net.arch_variables)
  calls = count_passes(model)
  got = model.arch_gradients(_Passes(model, train, val))
  splits = len(coefficients)
  assert calls == ["all"] * (1 + splits) + ["alpha"] * (2 * splits)

  def grads_at(w_at, alphas_at, batch):
    with tf.GradientTape() as tape:
      tape.watch(alphas_at + w_at)
      loss = stateless.loss(w_at, alphas_at, batch)
    grads = tape.gradient(loss, alphas_at + w_at)
    return grads[:len(alphas_at)], grads[len(alphas_at):]

  decay = model.weight_decay
  g_alpha, g_w = grads_at(w, alphas, train)
  alphas_v = [a - XI * (g + decay * a) for a, g in zip(alphas, g_alpha)]
  w_v = [a - XI * (g + decay * a) for a, g in zip(w, g_w)]
  want = [tf.zeros_like(a) for a in alphas]
  for split, c in coefficients.items():
    d_alpha, d_w = grads_at(w_v, alphas_v, val if split == "val" else train)
    eps = 0.01 / np.sqrt(sum(np.sum(t.numpy() ** 2) for t in d_alpha + d_w))
    plus = stateless.alpha_grads([a + eps * b for a, b in zip(w, d_w)],
                                 [a + eps * b for a, b in zip(alphas, d_alpha)], train)
    minus = stateless.alpha_grads([a - eps * b for a, b in zip(w, d_w)],
                                  [a - eps * b for a, b in zip(alphas, d_alpha)], train)
    want = [t + c * (d - XI * (p - m) / (2 * eps))
            for t, d, p, m in zip(want, d_alpha, plus, minus)]
  assert_close(got, want, rtol=1e-8, atol=1e-12)
  # The three semantics give three gradients.
  others = [tiny_model(method, virtual_step=s, lambda_val=coefficients["val"],
                       lambda_train=coefficients.get("train", 1.0)) for s in ("sgd", "darts")]
  for other in others:
    other.train_step((train, val))
    assert relative_error(other.arch_gradients(_Passes(other, train, val)), want) > 1e-3


def test_reference_code_virtual_step_refuses_exact_products():
  with pytest.raises(UserInputError, match="virtual_step 'reference_code' moves alpha"):
    search_model.build_search_model(num_classes=3, input_shape=SHAPE, init_channels=4,
                                    num_cells=3, method="darts_2nd", hessian="exact",
                                    virtual_step="reference_code")


def test_second_order_passes_refuse_to_run_without_the_restoring_snapshot(float64):
  model = tiny_model("milenas_2nd")
  train, val = batches()
  before = [v.numpy().copy() for v in model.network.variables]
  with pytest.raises(RuntimeError, match="through SearchModel.arch_gradients"):
    model.rule(_Passes(model, train, val), lambda_train=1.0, lambda_val=1.0)
  for v, b in zip(model.network.variables, before):
    np.testing.assert_array_equal(v.numpy(), b)


# Graph mode, float32, as the search runs.


def test_second_order_gradient_leaves_every_variable_bit_exact(float64):
  """Eager, and traced (where assignments and reads must keep their order)."""
  model = tiny_model("milenas_2nd")
  train, val = batches()
  variables = model.network.variables
  before = [v.numpy().copy() for v in variables]

  def check_unchanged(what):
    for v, b in zip(variables, before):
      np.testing.assert_array_equal(v.numpy(), b, err_msg=f"{what}: {v.path}")

  results = {}
  for hessian in second_order.HESSIANS:
    model.hessian = hessian
    results[hessian] = model.arch_gradients(_Passes(model, train, val))
    check_unchanged(f"eager, {hessian}")
  tf.config.run_functions_eagerly(False)
  # The graph optimiser is not under test; without it the first call is faster.
  tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
  try:
    for hessian in ("finite_difference", *second_order.EXACT_HESSIANS):
      model.hessian = hessian
      traced = tf.function(lambda t, v: model.arch_gradients(_Passes(model, t, v)))(
          train, val)
      check_unchanged(f"traced, {hessian}")
      # In float64 a read before its assignment, or a kernel overwriting a tensor
      # still to be read, would show far above rounding.
      assert relative_error(traced, results[hessian]) < 1e-10, hessian
  finally:
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})
  assert relative_error(results["exact"], results["finite_difference"]) > 1e-6


@pytest.mark.parametrize("kwargs,message", [
    (dict(hessian="newton"), "Unknown hessian 'newton'; choose one of finite_difference, "
                             "finite_difference_combined, exact, exact_recompute"),
    (dict(virtual_step="adam"),
     "Unknown virtual step 'adam'; choose one of sgd, darts, reference_code, optimizer")])
def test_unknown_second_order_options_are_refused(kwargs, message):
  with pytest.raises(UserInputError, match=message):
    search_model.build_search_model(num_classes=3, input_shape=SHAPE, init_channels=4,
                                    num_cells=3, method="darts_2nd", **kwargs)
