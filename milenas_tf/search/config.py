"""The search configuration: the paper's setting as plain data, and its validation.

`default_config()` is the paper's CIFAR-10 search (DESIGN.md §3, the reference
code); the files of `configs/` adjust it. `validate(config)` checks every field,
its type and its range before any work starts.
"""

from __future__ import annotations

import ml_collections

from milenas_tf.core import validation
from milenas_tf.core.errors import UserInputError
from milenas_tf.data import datasets
from milenas_tf.search import second_order
from milenas_tf.search import update_rules
from milenas_tf.space import genotypes


def default_config() -> ml_collections.ConfigDict:
  """The paper's search setting (CIFAR-10; DESIGN.md §3, the reference code)."""
  config = ml_collections.ConfigDict()
  # Data.
  config.dataset = "cifar10"         # fashion_mnist | cifar10
  config.data_dir = ""               # "" = the dataset's default location
  config.data_source = "auto"        # auto | idx | tfds (Fashion-MNIST)
  config.limit = 0                   # use the first N training images only (0 = all)
  config.train_portion = 0.5         # search-train share of the training split
  config.augment = True              # random crop (pad 4) and flip
  config.seed = 2
  # Network.
  config.init_channels = 16
  config.num_cells = 8
  # Search.
  # milenas | darts_1st | single_level | milenas_2nd | darts_2nd
  # | gdas | milenas_gdas (one Gumbel-sampled op per edge and step)
  config.method = "milenas"
  config.order = "reference"         # reference (3 passes) | fused (2 passes)
  # Second-order methods only (see milenas_tf/search/second_order.py).
  # finite_difference (the papers') | finite_difference_combined (one central difference
  # for both splits of milenas_2nd: 2 passes instead of 4) | exact (nested tapes)
  # | exact_recompute (exact, in two segments: less memory, one more pass through the
  # cells before the first reduction)
  config.hessian = "finite_difference"
  # sgd (the seed's w - xi grad_w L_tr) | darts (DARTS's code: momentum and decay)
  # | reference_code (the official MiLeNAS code: alpha stepped with w, no momentum)
  config.virtual_step = "sgd"
  # Gumbel methods only (gdas, milenas_gdas; milenas_tf/search/gumbel.py): the sampling
  # temperature falls linearly from tau_max at the first epoch to tau_min at the last.
  config.gumbel_tau_max = 10.0
  config.gumbel_tau_min = 0.1
  config.lambda_train = 1.0          # weight of grad_alpha L_train (reference code's lambda)
  config.lambda_val = 1.0            # weight of grad_alpha L_val (paper Eq. 6's lambda)
  config.epochs = 50
  config.batch_size = 64
  # Optimisers: w by SGD, alpha by Adam, both with PyTorch's update rules and coupled L2
  # decay (milenas_tf/core/optimization.py).
  config.learning_rate = 0.025
  config.learning_rate_min = 0.001   # cosine annealing floor, reached after `epochs`
  config.momentum = 0.9
  config.weight_decay = 3e-4
  # Global-norm clipping of grad_w: 0, as the official MiLeNAS search scripts (their
  # clip_grad_norm_ call acts on alpha's gradients, which are then discarded);
  # 5 is the DARTS paper's setting.
  config.grad_clip = 0.0
  config.arch_learning_rate = 3e-4
  config.arch_weight_decay = 1e-3
  # Model-size-based search (milenas_tf/search/size.py): every epoch, the derived cells'
  # convolution and skip counts and their network's parameters, and the best search-val
  # genotype of each (normal, reduction) convolution count under genotypes/by_size/.
  config.track_size = True
  # Stop the search once the derived normal cell holds this many convolutions and the
  # reduction cell `early_stop_reduce_convs` (the reference code's rule: 6 and 0); -1: off.
  config.early_stop_normal_convs = -1
  config.early_stop_reduce_convs = 0
  # TensorFlow's op determinism: two runs with the same seed on the same machine and
  # software give the same alpha and genotype (slower; see docs/search.md).
  config.deterministic = False
  # Distribution (milenas_tf/core/distribution.py, docs/distributed.md); batch_size is global.
  config.distribution = "auto"       # auto | default | mirrored | multi_worker | /gpu:0,/gpu:1
  # Several replicas: batch norm with the global batch's statistics, so that a step equals
  # one device's on the global batch; False: each replica's own (PyTorch DataParallel's),
  # without the all-reduce every batch norm costs (docs/distributed.md).
  config.sync_batch_norm = True
  # Several workers: the run stops when no step finishes for this long (0: waits for ever).
  config.worker_timeout_s = 600.0
  config.remapping = "auto"          # Grappler op fusion: auto (off on CPUs) | on | off
  config.graph_optimizer = "light"   # Grappler: light (one round, fast first step) | full
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks a search configuration as a whole: fields, types and ranges.

  Raises:
    UserInputError: naming the first bad field and what it may be.
  """
  validation.check_fields(config, default_config(), "search")
  validation.check_choice("dataset name", config.dataset, datasets.DATASETS)
  validation.check_choice("data source", config.data_source, datasets.SOURCES)
  validation.check_int("config.limit", config.limit, minimum=0)
  validation.check_number("config.train_portion", config.train_portion, 0, 1,
                          exclude_minimum=True, exclude_maximum=True)
  validation.check_int("config.seed", config.seed, minimum=0)
  validation.check_int("config.init_channels", config.init_channels, minimum=2)
  validation.check_int("config.num_cells", config.num_cells, minimum=3)
  update_rules.get_rule(config.method)
  validation.check_choice("update order", config.order, update_rules.ORDERS)
  validation.check_choice("hessian", config.hessian, second_order.HESSIANS)
  validation.check_choice("virtual step", config.virtual_step, second_order.VIRTUAL_STEPS)
  for key in ("gumbel_tau_max", "gumbel_tau_min"):
    validation.check_number(f"config.{key}", config[key], 0, exclude_minimum=True)
  if config.gumbel_tau_min > config.gumbel_tau_max:
    raise UserInputError(f"config.gumbel_tau_min ({config.gumbel_tau_min}) is above "
                         f"config.gumbel_tau_max ({config.gumbel_tau_max}); set min <= max.")
  for key in ("lambda_train", "lambda_val", "learning_rate_min", "weight_decay",
              "grad_clip", "arch_weight_decay"):
    validation.check_number(f"config.{key}", config[key], 0)
  for key in ("learning_rate", "arch_learning_rate"):
    validation.check_number(f"config.{key}", config[key], 0, exclude_minimum=True)
  validation.check_number("config.momentum", config.momentum, 0, 1, exclude_maximum=True)
  validation.check_int("config.early_stop_normal_convs", config.early_stop_normal_convs,
                       minimum=-1)
  validation.check_int("config.early_stop_reduce_convs", config.early_stop_reduce_convs,
                       minimum=0)
  for key in ("early_stop_normal_convs", "early_stop_reduce_convs"):
    if config[key] > 2 * genotypes.NUM_NODES:
      raise UserInputError(f"config.{key} is {config[key]}, but a cell has "
                           f"{2 * genotypes.NUM_NODES} operations; use at most that.")
  if config.early_stop_normal_convs >= 0 and not config.track_size:
    raise UserInputError("config.early_stop_normal_convs needs the size tracking; set "
                         "config.track_size=true or the early stop to -1.")
  validation.check_run_options(config)
