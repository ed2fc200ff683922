"""The training model of the evaluation networks: the recipes' loss, step and optimiser.
"""

from __future__ import annotations

import keras
import ml_collections
import tensorflow as tf

from milenas_tf.core import distribution
from milenas_tf.core import optimization
from milenas_tf.core import precision
from milenas_tf.data import datasets
from milenas_tf.train import model_size
from milenas_tf.train import networks


def classification_loss(labels: tf.Tensor, logits: tf.Tensor,
                        label_smoothing: float = 0.0) -> tf.Tensor:
  """Mean cross-entropy against `(1 - s) * one_hot + s / K` targets.

  The reference `CrossEntropyLabelSmooth` for s > 0, plain cross-entropy at 0. In
  float32 (float16 logits are cast up), or in float64 for float64 logits.
  """
  dtype = tf.float64 if logits.dtype == tf.float64 else tf.float32
  logits = tf.cast(logits, dtype)
  log_probs = tf.nn.log_softmax(logits)
  targets = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1], dtype=dtype)
  if label_smoothing:
    targets = (1.0 - label_smoothing) * targets + label_smoothing / tf.cast(
        tf.shape(logits)[-1], dtype)
  return tf.reduce_mean(-tf.reduce_sum(targets * log_probs, axis=-1))


class TrainModel(distribution.MultiWorkerModel, keras.Model):
  """An evaluation network with the training step of the recipes.

  Loss: cross-entropy (label-smoothed if asked) of the logits plus
  `auxiliary_weight` times that of the auxiliary logits. Gradients: clipped to
  global norm `grad_clip`, then coupled L2 decay (PyTorch's order), then the
  optimiser. Metrics: loss, top-1 and top-5 accuracy. With a loss-scaling
  optimiser (`precision.wrap_optimizer`) the scaled loss is differentiated and the
  scale divided out before clipping.

  Args:
    network: an `networks.EvalNetwork`.
    auxiliary_weight: weight of the auxiliary loss.
    label_smoothing: label smoothing of both losses.
    weight_decay: coupled L2 decay of every trainable weight.
    grad_clip: global-norm clipping; 0 disables it.
  """

  def __init__(self, network: networks.EvalNetwork, auxiliary_weight: float = 0.4,
               label_smoothing: float = 0.0, weight_decay: float = 3e-4,
               grad_clip: float = 5.0, **kwargs):
    super().__init__(**kwargs)
    self.network = network
    self.auxiliary_weight, self.label_smoothing = auxiliary_weight, label_smoothing
    self.weight_decay, self.grad_clip = weight_decay, grad_clip
    self.loss_tracker = keras.metrics.Mean(name="loss")
    self.top1 = keras.metrics.SparseCategoricalAccuracy(name="top1")
    self.top5 = keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")
    self.built = network.built  # evaluation networks are built at construction

  def call(self, x, training=False):
    return self.network(x, training=training)

  @property
  def metrics(self):
    return [self.loss_tracker, self.top1, self.top5]

  def loss_and_logits(self, x, y, training: bool):
    """The recipe's loss (auxiliary term in training) and the main logits."""
    out = self.network(x, training=training)
    logits, aux = out if isinstance(out, tuple) else (out, None)
    loss = classification_loss(y, logits, self.label_smoothing)
    if aux is not None:
      loss += self.auxiliary_weight * classification_loss(y, aux, self.label_smoothing)
    return loss, logits

  def train_step(self, data):
    """One step on a (per-replica) batch; on N replicas it equals one device's step.

    The gradients are those of the global batch (`distribution.global_gradients`)
    before clipping, so the clipped norm is that of the global-batch gradient.
    """
    x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    weights = self.network.trainable_variables
    scale = precision.loss_scale(self.optimizer)
    with tf.GradientTape() as tape:
      loss, logits = self.loss_and_logits(x, y, training=True)
      scaled_loss = loss if scale is None else loss * scale
    grads = distribution.global_gradients(tape, scaled_loss, weights)
    if scale is not None:
      grads = [g / scale for g in grads]
    grads = optimization.clip_by_global_norm(grads, self.grad_clip)
    grads = optimization.add_l2(grads, weights, self.weight_decay)
    if scale is not None:  # the loss-scale optimiser divides by the scale itself
      grads = [g * scale for g in grads]
    self.optimizer.apply_gradients(zip(distribution.for_optimizer(grads), weights))
    return self._update_metrics(loss, y, logits)

  def test_step(self, data):
    x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    loss, logits = self.loss_and_logits(x, y, training=False)
    return self._update_metrics(loss, y, logits)

  def _update_metrics(self, loss, y, logits):
    self.loss_tracker.update_state(loss)
    logits = tf.cast(logits, tf.float32)  # top-k has no float64 kernel
    self.top1.update_state(y, logits)
    self.top5.update_state(y, logits)
    return self.step_logs()


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int
                           ) -> keras.optimizers.schedules.LearningRateSchedule:
  """The per-epoch schedule the config names, linearly scaled with the batch if asked."""
  learning_rate = config.learning_rate
  if config.scale_learning_rate:
    learning_rate = optimization.scaled_learning_rate(learning_rate, config.batch_size,
                                                      config.base_batch_size)
  if config.schedule == "cosine":
    return optimization.EpochCosineDecay(learning_rate, config.learning_rate_min,
                                         config.epochs, steps_per_epoch)
  return optimization.EpochExponentialDecay(learning_rate, config.decay_rate,
                                            steps_per_epoch)


def build_train_model(config: ml_collections.ConfigDict, info: datasets.DatasetInfo,
                      steps_per_epoch: int) -> TrainModel:
  """The compiled `TrainModel` of a config, for a dataset (build it in a strategy scope).

  Raises:
    UserInputError: for a bad genotype or sizes, or a network over the budget.
  """
  policy = precision.resolve(config.precision)
  with precision.policy_scope(policy):
    network = networks.build_network(
        config.genotype, config.setting, config.init_channels, config.num_cells,
        auxiliary=config.auxiliary, num_classes=info.num_classes,
        input_shape=info.image_shape, sync_batch_norm=config.sync_batch_norm,
        name="network")
    model = TrainModel(network, config.auxiliary_weight, config.label_smoothing,
                       config.weight_decay, config.grad_clip)
  if config.mult_add_budget:
    model_size.check_budget(network, config.mult_add_budget)
  optimizer = precision.wrap_optimizer(optimization.weight_optimizer(
      learning_rate_schedule(config, steps_per_epoch), config.momentum), policy)
  model.compile(optimizer=optimizer, jit_compile=False)
  optimizer.build(network.trainable_variables)
  return model
