"""The search step: alpha update by a rule of `update_rules`, then the w step.

`SearchModel.train_step` takes `((x_train, y_train), (x_val, y_val))` and

- in the `reference` order (the reference code's): computes the alpha gradient the
  method asks for at the current w, updates alpha, then computes grad_w L_tr on the
  same train batch with the new alpha and updates w (three passes for `milenas`);
- in the `fused` order: one pass on the train batch yields grad_w L_tr and
  grad_alpha L_tr together, one pass on the val batch grad_alpha L_val; alpha and w
  are updated simultaneously (two passes).

Each pass is one traced function (loss and gradients with respect to a fixed set
of variables) called as often as the step needs it: the network is traced once per
pass kind, not once per call.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from milenas_tf import optimization
from milenas_tf import update_rules
from milenas_tf.search_network import SearchNetwork


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """Mean softmax cross-entropy over the batch."""
  return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
      tf.cast(labels, tf.int32), tf.cast(logits, tf.float32)))


class _Passes:
  """Alpha gradients of one step, each computed once and only when asked for."""

  def __init__(self, model: "SearchModel", train_batch, val_batch, train_alpha=None):
    self._model, self._train, self._val = model, train_batch, val_batch
    self._train_alpha, self._val_alpha = train_alpha, None

  def train_alpha_grads(self):
    if self._train_alpha is None:
      self._train_alpha = self._model.gradient_pass("alpha", *self._train)[2]
    return self._train_alpha

  def val_alpha_grads(self):
    if self._val_alpha is None:
      self._val_alpha = self._model.gradient_pass("alpha", *self._val)[2]
    return self._val_alpha


class SearchModel(keras.Model):
  """Differentiable architecture search on a `SearchNetwork`.

  Args:
    network: the search network (built or not).
    method: a name of `update_rules.METHODS`.
    order: "reference" or "fused" (see the module docstring).
    lambda_train: weight of grad_alpha L_tr in `milenas` (the reference code's lambda).
    lambda_val: weight of grad_alpha L_val in `milenas` (the paper's Eq. 6 lambda).
    weight_decay: coupled L2 on w.
    arch_weight_decay: coupled L2 on alpha.
    grad_clip: global-norm clip of grad_w (None or 0: no clipping).

  Raises:
    UserInputError: for an unknown method or order.
  """

  def __init__(self, network: SearchNetwork, method: str = "milenas",
               order: str = "reference", lambda_train: float = 1.0,
               lambda_val: float = 1.0, weight_decay: float = 3e-4,
               arch_weight_decay: float = 1e-3, grad_clip: float | None = 5.0, **kwargs):
    super().__init__(**kwargs)
    self.rule = update_rules.get_rule(method)
    self.method, self.order = method, update_rules.check_order(order)
    self.network = network
    self.lambda_train, self.lambda_val = lambda_train, lambda_val
    self.weight_decay, self.arch_weight_decay = weight_decay, arch_weight_decay
    self.grad_clip = grad_clip
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

    One `tf.function` per `wrt`, traced once and called as often as needed.
    """
    if wrt not in self._pass_functions:
      def loss_and_grads(x, y):
        variables = self._variables(wrt)
        with tf.GradientTape() as tape:
          logits = self.network(x, training=True)
          loss = cross_entropy(y, logits)
        return loss, logits, tape.gradient(loss, variables)
      self._pass_functions[wrt] = tf.function(loss_and_grads)
    return self._pass_functions[wrt](x, y)

  def apply_arch_gradients(self, grads) -> None:
    """Coupled decay, then the alpha optimiser."""
    alphas = self.network.arch_variables
    grads = optimization.add_l2(grads, alphas, self.arch_weight_decay)
    self.arch_optimizer.apply_gradients(zip(grads, alphas))

  def apply_weight_gradients(self, grads) -> None:
    """Global-norm clipping, then coupled decay, then the w optimiser (PyTorch's order)."""
    weights = self.network.weight_variables
    grads = optimization.clip_by_global_norm(grads, self.grad_clip)
    grads = optimization.add_l2(grads, weights, self.weight_decay)
    self.optimizer.apply_gradients(zip(grads, weights))

  def arch_gradients(self, passes: update_rules.GradientPasses):
    """The method's alpha gradient from the step's passes."""
    return self.rule(passes, lambda_train=self.lambda_train, lambda_val=self.lambda_val)

  def train_step(self, data):
    (x_train, y_train), (x_val, y_val) = data
    num_alpha = len(self.network.arch_variables)
    if self.order == "fused":
      loss, logits, grads = self.gradient_pass("all", x_train, y_train)
      passes = _Passes(self, (x_train, y_train), (x_val, y_val),
                       train_alpha=grads[:num_alpha])
      self.apply_arch_gradients(self.arch_gradients(passes))
      self.apply_weight_gradients(grads[num_alpha:])
    else:
      passes = _Passes(self, (x_train, y_train), (x_val, y_val))
      self.apply_arch_gradients(self.arch_gradients(passes))
      loss, logits, grads = self.gradient_pass("weights", x_train, y_train)
      self.apply_weight_gradients(grads)
    self.loss_tracker.update_state(loss)
    self.accuracy.update_state(y_train, logits)
    return {m.name: m.result() for m in self.metrics}

  def test_step(self, data):
    x, y = data
    logits = self.network(x, training=False)
    self.loss_tracker.update_state(cross_entropy(y, logits))
    self.accuracy.update_state(y, logits)
    return {m.name: m.result() for m in self.metrics}
