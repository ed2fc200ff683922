"""The data of a training configuration: its pipelines and what they hold.

`dataset.json` in a training run's directory records the `DatasetInfo` the network
was trained on (image shape, normalisation statistics, class names), which the
export and evaluation read back without loading the data.
"""

from __future__ import annotations

import os

import ml_collections
import tensorflow as tf

from milenas_tf.core import files
from milenas_tf.data import datasets
from milenas_tf.data import imagenet
from milenas_tf.train import config as train_config

DATASET_FILE = "dataset.json"


def load_datasets(config: ml_collections.ConfigDict, epoch: tf.Variable | int = 0
                  ) -> tuple[tf.data.Dataset, tf.data.Dataset, datasets.DatasetInfo, int]:
  """The training and test pipelines of a config, their `DatasetInfo` and the
  number of training steps per epoch.

  `epoch` is the epoch the in-memory datasets produce (`datasets.train_datasets`);
  ImageNet reshuffles on every iteration instead. ImageNet's test split is its
  validation set (`imagenet.imagenet_datasets`).

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
  options = train_config.run_imagenet_options(config)
  train_ds, test_ds, info = imagenet.imagenet_datasets(
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


def config_dataset_info(config: ml_collections.ConfigDict) -> datasets.DatasetInfo:
  """The `DatasetInfo` of a config's dataset (ImageNet's class names come from its data).

  Raises:
    UserInputError: for an unknown dataset, or missing ImageNet data.
  """
  if config.dataset != "imagenet":
    return datasets.dataset_info(config.dataset)
  return load_datasets(config)[2]


def run_dataset_info(output_dir: str, config: ml_collections.ConfigDict
                     ) -> datasets.DatasetInfo:
  """The run's `DatasetInfo`: from `dataset.json`, else from the dataset itself."""
  saved = files.read_json(os.path.join(output_dir, DATASET_FILE))
  if saved is not None:
    return datasets.DatasetInfo(**{k: tuple(v) if isinstance(v, list) else v
                                   for k, v in saved.items()})
  return config_dataset_info(config)
