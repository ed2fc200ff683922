"""The search step: alpha update by a rule of `update_rules`, then the w step.

`SearchModel.train_step` takes `((x_train, y_train), (x_val, y_val))` and

- in the `reference` order (the reference code's): computes the alpha gradient the
  method asks for at the current w, updates alpha, then computes grad_w L_tr on the
  same train batch with the new alpha and updates w (three passes for `milenas`);
- in the `fused` order: one pass on the train batch yields grad_w L_tr and
  grad_alpha L_tr together, one pass on the val batch grad_alpha L_val; alpha and w
  are updated simultaneously (two passes).

The second-order methods (`milenas_2nd`, `darts_2nd`) compute grad_w L_tr(w, alpha)
for the virtual step w' (reused as the w step's gradient in the fused order), one
pass with respect to alpha and w at w' per split, and the Hessian-vector products
(two alpha passes per split by finite differences, two for all splits when
combined, or one double-backward pass for all splits when exact); see
`update_rules` and `second_order`.

The Gumbel methods (`gdas`, `milenas_gdas`) run on a network that samples one op
per edge in every pass (`gumbel`); the step first sets the network's temperature
from the w optimiser's step counter (`gumbel.TemperatureSchedule`).

Every pass is a call of one traced function (the loss and its gradients with
respect to all variables; a call uses the gradients it needs, and the graph
optimiser prunes the rest): the network is traced once for the step, not once per
pass. The passes run one after the other, each once the previous one's gradients
exist, so that the step's peak memory is that of its largest pass
(`second_order.run_after`).

Under a distribution strategy with several replicas (one machine's devices or
several workers), each replica computes its passes on its share of the batch;
batch norm uses the statistics of the global batch and every gradient is that of
the global-batch loss, so a step on N replicas is one device's step on the whole batch. The passes
are then traced inline in the step: their all-reduces cannot sit in a nested
`tf.function`.
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from milenas_tf.core import distribution
from milenas_tf.core import optimization
from milenas_tf.core import validation
from milenas_tf.core.errors import UserInputError
from milenas_tf.search import gumbel
from milenas_tf.search import second_order
from milenas_tf.search import update_rules
from milenas_tf.search.network import SearchNetwork


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """Mean softmax cross-entropy over the batch, in float32 (float64 kept)."""
  if logits.dtype != tf.float64:
    logits = tf.cast(logits, tf.float32)
  return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
      tf.cast(labels, tf.int32), logits))


def network_exact_hvp(network: SearchNetwork, x: tf.Tensor, y: tf.Tensor, vector: Sequence,
                      cut: int | None = None) -> list[tf.Tensor]:
  """grad^2_{alpha,w} L(w, alpha) v of a `SearchNetwork`'s loss on (x, y), exactly.

  Args:
    network: the search network.
    x, y: the batch.
    vector: v, one tensor per `network.weight_variables`.
    cut: None for `second_order.exact_hvp`; else `second_order.segmented_exact_hvp`
      with the network cut before cell `cut` (the stem and cells `0 .. cut - 1` are
      the first part).

  Returns:
    The product, one tensor per `network.arch_variables`.
  """
  if cut is None:
    return second_order.exact_hvp(lambda: cross_entropy(y, network(x, training=True)),
                                  network.weight_variables, network.arch_variables, vector)
  weights = network.segment_weights(cut)
  index = {id(w): i for i, w in enumerate(network.weight_variables)}
  parts = tuple([vector[index[id(w)]] for w in part] for part in weights)
  return second_order.segmented_exact_hvp(
      lambda x: network.cells_forward(network.stem(x, True), 0, cut, True),
      lambda h: cross_entropy(y, network.head(network.cells_forward(h, cut, None, True))),
      x, weights, network.arch_variables, parts)


class _Passes:
  """Alpha gradients of one step, each computed once and only when asked for.

  The passes run one after the other (`second_order.run_after`): the step's peak
  memory is that of its largest pass.

  For the second-order methods (`update_rules.SecondOrderPasses`) it also
  evaluates passes at the virtual weights w' and at w +/- eps v by assigning them
  to the network's variables; `SearchModel.arch_gradients` restores every
  variable afterwards.
  """

  def __init__(self, model: "SearchModel", train_batch, val_batch, train_alpha=None,
               train_weights=None, previous=()):
    self._model, self._train, self._val = model, train_batch, val_batch
    self._train_alpha, self._val_alpha = train_alpha, None
    self._train_weights = train_weights
    # The results of the step's latest pass: the next pass waits for them.
    self._latest = list(previous)
    self._weights = self._virtual = None
    # The weight values the network's variables hold now (None: not known here).
    self._assigned = None
    self._unrolled = {}

  def _gradient_pass(self, wrt, batch):
    x, y = batch
    x = second_order.run_after(self._latest, x)
    self._latest = self._model.gradient_pass(wrt, x, y)[2]
    return self._latest

  def train_alpha_grads(self):
    if self._train_alpha is None:
      self._train_alpha = self._gradient_pass("alpha", self._train)
    return self._train_alpha

  def val_alpha_grads(self):
    if self._val_alpha is None:
      self._val_alpha = self._gradient_pass("alpha", self._val)
    return self._val_alpha

  # Second order.

  @property
  def xi(self):
    return self._model.virtual_learning_rate()

  def start_at(self, weights):
    """Declares `weights` (a snapshot of `virtual_variables`) as their values now."""
    self._weights = self._assigned = weights

  def _original_weights(self):
    if self._weights is None:
      raise RuntimeError(
          "Second-order passes need the snapshot of w that restores the variables: "
          "call them through SearchModel.arch_gradients, which calls start_at.")
    return self._weights

  def _move_to(self, weights):
    # Passes only read w: consecutive passes at the same point share one assignment.
    if weights is not self._assigned:
      second_order.assign(self._model.virtual_variables, weights)
      self._assigned = weights

  def _pass_at(self, weights, wrt, batch):
    self._move_to(weights)
    return self._gradient_pass(wrt, batch)

  def unrolled_grads(self, split):
    if split not in self._unrolled:
      model = self._model
      start = self._original_weights()
      num_alpha = len(model.network.arch_variables)
      if self._virtual is None:
        if model.steps_alpha:  # the virtual step moves (alpha, w): grads of both
          grads = (None if self._train_weights is None
                   else list(self.train_alpha_grads()) + list(self._train_weights))
          wrt = "all"
        else:
          grads, wrt = self._train_weights, "weights"
        if grads is None:
          grads = self._pass_at(start, wrt, self._train)
        self._virtual = model.virtual_weights(start, grads)
      grads = self._pass_at(self._virtual, "all", self._train if split == "train" else self._val)
      # v: the gradient along what the virtual step moved.
      vector = grads if model.steps_alpha else grads[num_alpha:]
      self._unrolled[split] = (grads[:num_alpha], vector)
    return self._unrolled[split]

  def hessian_vector_products(self, terms):
    model, weights = self._model, self._original_weights()
    if model.hessian in second_order.COMBINED_HESSIANS:
      # H v is linear in v: one product along the weighted sum of the vectors.
      terms = [(1.0, second_order.linear_combination(terms))]
    if model.hessian in second_order.EXACT_HESSIANS:
      self._move_to(weights)
      x, y = self._train
      x = second_order.run_after(self._latest, x)
      self._latest = model.hessian_vector_product(x, y, terms[0][1])
      return self._latest
    products = [
        second_order.finite_difference_hvp(
            lambda at: self._pass_at(at, "alpha", self._train), weights, v,
            model.finite_difference_radius)
        for _, v in terms]
    return second_order.linear_combination(
        [(c, p) for (c, _), p in zip(terms, products)])


class SearchModel(distribution.MultiWorkerModel, keras.Model):
  """Differentiable architecture search on a `SearchNetwork`.

  Args:
    network: the search network (built or not).
    method: a name of `update_rules.METHODS`.
    order: "reference" or "fused" (see the module docstring).
    lambda_train: weight of grad_alpha L_tr in `milenas` (the reference code's lambda).
    lambda_val: weight of grad_alpha L_val in `milenas` (the paper's Eq. 6 lambda).
    weight_decay: coupled L2 on w.
    arch_weight_decay: coupled L2 on alpha.
    grad_clip: global-norm clip of grad_w, as `torch.nn.utils.clip_grad_norm_` (None
      or 0: no clipping, as the official MiLeNAS search; 5 is the DARTS paper's).
    hessian: second-order methods: "finite_difference" (the papers'),
      "finite_difference_combined" (one central difference for both splits of
      `milenas_2nd`), "exact" (nested tapes) or "exact_recompute" (the exact
      product in two segments, for less memory); see `second_order`.
    virtual_step: second-order methods: "sgd" (the seed's w - xi grad_w L_tr),
      "darts" (DARTS's code: the w optimiser's next step with momentum and coupled
      decay, unclipped) or "reference_code" (the official MiLeNAS code: alpha
      stepped with w, without momentum, and part of v); see `second_order`.
    finite_difference_radius: eps * ||v|| of the finite differences.
    temperature_schedule: Gumbel methods: the temperature of an optimiser step
      (`gumbel.TemperatureSchedule`); None keeps the network's temperature.

  Raises:
    UserInputError: for an unknown method, order, hessian or virtual step, or a
      network whose mixed op does not fit the method.
  """

  def __init__(self, network: SearchNetwork, method: str = "milenas",
               order: str = "reference", lambda_train: float = 1.0,
               lambda_val: float = 1.0, weight_decay: float = 3e-4,
               arch_weight_decay: float = 1e-3, grad_clip: float | None = 0.0,
               hessian: str = "finite_difference", virtual_step: str = "sgd",
               finite_difference_radius: float = 0.01,
               temperature_schedule: gumbel.TemperatureSchedule | None = None, **kwargs):
    super().__init__(**kwargs)
    self.rule = update_rules.get_rule(method)
    self.method = method
    mixed_op = "gumbel" if method in update_rules.GUMBEL_METHODS else "softmax"
    if network.mixed_op != mixed_op:
      raise UserInputError(f"Method {method!r} needs SearchNetwork(mixed_op={mixed_op!r}), "
                           f"got mixed_op={network.mixed_op!r}.")
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if mixed_op == "gumbel" and replicas > 1:
      # The sampled path's batch norms would normalise each replica's share alone.
      raise UserInputError(f"Method {method!r} runs on one device, not on {replicas} "
                           f"replicas; set config.distribution=default.")
    self.temperature_schedule = temperature_schedule
    self.order = validation.check_choice("update order", order, update_rules.ORDERS)
    self.network = network
    self.lambda_train, self.lambda_val = lambda_train, lambda_val
    self.weight_decay, self.arch_weight_decay = weight_decay, arch_weight_decay
    self.grad_clip = grad_clip
    self.second_order = method in update_rules.SECOND_ORDER_METHODS
    self.hessian = validation.check_choice("hessian", hessian, second_order.HESSIANS)
    virtual_step = validation.check_choice("virtual step", virtual_step,
                                           second_order.VIRTUAL_STEPS)
    self.virtual_step = second_order.VIRTUAL_STEP_ALIASES.get(virtual_step, virtual_step)
    if self.virtual_step == "reference_code" and self.hessian in second_order.EXACT_HESSIANS:
      raise UserInputError(
          f"virtual_step 'reference_code' moves alpha in its finite differences; use "
          f"hessian 'finite_difference' or 'finite_difference_combined', not "
          f"{self.hessian!r}.")
    self.finite_difference_radius = finite_difference_radius
    self.loss_tracker = keras.metrics.Mean(name="loss")
    self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    self._pass_functions = {}

  def build(self, input_shape):
    if not self.network.built:
      self.network.build(input_shape)

  def call(self, x, training=False):
    return self.network(x, training=training)

  def compile(self, optimizer: keras.optimizers.Optimizer,
              arch_optimizer: keras.optimizers.Optimizer, **kwargs):
    """Sets the w optimiser (`optimizer`) and the alpha optimiser."""
    super().compile(optimizer=optimizer, jit_compile=False, **kwargs)
    self.arch_optimizer = arch_optimizer

  def build_optimizers(self) -> None:
    """Creates both optimisers' slots (call inside the strategy scope, before fit)."""
    self.optimizer.build(self.network.weight_variables)
    self.arch_optimizer.build(self.network.arch_variables)

  @property
  def metrics(self):
    return [self.loss_tracker, self.accuracy]

  def _variables(self, wrt: str):
    if wrt == "alpha":
      return self.network.arch_variables
    if wrt == "weights":
      return self.network.weight_variables
    return self.network.arch_variables + self.network.weight_variables

  def gradient_pass(self, wrt: str, x, y):
    """Loss, logits and gradients with respect to "alpha", "weights" or "all".

    On one device every pass is a call of the same `tf.function`, traced once: it
    returns the gradients with respect to all variables, a call keeps those `wrt`
    names, and the graph optimiser drops the computations of the others when it
    inlines the call (the network is traced once per step function, not once per
    kind of pass). Under several replicas the pass is traced inline, with the
    global-batch gradients of the `wrt` variables only (their all-reduces would
    not be dropped).
    """
    def loss_and_grads(x, y, variables):
      with tf.GradientTape() as tape:
        logits = self.network(x, training=True)
        loss = cross_entropy(y, logits)
      return loss, logits, distribution.global_gradients(tape, loss, variables)

    if distribution.replicas_in_sync() > 1:
      return loss_and_grads(x, y, self._variables(wrt))
    if "pass" not in self._pass_functions:
      self._pass_functions["pass"] = tf.function(
          lambda x, y: loss_and_grads(x, y, self._variables("all")))
    loss, logits, grads = self._pass_functions["pass"](x, y)
    num_alpha = len(self.network.arch_variables)
    if wrt == "alpha":
      grads = grads[:num_alpha]
    elif wrt == "weights":
      grads = grads[num_alpha:]
    return loss, logits, grads

  def hessian_vector_product(self, x, y, vector):
    """grad^2_{alpha,w} L(w, alpha) v on the batch (x, y), by nested tapes; one tf.function.

    With `hessian="exact_recompute"` the network is cut after the cells before the
    first reduction (the stem and those cells hold the most activations per unit
    of compute) and `second_order.segmented_exact_hvp` differentiates each part in
    turn.
    """
    # One function per variant: the traced body depends on `hessian`.
    key = ("hvp", self.hessian)
    if key not in self._pass_functions:
      network = self.network
      cut = None if self.hessian == "exact" else network.reduction_indices[0]
      self._pass_functions[key] = tf.function(
          lambda x, y, vector: network_exact_hvp(network, x, y, vector, cut))
    return self._pass_functions[key](x, y, vector)

  @property
  def steps_alpha(self) -> bool:
    """Whether the virtual step moves alpha with w (`virtual_step="reference_code"`)."""
    return self.virtual_step == "reference_code"

  @property
  def virtual_variables(self) -> list:
    """What the virtual step and the finite differences move: w, or (alpha, w)."""
    network = self.network
    if self.steps_alpha:
      return network.arch_variables + network.weight_variables
    return network.weight_variables

  def virtual_learning_rate(self) -> tf.Tensor:
    """xi of the virtual step: the w learning rate of the coming step."""
    return tf.convert_to_tensor(self.optimizer.learning_rate)

  def virtual_weights(self, weights, grads) -> list[tf.Tensor]:
    """The virtual step from `virtual_variables`' values and their gradients on the
    train batch (see `virtual_step` in the class docstring)."""
    xi = self.virtual_learning_rate()
    if self.virtual_step == "sgd":
      return second_order.virtual_step(weights, grads, xi)
    if self.virtual_step == "reference_code":
      return second_order.virtual_step(weights, grads, xi, weight_decay=self.weight_decay)
    optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
    return second_order.virtual_step(
        weights, grads, xi, weight_decay=self.weight_decay,
        momentum=float(getattr(optimizer, "momentum", 0.0)),
        buffers=getattr(optimizer, "momentum_buffers", None))

  def apply_arch_gradients(self, grads) -> None:
    """Coupled decay, then the alpha optimiser."""
    alphas = self.network.arch_variables
    grads = optimization.add_l2(grads, alphas, self.arch_weight_decay)
    self.arch_optimizer.apply_gradients(zip(distribution.for_optimizer(grads), alphas))

  def apply_weight_gradients(self, grads) -> None:
    """Global-norm clipping, then coupled decay, then the w optimiser (PyTorch's order)."""
    weights = self.network.weight_variables
    grads = optimization.clip_by_global_norm(grads, self.grad_clip)
    grads = optimization.add_l2(grads, weights, self.weight_decay)
    self.optimizer.apply_gradients(zip(distribution.for_optimizer(grads), weights))

  def arch_gradients(self, passes: update_rules.GradientPasses):
    """The method's alpha gradient from the step's passes.

    Second-order methods evaluate passes at other weights; every variable of the
    network (w and the batch-norm statistics) is restored, bit for bit, after.
    """
    if not self.second_order:
      return self.rule(passes, lambda_train=self.lambda_train, lambda_val=self.lambda_val)
    moved = self.virtual_variables
    with second_order.preserved(moved + self.network.non_trainable_variables) as snapshot:
      passes.start_at(snapshot[:len(moved)])
      grads = self.rule(passes, lambda_train=self.lambda_train, lambda_val=self.lambda_val)
    return grads

  def update_temperature(self) -> None:
    """Gumbel methods: sets the network's temperature for the coming step."""
    if self.temperature_schedule is not None:
      self.network.temperature.assign(self.temperature_schedule(self.optimizer.iterations))

  def train_step(self, data):
    (x_train, y_train), (x_val, y_val) = data
    num_alpha = len(self.network.arch_variables)
    self.update_temperature()
    if self.order == "fused":
      loss, logits, grads = self.gradient_pass("all", x_train, y_train)
      passes = _Passes(self, (x_train, y_train), (x_val, y_val),
                       train_alpha=grads[:num_alpha], train_weights=grads[num_alpha:],
                       previous=grads)
      self.apply_arch_gradients(self.arch_gradients(passes))
      self.apply_weight_gradients(grads[num_alpha:])
    else:
      passes = _Passes(self, (x_train, y_train), (x_val, y_val))
      self.apply_arch_gradients(self.arch_gradients(passes))
      loss, logits, grads = self.gradient_pass("weights", x_train, y_train)
      self.apply_weight_gradients(grads)
    self.loss_tracker.update_state(loss)
    self.accuracy.update_state(y_train, logits)
    return self.step_logs()

  def test_step(self, data):
    x, y = data
    logits = self.network(x, training=False)
    self.loss_tracker.update_state(cross_entropy(y, logits))
    self.accuracy.update_state(y, logits)
    return self.step_logs()


def build_search_model(num_classes: int, input_shape: tuple[int, int, int], *,
                       init_channels: int = 16, num_cells: int = 8,
                       method: str = "milenas", order: str = "reference",
                       epochs: int = 50, steps_per_epoch: int = 1,
                       learning_rate: float = 0.025, learning_rate_min: float = 0.001,
                       momentum: float = 0.9, weight_decay: float = 3e-4,
                       grad_clip: float = 0.0, arch_learning_rate: float = 3e-4,
                       arch_weight_decay: float = 1e-3, lambda_train: float = 1.0,
                       lambda_val: float = 1.0, hessian: str = "finite_difference",
                       virtual_step: str = "sgd", gumbel_tau_max: float = 10.0,
                       gumbel_tau_min: float = 0.1,
                       sync_batch_norm: bool = True) -> SearchModel:
  """A compiled, built `SearchModel` with the reference optimisers (DESIGN.md §3).

  The methods of `update_rules.GUMBEL_METHODS` get a Gumbel-sampling network whose
  temperature falls linearly from `gumbel_tau_max` (first epoch) to
  `gumbel_tau_min` (last epoch). `sync_batch_norm` is the network's (global-batch
  statistics under several replicas).

  Build it inside a distribution strategy's scope when one is used.

  Raises:
    UserInputError: for an unknown method or order, or impossible sizes.
  """
  temperature = None
  if method in update_rules.GUMBEL_METHODS:
    temperature = gumbel.TemperatureSchedule(gumbel_tau_max, gumbel_tau_min, epochs,
                                             steps_per_epoch)
  network = SearchNetwork(num_classes, init_channels, num_cells,
                          mixed_op="softmax" if temperature is None else "gumbel",
                          gumbel_temperature=gumbel_tau_max,
                          sync_batch_norm=sync_batch_norm, name="search_network")
  model = SearchModel(network, method=method, order=order, lambda_train=lambda_train,
                      lambda_val=lambda_val, weight_decay=weight_decay,
                      arch_weight_decay=arch_weight_decay, grad_clip=grad_clip,
                      hessian=hessian, virtual_step=virtual_step,
                      temperature_schedule=temperature)
  model.build((None,) + tuple(input_shape))
  schedule = optimization.EpochCosineDecay(learning_rate, learning_rate_min, epochs,
                                           steps_per_epoch)
  model.compile(optimizer=optimization.weight_optimizer(schedule, momentum),
                arch_optimizer=optimization.arch_optimizer(arch_learning_rate))
  model.build_optimizers()
  return model
