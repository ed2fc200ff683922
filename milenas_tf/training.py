"""Training a searched architecture from scratch: the step, the recipes, the run.

`run_training(config, output_dir)` trains `networks.build_network(config.genotype,
...)` with the recipe of the config (DESIGN.md §4; DARTS Appendix A.2, MiLeNAS
supplementary Section A) and fills `output_dir` with:

- `config.json`: the configuration of the run (a rerun must match it);
- `dataset.json`: what the network was trained on (image shape, normalisation
  statistics, class names), read by the export;
- `epochs.jsonl`: one line per epoch: seconds, losses, top-1/top-5, test metrics,
  learning rate and drop-path rate;
- `checkpoints/`: the state of the last finished epoch (weights, optimiser,
  epoch), from which a rerun with the same directory resumes;
- `best/`: the weights with the best test top-1 so far and `best.json`;
- `logs/`: TensorBoard (losses, top-1/top-5, learning rate, drop-path rate).
"""

from __future__ import annotations

import dataclasses
import os

import keras
import ml_collections
import tensorflow as tf

from milenas_tf import callbacks
from milenas_tf import datasets
from milenas_tf import distribution
from milenas_tf import graph_options
from milenas_tf import imagenet_input
from milenas_tf import model_size
from milenas_tf import networks
from milenas_tf import optimization
from milenas_tf import precision
from milenas_tf import run_directory
from milenas_tf.errors import UserInputError

EPOCH_LOG = "epochs.jsonl"
DATASET_FILE = "dataset.json"
SCHEDULES = ("cosine", "exponential")
DATASETS = datasets.DATASETS + ("imagenet",)
# ILSVRC-2012 training images: the epoch length of TFRecord shards, which cannot be counted
# without reading them.
IMAGENET_TRAIN_EXAMPLES = 1_281_167


def default_config() -> ml_collections.ConfigDict:
  """The CIFAR-10 training recipe (DESIGN.md §4; DARTS Appendix A.2)."""
  config = ml_collections.ConfigDict()
  # Architecture.
  config.genotype = "MILENAS_3_87M"   # published name or alias, or a genotype JSON file
  config.setting = "cifar10"          # network family: cifar10 | imagenet | fashion_mnist
  config.init_channels = 36
  config.num_cells = 20
  config.auxiliary = True
  config.auxiliary_weight = 0.4
  config.drop_path_rate = 0.2         # reached linearly at the last epoch
  config.mult_add_budget = 0          # refuse a larger network (0 = no limit)
  # Data.
  config.dataset = "cifar10"
  config.data_dir = ""
  config.data_source = "auto"
  config.limit = 0                    # first N examples of each split (0 = all)
  config.augment = True               # random crop (pad 4) and flip
  config.cutout_length = 16           # 0 = no cutout
  config.seed = 0
  # Optimisation.
  config.epochs = 600
  config.batch_size = 96
  config.learning_rate = 0.025
  config.schedule = "cosine"          # cosine (to learning_rate_min) | exponential
  config.learning_rate_min = 0.0
  config.decay_rate = 0.97            # exponential schedule: factor per epoch
  config.momentum = 0.9
  config.weight_decay = 3e-4
  config.grad_clip = 5.0
  config.label_smoothing = 0.0
  # Distribution (milenas_tf/distribution.py); batch_size is the global batch.
  config.distribution = "auto"        # auto | default | mirrored | multi_worker | /gpu:0,/gpu:1
  config.scale_learning_rate = False  # learning_rate * batch_size / base_batch_size
  config.base_batch_size = 96         # the batch the learning rate is given for
  config.precision = "auto"           # auto (mixed_float16 on GPUs) | float32 | mixed_float16
  config.remapping = "auto"           # Grappler op fusion: auto (off on CPUs) | on | off
  config.graph_optimizer = "light"    # Grappler: light (one round, fast first step) | full
  return config


def imagenet_options() -> ml_collections.ConfigDict:
  """`config.imagenet`: the options of the ImageNet input (`milenas_tf.imagenet_input`).

  `config.data_dir` and `config.data_source` (auto | tfrecord | folder | tfds) say
  where the images are; these say how they are read.
  """
  options = ml_collections.ConfigDict()
  options.image_size = 224            # side of the training and evaluation crops
  options.resize_size = 256           # shorter side before the evaluation centre crop
  options.label_offset = 1            # TFRecord labels run from 1 to 1000
  options.synsets = ""                # TFRecord: file of wnids, label 0 first (class names)
  options.manual_dir = ""             # tfds: folder with the ILSVRC-2012 tar files
  options.shuffle_buffer = imagenet_input.DEFAULT_SHUFFLE_BUFFER
  options.train_examples = IMAGENET_TRAIN_EXAMPLES  # epoch length of TFRecord shards
  return options


def imagenet_config() -> ml_collections.ConfigDict:
  """The ImageNet mobile recipe (DESIGN.md §4; DARTS Appendix A.2, MiLeNAS
  supplementary Section A.2): 14 cells, C=48, 250 epochs of batch 128, SGD 0.1
  decayed x0.97 per epoch, weight decay 3e-5, label smoothing 0.1, no drop path,
  under 600M mult-adds. The cell is DARTS_V2, whose ImageNet figures are published
  (4.7M parameters, 574M mult-adds); MILENAS_3_87M fits the budget with C=46."""
  config = default_config()
  config.update(dict(
      genotype="DARTS_V2", setting="imagenet", dataset="imagenet", init_channels=48,
      num_cells=14, drop_path_rate=0.0, mult_add_budget=600_000_000, cutout_length=0, epochs=250,
      batch_size=128, base_batch_size=128, learning_rate=0.1, schedule="exponential",
      decay_rate=0.97, weight_decay=3e-5, label_smoothing=0.1))
  config.imagenet = imagenet_options()
  return config


def classification_loss(labels: tf.Tensor, logits: tf.Tensor,
                        label_smoothing: float = 0.0) -> tf.Tensor:
  """Mean cross-entropy against `(1 - s) * one_hot + s / K` targets, in float32.

  The reference `CrossEntropyLabelSmooth` for s > 0, plain cross-entropy at 0.
  """
  logits = tf.cast(logits, tf.float32)
  log_probs = tf.nn.log_softmax(logits)
  targets = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1])
  if label_smoothing:
    targets = (1.0 - label_smoothing) * targets + label_smoothing / tf.cast(
        tf.shape(logits)[-1], tf.float32)
  return tf.reduce_mean(-tf.reduce_sum(targets * log_probs, axis=-1))


class TrainModel(keras.Model):
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
    self.top1.update_state(y, logits)
    self.top5.update_state(y, logits)
    return {m.name: m.result() for m in self.metrics}


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
        input_shape=info.image_shape, name="network")
    model = TrainModel(network, config.auxiliary_weight, config.label_smoothing,
                       config.weight_decay, config.grad_clip)
  if config.mult_add_budget:
    model_size.check_budget(network, config.mult_add_budget)
  optimizer = precision.wrap_optimizer(optimization.weight_optimizer(
      learning_rate_schedule(config, steps_per_epoch), config.momentum), policy)
  model.compile(optimizer=optimizer, jit_compile=False)
  optimizer.build(network.trainable_variables)
  return model


class DropPathSchedule(keras.callbacks.Callback):
  """Sets the network's drop-path rate to `rate * epoch / epochs` before each epoch.

  The reference schedule (epoch counted from 0). Also adds `drop_path_rate` and
  `learning_rate` to the epoch logs, for TensorBoard and the epoch log.

  Args:
    rate: the final rate.
    epochs: the schedule's length.
  """

  def __init__(self, rate: float, epochs: int):
    super().__init__()
    self.rate, self.epochs = rate, epochs

  def on_epoch_begin(self, epoch, logs=None):
    self.model.network.drop_path_rate.assign(self.rate * epoch / self.epochs)

  def on_epoch_end(self, epoch, logs=None):
    if logs is not None:
      logs["drop_path_rate"] = float(self.model.network.drop_path_rate.numpy())
      logs["learning_rate"] = callbacks.last_learning_rate(self.model.optimizer)


class BestWeights(keras.callbacks.Callback):
  """Keeps the weights with the best value of a logged metric (higher is better).

  Writes `best.weights.h5` and `best.json` (epoch and value) atomically; reads
  `best.json` at the start, so a resumed run keeps the earlier best.

  Args:
    directory: where the files go.
    monitor: the metric, e.g. "val_top1".
  """

  WEIGHTS = "best.weights.h5"
  STATE = "best.json"

  def __init__(self, directory: str, monitor: str = "val_top1"):
    super().__init__()
    self.directory, self.monitor = directory, monitor
    self.best = callbacks.read_json(os.path.join(directory, self.STATE)) or {}

  def on_epoch_end(self, epoch, logs=None):
    value = (logs or {}).get(self.monitor)
    if value is None or value <= self.best.get("value", float("-inf")):
      return
    callbacks.save_weights_atomic(self.model, os.path.join(self.directory, self.WEIGHTS))
    self.best = {"epoch": epoch + 1, self.monitor: float(value), "value": float(value)}
    callbacks.write_json_atomic(os.path.join(self.directory, self.STATE), self.best)


@dataclasses.dataclass
class TrainResult:
  """What a training run produced.

  Attributes:
    history: per-epoch logs of the epochs run by this call.
    test: final test metrics (`loss`, `top1`, `top5`).
    best: the best epoch and its test top-1 (`best.json`).
    output_dir: where everything was written.
    resumed_after: epochs finished by earlier runs when this one started.
  """
  history: dict
  test: dict
  best: dict
  output_dir: str
  resumed_after: int = 0


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises `UserInputError` for a configuration that cannot run."""
  datasets.check_choice("dataset name", config.dataset, DATASETS)
  if config.setting not in networks.SETTINGS:
    raise UserInputError(f"Unknown setting {config.setting!r}; choose one of "
                         f"{', '.join(sorted(networks.SETTINGS))}.")
  if config.schedule not in SCHEDULES:
    raise UserInputError(f"Unknown schedule {config.schedule!r}; choose one of "
                         f"{', '.join(SCHEDULES)}.")
  for key in ("epochs", "batch_size", "init_channels", "num_cells", "base_batch_size"):
    if int(config[key]) < 1:
      raise UserInputError(f"config.{key} must be positive, got {config[key]}.")
  if not 0.0 <= config.drop_path_rate < 1.0:
    raise UserInputError(f"config.drop_path_rate must be in [0, 1), got "
                         f"{config.drop_path_rate}.")
  distribution.check_spec(config.distribution)
  precision.resolve(config.precision)
  graph_options.resolve(config.remapping)
  graph_options.check_graph_optimizer(config.graph_optimizer)
  if not 0.0 <= config.label_smoothing < 1.0:
    raise UserInputError(f"config.label_smoothing must be in [0, 1), got "
                         f"{config.label_smoothing}.")


def run_imagenet_options(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.imagenet` over the defaults of `imagenet_options()`."""
  options = imagenet_options()
  options.update(config.get("imagenet") or {})
  return options


def load_datasets(config: ml_collections.ConfigDict, epoch: tf.Variable | int = 0
                  ) -> tuple[tf.data.Dataset, tf.data.Dataset, datasets.DatasetInfo, int]:
  """The training and test pipelines of a config, their `DatasetInfo` and the
  number of training steps per epoch.

  `epoch` is the epoch the in-memory datasets produce (`datasets.train_datasets`);
  ImageNet reshuffles on every iteration instead. ImageNet's test split is its
  validation set (`imagenet_input.imagenet_datasets`).

  Raises:
    UserInputError: for missing data or bad input options.
  """
  common = dict(data_dir=config.data_dir or None, source=config.data_source,
                seed=config.seed, limit=config.limit or None)
  if config.dataset != "imagenet":
    train_ds, test_ds, info = datasets.train_datasets(
        config.dataset, config.batch_size, augment=config.augment,
        cutout_length=config.cutout_length, epoch=epoch, **common)
    return train_ds, test_ds, info, int(train_ds.cardinality())
  options = run_imagenet_options(config)
  train_ds, test_ds, info = imagenet_input.imagenet_datasets(
      config.batch_size, image_size=options.image_size, resize_size=options.resize_size,
      label_offset=options.label_offset, shuffle_buffer=options.shuffle_buffer,
      synsets=options.synsets or None, manual_dir=options.manual_dir or None, **common)
  steps = int(train_ds.cardinality())
  if steps < 0:  # TFRecord shards: their length is configured.
    examples = options.train_examples
    if config.limit:
      examples = min(examples, config.limit)
    steps = max(1, examples // config.batch_size)
  return train_ds, test_ds, info, steps


def run_training(config: ml_collections.ConfigDict, output_dir: str, *,
                 verbose: int | str = "auto",
                 extra_callbacks: list[keras.callbacks.Callback] | None = None
                 ) -> TrainResult:
  """Trains a genotype's network; resumes from `output_dir` when it holds this run.

  Args:
    config: a configuration like `default_config()`.
    output_dir: where checkpoints, logs and the best weights go.
    verbose: Keras progress-bar verbosity.
    extra_callbacks: more Keras callbacks for `fit`.

  Returns:
    The `TrainResult`.

  Raises:
    UserInputError: for a bad configuration, missing data or an output directory
      holding another run.
  """
  check_config(config)
  graph_options.apply(config.remapping, config.graph_optimizer)
  strategy = distribution.strategy_for_batch(config.distribution, config.batch_size)
  resuming = run_directory.check_output_dir(output_dir, config.to_dict(), "training",
                                            defaults=default_config().to_dict())
  keras.utils.set_random_seed(config.seed)
  input_epoch = datasets.epoch_variable()
  train_ds, test_ds, info, steps_per_epoch = load_datasets(config, input_epoch)
  with strategy.scope():
    model = build_train_model(config, info, steps_per_epoch)
  checkpoint_dir = os.path.join(output_dir, "checkpoints")
  if not resuming:
    os.makedirs(output_dir, exist_ok=True)
    callbacks.write_json_atomic(os.path.join(output_dir, run_directory.CONFIG_FILE),
                                config.to_dict())
  callbacks.write_json_atomic(os.path.join(output_dir, DATASET_FILE),
                              dataclasses.asdict(info))
  done = callbacks.EpochCheckpoint.restore(model, checkpoint_dir) if resuming else 0
  if done:
    print(f"Resuming the training in {output_dir} after epoch {done} of {config.epochs}.")
  best = BestWeights(os.path.join(output_dir, "best"))
  history = {}
  if done < config.epochs:
    log_dir = os.path.join(output_dir, "logs")
    fit = model.fit(
        train_ds, validation_data=test_ds, epochs=config.epochs, initial_epoch=done,
        verbose=verbose, shuffle=False,
        callbacks=[callbacks.InputEpoch(input_epoch),
                   DropPathSchedule(config.drop_path_rate, config.epochs), best,
                   keras.callbacks.TensorBoard(log_dir, write_graph=False, profile_batch=0),
                   callbacks.EpochLog(os.path.join(output_dir, EPOCH_LOG)),
                   callbacks.EpochCheckpoint(checkpoint_dir)] + (extra_callbacks or []))
    history = fit.history
  test = model.evaluate(test_ds, verbose=0, return_dict=True)
  return TrainResult(history, test, best.best, output_dir, done)


@dataclasses.dataclass
class TrainedModel:
  """A training run's network with saved weights loaded.

  Attributes:
    model: the `TrainModel` (its `network` is the evaluation network).
    config: the run's configuration.
    info: the `DatasetInfo` it was trained on (image shape, statistics, class names).
    epoch: the epoch the weights are from.
  """
  model: TrainModel
  config: ml_collections.ConfigDict
  info: datasets.DatasetInfo
  epoch: int


def _run_config(output_dir: str) -> ml_collections.ConfigDict:
  config_path = os.path.join(output_dir, run_directory.CONFIG_FILE)
  saved = callbacks.read_json(config_path)
  if saved is None:
    raise UserInputError(f"{output_dir} holds no training run ({config_path} is "
                         "missing); pass the --output_dir of bin/train.py.")
  config = default_config()  # keys a run written by an earlier version lacks keep defaults
  config.update(saved)
  return config


def config_dataset_info(config: ml_collections.ConfigDict) -> datasets.DatasetInfo:
  """The `DatasetInfo` of a config's dataset (ImageNet's class names come from its data).

  Raises:
    UserInputError: for an unknown dataset, or missing ImageNet data.
  """
  if config.dataset != "imagenet":
    return datasets.dataset_info(config.dataset)
  return load_datasets(config)[2]


def _run_dataset_info(output_dir: str, config: ml_collections.ConfigDict
                      ) -> datasets.DatasetInfo:
  """The run's `DatasetInfo`: from `dataset.json`, else from the dataset itself."""
  saved = callbacks.read_json(os.path.join(output_dir, DATASET_FILE))
  if saved is not None:
    return datasets.DatasetInfo(**{k: tuple(v) if isinstance(v, list) else v
                                   for k, v in saved.items()})
  return config_dataset_info(config)


def build_with_weights(config: ml_collections.ConfigDict, info: datasets.DatasetInfo,
                       weights_path: str) -> TrainModel:
  """The `TrainModel` of a config with weights from a `.weights.h5` file.

  Raises:
    UserInputError: if the file is missing or holds another network's weights.
  """
  if not os.path.exists(weights_path):
    raise UserInputError(f"{weights_path} does not exist; train at least one epoch "
                         "first, or give the path of a .weights.h5 file.")
  model = build_train_model(config, info, 1)
  try:
    model.load_weights(weights_path)
  except ValueError as e:
    raise UserInputError(f"{weights_path} does not fit the configured network "
                         f"({str(e).splitlines()[0][:200]}); give the genotype, "
                         "setting, sizes and dataset it was trained with.") from None
  return model


def load_trained_model(output_dir: str, which: str = "last",
                       data_dir: str | None = None) -> TrainedModel:
  """Rebuilds a training run's network and loads its last or best weights.

  Args:
    output_dir: a training run's directory.
    which: "last" (the checkpoint) or "best".
    data_dir: overrides the run's data directory.

  Returns:
    The `TrainedModel`.

  Raises:
    UserInputError: if the directory holds no training run or no such weights.
  """
  if which not in ("last", "best"):
    raise UserInputError(f"Unknown weights {which!r}; choose 'last' or 'best'.")
  config = _run_config(output_dir)
  if data_dir is not None:
    config.data_dir = data_dir
  if which == "best":
    path = os.path.join(output_dir, "best", BestWeights.WEIGHTS)
    epoch = (callbacks.read_json(os.path.join(output_dir, "best", BestWeights.STATE))
             or {}).get("epoch", 0)
  else:
    path = os.path.join(output_dir, "checkpoints", callbacks.EpochCheckpoint.WEIGHTS)
    epoch = callbacks.EpochCheckpoint.finished_epochs(os.path.join(output_dir,
                                                                   "checkpoints"))
  if not os.path.exists(path):
    raise UserInputError(f"{path} does not exist; train at least one epoch first.")
  info = _run_dataset_info(output_dir, config)
  return TrainedModel(build_with_weights(config, info, path), config, info, epoch)


def evaluate_checkpoint(output_dir: str, split: str = "test", which: str = "last",
                        data_dir: str | None = None) -> dict:
  """Top-1/top-5 of a training run's weights on a split.

  Args:
    output_dir: a training run's directory.
    split: "test" or "train".
    which: "last" (the checkpoint) or "best".
    data_dir: overrides the run's data directory.

  Returns:
    `{"loss", "top1", "top5", "epoch"}`.

  Raises:
    UserInputError: if the directory holds no training run or no such weights.
  """
  config = _run_config(output_dir)
  if config.dataset == "imagenet" and split != "test":
    raise UserInputError(f"ImageNet runs are evaluated on the validation set "
                         f"(split 'test'), not {split!r}.")
  trained = load_trained_model(output_dir, which, data_dir)
  config = trained.config
  if config.dataset == "imagenet":
    ds = load_datasets(config)[1]
  else:
    ds = datasets.eval_dataset(config.dataset, split, config.batch_size,
                               data_dir=config.data_dir or None,
                               source=config.data_source, limit=config.limit or None)
  result = trained.model.evaluate(ds, verbose=0, return_dict=True)
  return {**{k: float(v) for k, v in result.items()}, "epoch": trained.epoch}
