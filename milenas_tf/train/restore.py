"""A finished (or interrupted) training run read back: its network with saved weights,
and their accuracy.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from milenas_tf.core import checkpoint
from milenas_tf.core import run_directory
from milenas_tf.core.errors import UserInputError
from milenas_tf.data import datasets
from milenas_tf.train import callbacks as train_callbacks
from milenas_tf.train import config as train_config
from milenas_tf.train import inputs as train_inputs
from milenas_tf.train import model as train_model


@dataclasses.dataclass
class TrainedModel:
  """A training run's network with saved weights loaded.

  Attributes:
    model: the `TrainModel` (its `network` is the evaluation network).
    config: the run's configuration.
    info: the `DatasetInfo` it was trained on (image shape, statistics, class names).
    epoch: the epoch the weights are from.
    weights_path: the `.weights.h5` file they were loaded from.
  """
  model: train_model.TrainModel
  config: ml_collections.ConfigDict
  info: datasets.DatasetInfo
  epoch: int
  weights_path: str = ""


def _run_config(output_dir: str) -> ml_collections.ConfigDict:
  """A training run's configuration; a key an earlier version lacked keeps its default."""
  saved = run_directory.read_config(output_dir)
  if saved is None:
    raise UserInputError(
        f"{output_dir} holds no training run ({run_directory.CONFIG_FILE} is missing); "
        "pass the --output_dir of bin/train.py.")
  if "method" in saved and "genotype" not in saved:
    raise UserInputError(
        f"{output_dir} holds a search, not a training run; train its cell with "
        f"bin/train.py --config.genotype={os.path.join(output_dir, 'genotype.json')}.")
  config = train_config.default_config()
  config.update(saved)
  return config


def build_with_weights(config: ml_collections.ConfigDict, info: datasets.DatasetInfo,
                       weights_path: str) -> train_model.TrainModel:
  """The `TrainModel` of a config with weights from a `.weights.h5` file.

  Raises:
    UserInputError: if the file is missing or holds another network's weights.
  """
  if not os.path.exists(weights_path):
    raise UserInputError(f"{weights_path} does not exist; train at least one epoch "
                         "first, or give the path of a .weights.h5 file.")
  model = train_model.build_train_model(config, info, 1)
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
    best_dir = os.path.join(output_dir, train_callbacks.BEST_DIR)
    path = os.path.join(best_dir, train_callbacks.BestWeights.WEIGHTS)
    epoch = train_callbacks.BestWeights.read(best_dir).get("epoch", 0)
  else:
    checkpoint_dir = os.path.join(output_dir, run_directory.CHECKPOINT_DIR)
    found = checkpoint.latest(checkpoint_dir, config.epochs)
    path = found.weights if found else os.path.join(checkpoint_dir, checkpoint.WEIGHTS)
    epoch = found.epochs_done if found else 0
  if not os.path.exists(path):
    raise UserInputError(f"{path} does not exist; train at least one epoch first.")
  info = train_inputs.run_dataset_info(output_dir, config)
  return TrainedModel(build_with_weights(config, info, path), config, info, epoch, path)


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
    ds = train_inputs.load_datasets(config)[1]
  else:
    ds = datasets.eval_dataset(config.dataset, split, config.batch_size,
                               data_dir=config.data_dir or None,
                               source=config.data_source, limit=config.limit or None)
  result = trained.model.evaluate(ds, verbose=0, return_dict=True)
  return {**{k: float(v) for k, v in result.items()}, "epoch": trained.epoch}
