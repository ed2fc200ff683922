"""The search and training steps follow PyTorch's update rules step for step (float64).

An independent NumPy implementation of the rules the reference code runs:
`torch.optim.SGD` with momentum and coupled weight decay, `torch.optim.Adam` with
coupled weight decay, `torch.nn.utils.clip_grad_norm_` (with its 1e-6) and
`CosineAnnealingLR` / the ImageNet recipe's per-epoch exponential decay, takes its
gradients from the network as a pure function of its weights (`stateless_call`) at
its own trajectory, and the project's steps must follow it across epoch boundaries,
where the learning rate changes.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from milenas_tf.core import optimization
from milenas_tf.search import model as search_model
from milenas_tf.train import model as train_model
from milenas_tf.train import networks

STEPS_PER_EPOCH = 2
STEPS = 5  # across two epoch boundaries


# PyTorch's rules, in NumPy.


def torch_sgd(params, grads, buffers, lr, momentum, weight_decay):
  """torch.optim.SGD.step (dampening 0, no Nesterov) with coupled weight decay."""
  out = []
  for i, (p, g) in enumerate(zip(params, grads)):
    d = g + weight_decay * p
    buffers[i] = d.copy() if buffers[i] is None else momentum * buffers[i] + d
    out.append(p - lr * buffers[i])
  return out


def torch_adam(params, grads, state, step, lr, betas, eps, weight_decay):
  """torch.optim.Adam.step (no AMSGrad) with coupled weight decay; `step` counts from 1."""
  out = []
  for i, (p, g) in enumerate(zip(params, grads)):
    g = g + weight_decay * p
    m, v = state.get(i, (np.zeros_like(p), np.zeros_like(p)))
    m = betas[0] * m + (1 - betas[0]) * g
    v = betas[1] * v + (1 - betas[1]) * g * g
    state[i] = (m, v)
    step_size = lr / (1 - betas[0] ** step)
    denominator = np.sqrt(v) / math.sqrt(1 - betas[1] ** step) + eps
    out.append(p - step_size * m / denominator)
  return out


def clip_grad_norm(grads, max_norm):
  """torch.nn.utils.clip_grad_norm_."""
  total = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
  coefficient = max_norm / (total + 1e-6)
  return [g * coefficient for g in grads] if coefficient < 1 else grads


def cosine_lr(initial, minimum, epochs, epoch):
  return minimum + (initial - minimum) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def assert_trajectory(got, want, what):
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-12, atol=1e-14, err_msg=what)


def batch(rng, shape, classes=3, size=4):
  return (tf.constant(rng.normal(size=(size,) + shape)),
          tf.constant(rng.integers(0, classes, size), tf.int32))


# The search.


def search_loss_grads(network, w, alphas, data, wrt):
  """Loss gradients of the search network at (w, alpha) with respect to "w" or "alpha"."""
  trainable = network.trainable_variables
  position = {id(v): i for i, v in enumerate(trainable)}
  non_trainable = [tf.identity(v.value) for v in network.non_trainable_variables]
  w, alphas = [tf.constant(t) for t in w], [tf.constant(t) for t in alphas]
  with tf.GradientTape() as tape:
    tape.watch(w + alphas)
    values = [None] * len(trainable)
    for v, t in zip(network.weight_variables, w):
      values[position[id(v)]] = t
    for v, t in zip(network.arch_variables, alphas):
      values[position[id(v)]] = t
    logits, _ = network.stateless_call(values, non_trainable, data[0], training=True)
    loss = search_model.cross_entropy(data[1], logits)
  return [g.numpy() for g in tape.gradient(loss, w if wrt == "w" else alphas)]


@pytest.mark.parametrize("grad_clip", [0.0, 0.5])
def test_milenas_search_steps_follow_pytorch(float64, grad_clip):
  """MiLeNAS-1st in the reference order: alpha by Adam on grad L_val + grad L_tr, then w
  by SGD with momentum on grad L_tr at the new alpha (clipped by the DARTS paper's rule,
  or not, as the official MiLeNAS search)."""
  lr, lr_min, epochs, momentum, wd = 0.1, 0.001, 3, 0.9, 3e-4
  arch_lr, betas, arch_wd = 3e-2, (0.5, 0.999), 1e-3
  keras.utils.set_random_seed(0)
  model = search_model.build_search_model(
      num_classes=3, input_shape=(8, 8, 1), init_channels=4, num_cells=3,
      method="milenas", order="reference", epochs=epochs,
      steps_per_epoch=STEPS_PER_EPOCH, learning_rate=lr, learning_rate_min=lr_min,
      momentum=momentum, weight_decay=wd, grad_clip=grad_clip,
      arch_learning_rate=arch_lr, arch_weight_decay=arch_wd)
  network = model.network
  rng = np.random.default_rng(1)
  for v in network.arch_variables:
    v.assign(rng.normal(size=v.shape))
  w = [v.numpy() for v in network.weight_variables]
  alphas = [v.numpy() for v in network.arch_variables]
  buffers, adam = [None] * len(w), {}
  moved = 0.0
  for step in range(STEPS):
    train, val = batch(rng, (8, 8, 1)), batch(rng, (8, 8, 1))
    model.train_step((train, val))
    grads = [a + b for a, b in zip(search_loss_grads(network, w, alphas, val, "alpha"),
                                   search_loss_grads(network, w, alphas, train, "alpha"))]
    new_alphas = torch_adam(alphas, grads, adam, step + 1, arch_lr, betas, 1e-8, arch_wd)
    grads = search_loss_grads(network, w, new_alphas, train, "w")
    if grad_clip:
      grads = clip_grad_norm(grads, grad_clip)
    epoch_lr = cosine_lr(lr, lr_min, epochs, step // STEPS_PER_EPOCH)
    new_w = torch_sgd(w, grads, buffers, epoch_lr, momentum, wd)
    moved = max(moved, max(float(np.abs(a - b).max()) for a, b in zip(new_w, w)))
    w, alphas = new_w, new_alphas
    assert_trajectory([v.numpy() for v in network.arch_variables], alphas, f"alpha, {step}")
    assert_trajectory([v.numpy() for v in network.weight_variables], w, f"w, {step}")
  assert moved > 1e-3  # the steps are not vanishingly small


# Training the evaluation networks.


def train_loss_grads(network, w, data, auxiliary_weight, label_smoothing):
  trainable = network.trainable_variables
  non_trainable = [tf.identity(v.value) for v in network.non_trainable_variables]
  w = [tf.constant(t) for t in w]
  with tf.GradientTape() as tape:
    tape.watch(w)
    out, _ = network.stateless_call(w, non_trainable, data[0], training=True)
    logits, aux = out if isinstance(out, tuple) else (out, None)
    loss = train_model.classification_loss(data[1], logits, label_smoothing)
    if aux is not None:
      loss += auxiliary_weight * train_model.classification_loss(data[1], aux,
                                                                 label_smoothing)
  assert len(w) == len(trainable)
  return [g.numpy() for g in tape.gradient(loss, w)]


@pytest.mark.parametrize("setting", ["cifar10", "imagenet"])
def test_training_steps_follow_pytorch(float64, setting):
  """The recipes' step: loss (auxiliary term, label smoothing), clip_grad_norm_, coupled
  decay, SGD with momentum, the learning rate per epoch (cosine for CIFAR-10, x0.97 for
  ImageNet)."""
  cifar = setting == "cifar10"
  lr, momentum, wd, clip = 0.1, 0.9, 3e-4, 0.5
  smoothing, aux_weight = (0.0, 0.4) if cifar else (0.1, 0.0)
  shape = (24, 24, 3) if cifar else (32, 32, 3)
  keras.utils.set_random_seed(0)
  network = networks.build_network("DARTS_V2", setting, init_channels=4, num_cells=3,
                                   auxiliary=cifar, num_classes=5, input_shape=shape)
  model = train_model.TrainModel(network, auxiliary_weight=aux_weight,
                                 label_smoothing=smoothing, weight_decay=wd, grad_clip=clip)
  schedule = (optimization.EpochCosineDecay(lr, 0.0, 3, STEPS_PER_EPOCH) if cifar
              else optimization.EpochExponentialDecay(lr, 0.97, STEPS_PER_EPOCH))
  model.compile(optimizer=optimization.weight_optimizer(schedule, momentum),
                jit_compile=False)
  rng = np.random.default_rng(2)
  w = [v.numpy() for v in network.trainable_variables]
  buffers = [None] * len(w)
  for step in range(STEPS):
    data = batch(rng, shape, classes=5)
    model.train_step(data)
    grads = clip_grad_norm(train_loss_grads(network, w, data, aux_weight, smoothing), clip)
    epoch = step // STEPS_PER_EPOCH
    epoch_lr = cosine_lr(lr, 0.0, 3, epoch) if cifar else lr * 0.97 ** epoch
    w = torch_sgd(w, grads, buffers, epoch_lr, momentum, wd)
    assert_trajectory([v.numpy() for v in network.trainable_variables], w, f"w, {step}")


def test_float64_evaluation_network_keeps_float64_to_the_loss(float64):
  network = networks.build_network("DARTS_V2", "cifar10", init_channels=4, num_cells=3,
                                   input_shape=(24, 24, 3))
  logits, aux = network(tf.zeros((2, 24, 24, 3), tf.float64), training=True)
  loss = train_model.classification_loss(tf.constant([0, 1]), logits, 0.1)
  assert logits.dtype == aux.dtype == loss.dtype == tf.float64


# The optimisers alone.


def test_clip_is_pytorch_clip_grad_norm():
  grads = [np.array([3.0, 4.0]), np.array([[12.0]])]  # norm 13
  for max_norm in (5.0, 13.0, 20.0):
    got = optimization.clip_by_global_norm([tf.constant(g) for g in grads], max_norm)
    for g, w in zip(got, clip_grad_norm(grads, max_norm)):
      np.testing.assert_allclose(g.numpy(), w, rtol=1e-15)
  # At the threshold PyTorch still scales, by 13 / (13 + 1e-6); TensorFlow's would not.
  assert optimization.clip_by_global_norm([tf.constant(grads[0])], 5.0)[0].numpy()[0] < 3.0


def test_checkpoints_of_keras_sgd_restore_as_pytorch_buffers(tmp_path):
  """A run written with Keras's SGD (velocity -lr * buf at a constant rate) resumes with
  PyTorch's buffers: the next step is PyTorch's."""
  from milenas_tf.core import checkpoint  # pylint: disable=g-import-not-at-top
  from milenas_tf.core import files  # pylint: disable=g-import-not-at-top

  def make(optimizer):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=optimizer, loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model

  x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
  schedule = optimization.EpochCosineDecay(0.1, 0.0, 4, steps_per_epoch=2)
  old = make(keras.optimizers.SGD(schedule, momentum=0.9))
  old.fit(x, y, batch_size=4, epochs=2, verbose=0)  # two steps at the first epoch's rate
  # The earlier layout: the weights and {"epochs_done"} in checkpoints/ itself.
  old.save_weights(str(tmp_path / checkpoint.WEIGHTS))
  files.write_json_atomic(tmp_path / checkpoint.STATE, {"epochs_done": 2})
  rate = float(schedule(1))
  buffers = [-v.numpy() / rate for v in old.optimizer.momentums]

  new = make(optimization.weight_optimizer(schedule, 0.9))
  assert checkpoint.restore(new, str(tmp_path)) == 2
  for got, want in zip(new.optimizer.momentum_buffers, buffers):
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
  assert any(np.abs(b).max() > 1e-3 for b in buffers)


def test_reference_order_runs_the_train_pass_before_the_val_pass(float64):
  """As the reference code: grad_alpha L_tr, grad_alpha L_val, then grad_w L_tr."""
  model = search_model.build_search_model(num_classes=3, input_shape=(8, 8, 1),
                                          init_channels=4, num_cells=3)
  rng = np.random.default_rng(4)
  train, val = batch(rng, (8, 8, 1)), batch(rng, (8, 8, 1))
  seen, gradient_pass = [], model.gradient_pass

  def recording(wrt, x, y):
    split = "train" if np.array_equal(x.numpy(), train[0].numpy()) else "val"
    seen.append((wrt, split))
    return gradient_pass(wrt, x, y)

  model.gradient_pass = recording
  model.train_step((train, val))
  assert seen == [("alpha", "train"), ("alpha", "val"), ("weights", "train")]
