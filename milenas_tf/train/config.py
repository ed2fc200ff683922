"""Training configurations: the recipes as plain data, and their validation.

`default_config()` is the CIFAR-10 recipe and `imagenet_config()` the ImageNet
mobile one (DESIGN.md §4; DARTS Appendix A.2, MiLeNAS supplementary Section A);
the files of `configs/` adjust them. `validate(config)` checks every field, its
type and its range before any work starts.
"""

from __future__ import annotations

import ml_collections

from milenas_tf.core import precision
from milenas_tf.core import validation
from milenas_tf.data import datasets
from milenas_tf.data import imagenet
from milenas_tf.space import genotypes
from milenas_tf.train import networks

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
  config.deterministic = False        # TensorFlow's op determinism (milenas_tf/core/determinism.py)
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
  # Distribution (milenas_tf/core/distribution.py); batch_size is the global batch.
  config.distribution = "auto"        # auto | default | mirrored | multi_worker | /gpu:0,/gpu:1
  # Several replicas: batch norm with the global batch's statistics, so that a step equals
  # one device's on the global batch; False: each replica's own (PyTorch DataParallel's),
  # without the all-reduce every batch norm costs (docs/distributed.md).
  config.sync_batch_norm = True
  # Several workers: the run stops when no step finishes for this long (0: waits for ever).
  config.worker_timeout_s = 600.0
  config.scale_learning_rate = False  # learning_rate * batch_size / base_batch_size
  config.base_batch_size = 96         # the batch the learning rate is given for
  config.precision = "auto"           # auto (mixed_float16 on GPUs) | float32 | mixed_float16
  config.remapping = "auto"           # Grappler op fusion: auto (off on CPUs) | on | off
  config.graph_optimizer = "light"    # Grappler: light (one round, fast first step) | full
  return config


def imagenet_options() -> ml_collections.ConfigDict:
  """`config.imagenet`: the options of the ImageNet input (`milenas_tf.data.imagenet`).

  `config.data_dir` and `config.data_source` (auto | tfrecord | folder | tfds) say
  where the images are; these say how they are read.
  """
  options = ml_collections.ConfigDict()
  options.image_size = 224            # side of the training and evaluation crops
  options.resize_size = 256           # shorter side before the evaluation centre crop
  options.label_offset = 1            # TFRecord labels run from 1 to 1000
  options.synsets = ""                # TFRecord: file of wnids, label 0 first (class names)
  options.manual_dir = ""             # tfds: folder with the ILSVRC-2012 tar files
  options.shuffle_buffer = imagenet.DEFAULT_SHUFFLE_BUFFER
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


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks a training configuration as a whole: fields, types and ranges.

  Raises:
    UserInputError: naming the first bad field and what it may be.
  """
  validation.check_fields(config, default_config(), "training",
                          optional={"imagenet": imagenet_options()})
  genotypes.load_genotype(config.genotype)
  validation.check_choice("setting", config.setting, sorted(networks.SETTINGS))
  validation.check_int("config.init_channels", config.init_channels)
  validation.check_int("config.num_cells", config.num_cells, minimum=3)
  validation.check_number("config.auxiliary_weight", config.auxiliary_weight, 0)
  validation.check_number("config.drop_path_rate", config.drop_path_rate, 0, 1,
                          exclude_maximum=True)
  validation.check_int("config.mult_add_budget", config.mult_add_budget, minimum=0)
  validation.check_choice("dataset name", config.dataset, DATASETS)
  sources = imagenet.SOURCES if config.dataset == "imagenet" else datasets.SOURCES
  validation.check_choice("data source", config.data_source, sources)
  validation.check_int("config.limit", config.limit, minimum=0)
  validation.check_int("config.cutout_length", config.cutout_length, minimum=0)
  validation.check_number("config.learning_rate", config.learning_rate, 0,
                          exclude_minimum=True)
  validation.check_choice("schedule", config.schedule, SCHEDULES)
  validation.check_number("config.learning_rate_min", config.learning_rate_min, 0)
  validation.check_number("config.decay_rate", config.decay_rate, 0, 1,
                          exclude_minimum=True)
  validation.check_number("config.momentum", config.momentum, 0, 1, exclude_maximum=True)
  for key in ("weight_decay", "grad_clip"):
    validation.check_number(f"config.{key}", config[key], 0)
  validation.check_number("config.label_smoothing", config.label_smoothing, 0, 1,
                          exclude_maximum=True)
  validation.check_int("config.base_batch_size", config.base_batch_size)
  validation.check_choice("precision", config.precision, precision.PRECISIONS)
  validation.check_run_options(config)
  options = run_imagenet_options(config)
  for key in ("image_size", "resize_size", "shuffle_buffer", "train_examples"):
    validation.check_int(f"config.imagenet.{key}", options[key])
  validation.check_int("config.imagenet.label_offset", options.label_offset, minimum=0)


def run_imagenet_options(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.imagenet` over the defaults of `imagenet_options()`."""
  options = imagenet_options()
  options.update(config.get("imagenet") or {})
  return options
