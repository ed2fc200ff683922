"""Architecture search: configuration, model construction and the resumable run.

`run_search(config, output_dir)` searches a cell and fills `output_dir` with:

- `config.json`: the configuration of the run (a rerun must match it);
- `genotype.json` (latest, with its epoch) and `genotypes/epoch_NNN.json`;
- `epochs.jsonl`: one line per epoch: wall seconds, losses and accuracies;
- `alphas.npz`: the final alpha (`alphas_normal`, `alphas_reduce`);
- `normal.png`, `reduce.png`: the final cells drawn;
- `checkpoints/`: the state of the last finished epoch (weights, alpha, both
  optimisers, epoch), from which a rerun with the same directory resumes;
- `logs/`: TensorBoard (losses, accuracies, learning rates, softmax(alpha) per
  edge as images and tables, the genotype as text).
"""

from __future__ import annotations

import dataclasses
import os

import keras
import ml_collections
import numpy as np
import tensorflow as tf

from milenas_tf import callbacks
from milenas_tf import datasets
from milenas_tf import distribution
from milenas_tf import genotypes
from milenas_tf import graph_options
from milenas_tf import optimization
from milenas_tf import run_directory
from milenas_tf import second_order
from milenas_tf import update_rules
from milenas_tf.errors import UserInputError
from milenas_tf.search_model import SearchModel
from milenas_tf.search_network import SearchNetwork

CONFIG_FILE = run_directory.CONFIG_FILE
EPOCH_LOG = "epochs.jsonl"


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
  config.method = "milenas"          # milenas | darts_1st | single_level | milenas_2nd | darts_2nd
  config.order = "reference"         # reference (3 passes) | fused (2 passes)
  # Second-order methods only (see milenas_tf/second_order.py).
  # finite_difference (the papers') | finite_difference_combined (one central difference
  # for both splits of milenas_2nd: 2 passes instead of 4) | exact (nested tapes)
  # | exact_recompute (exact, in two segments: less memory, one more pass through the
  # cells before the first reduction)
  config.hessian = "finite_difference"
  config.virtual_step = "optimizer"  # optimizer (momentum + decay, reference code) | sgd
  config.lambda_train = 1.0          # weight of grad_alpha L_train (reference code's lambda)
  config.lambda_val = 1.0            # weight of grad_alpha L_val (paper Eq. 6's lambda)
  config.epochs = 50
  config.batch_size = 64
  # Optimisers: w by SGD, alpha by Adam; both with coupled L2 decay.
  config.learning_rate = 0.025
  config.learning_rate_min = 0.001   # cosine annealing floor, reached after `epochs`
  config.momentum = 0.9
  config.weight_decay = 3e-4
  config.grad_clip = 5.0
  config.arch_learning_rate = 3e-4
  config.arch_weight_decay = 1e-3
  # Distribution (milenas_tf/distribution.py; first-order methods); batch_size is global.
  config.distribution = "auto"       # auto | default | mirrored | multi_worker | /gpu:0,/gpu:1
  config.remapping = "auto"          # Grappler op fusion: auto (off on CPUs) | on | off
  config.graph_optimizer = "light"   # Grappler: light (one round, fast first step) | full
  return config


def build_search_model(num_classes: int, input_shape: tuple[int, int, int], *,
                       init_channels: int = 16, num_cells: int = 8,
                       method: str = "milenas", order: str = "reference",
                       epochs: int = 50, steps_per_epoch: int = 1,
                       learning_rate: float = 0.025, learning_rate_min: float = 0.001,
                       momentum: float = 0.9, weight_decay: float = 3e-4,
                       grad_clip: float = 5.0, arch_learning_rate: float = 3e-4,
                       arch_weight_decay: float = 1e-3, lambda_train: float = 1.0,
                       lambda_val: float = 1.0, hessian: str = "finite_difference",
                       virtual_step: str = "optimizer") -> SearchModel:
  """A compiled, built `SearchModel` with the reference optimisers (DESIGN.md §3).

  Build it inside a distribution strategy's scope when one is used.

  Raises:
    UserInputError: for an unknown method or order, or impossible sizes.
  """
  network = SearchNetwork(num_classes, init_channels, num_cells, name="search_network")
  model = SearchModel(network, method=method, order=order, lambda_train=lambda_train,
                      lambda_val=lambda_val, weight_decay=weight_decay,
                      arch_weight_decay=arch_weight_decay, grad_clip=grad_clip,
                      hessian=hessian, virtual_step=virtual_step)
  model.build((None,) + tuple(input_shape))
  schedule = optimization.EpochCosineDecay(learning_rate, learning_rate_min, epochs,
                                           steps_per_epoch)
  model.compile(optimizer=optimization.weight_optimizer(schedule, momentum),
                arch_optimizer=optimization.arch_optimizer(arch_learning_rate))
  model.build_optimizers()
  return model


@dataclasses.dataclass
class SearchResult:
  """What a search produced.

  Attributes:
    genotype: the derived cell architecture.
    history: per-epoch logs of the epochs run by this call.
    epochs_done: epochs finished, including those of earlier runs.
    output_dir: where everything was written.
    resumed_after: epochs finished by earlier runs when this one started.
  """
  genotype: genotypes.Genotype
  history: dict
  epochs_done: int
  output_dir: str
  resumed_after: int = 0


def _check_config(config: ml_collections.ConfigDict) -> None:
  update_rules.get_rule(config.method)
  update_rules.check_order(config.order)
  update_rules.check_choice("hessian", config.hessian, second_order.HESSIANS)
  update_rules.check_choice("virtual step", config.virtual_step, second_order.VIRTUAL_STEPS)
  datasets.dataset_info(config.dataset)
  graph_options.resolve(config.remapping)
  graph_options.check_graph_optimizer(config.graph_optimizer)
  for key in ("epochs", "batch_size", "init_channels", "num_cells"):
    if int(config[key]) < 1:
      raise UserInputError(f"config.{key} must be positive, got {config[key]}.")
  if config.limit < 0:
    raise UserInputError(f"config.limit must be 0 (all) or positive, got {config.limit}.")


def _search_strategy(config: ml_collections.ConfigDict) -> tf.distribute.Strategy:
  """The run's strategy; second-order methods run on one device ("auto" gives them one)."""
  second = config.method in update_rules.SECOND_ORDER_METHODS
  spec = "default" if second and config.distribution == "auto" else config.distribution
  strategy = distribution.strategy_for_batch(spec, config.batch_size)
  if second and strategy.num_replicas_in_sync > 1:
    raise UserInputError(
        f"method {config.method!r} runs on one device (its virtual step assigns the "
        f"weights), but config.distribution={config.distribution!r} gives "
        f"{strategy.num_replicas_in_sync} replicas; set --config.distribution=default.")
  return strategy


def run_search(config: ml_collections.ConfigDict, output_dir: str, *,
               verbose: int | str = "auto",
               extra_callbacks: list[keras.callbacks.Callback] | None = None
               ) -> SearchResult:
  """Searches a cell architecture; resumes from `output_dir` when it holds this run.

  Args:
    config: a configuration like `default_config()`.
    output_dir: where results, checkpoints and logs go.
    verbose: Keras progress-bar verbosity.
    extra_callbacks: more Keras callbacks for `fit`.

  Returns:
    The `SearchResult`.

  Raises:
    UserInputError: for a bad configuration, missing data or an output directory
      holding another run.
  """
  _check_config(config)
  graph_options.apply(config.remapping, config.graph_optimizer)
  strategy = _search_strategy(config)
  resuming = run_directory.check_output_dir(output_dir, config.to_dict(), "search",
                                            defaults=default_config().to_dict())
  keras.utils.set_random_seed(config.seed)
  input_epoch = datasets.epoch_variable()
  train_ds, val_ds, info = datasets.search_datasets(
      config.dataset, config.batch_size, config.train_portion,
      data_dir=config.data_dir or None, source=config.data_source, seed=config.seed,
      limit=config.limit or None, augment=config.augment, epoch=input_epoch)
  steps_per_epoch = int(train_ds.cardinality())
  with strategy.scope():
    model = build_search_model(
        info.num_classes, info.image_shape, init_channels=config.init_channels,
        num_cells=config.num_cells, method=config.method, order=config.order,
        epochs=config.epochs, steps_per_epoch=steps_per_epoch,
        learning_rate=config.learning_rate, learning_rate_min=config.learning_rate_min,
        momentum=config.momentum, weight_decay=config.weight_decay,
        grad_clip=config.grad_clip, arch_learning_rate=config.arch_learning_rate,
        arch_weight_decay=config.arch_weight_decay, lambda_train=config.lambda_train,
        lambda_val=config.lambda_val, hessian=config.hessian,
        virtual_step=config.virtual_step)
  checkpoint_dir = os.path.join(output_dir, "checkpoints")
  if not resuming:  # Written once data and model are known to work.
    os.makedirs(output_dir, exist_ok=True)
    callbacks.write_json_atomic(os.path.join(output_dir, CONFIG_FILE), config.to_dict())
  done = callbacks.EpochCheckpoint.restore(model, checkpoint_dir) if resuming else 0
  if done:
    print(f"Resuming the search in {output_dir} after epoch {done} of {config.epochs}.")
  log_dir = os.path.join(output_dir, "logs")
  history = {}
  if done < config.epochs:
    fit = model.fit(
        train_ds, validation_data=val_ds, epochs=config.epochs, initial_epoch=done,
        verbose=verbose, shuffle=False,
        callbacks=[callbacks.InputEpoch(input_epoch),
                   callbacks.ArchitectureLogger(output_dir, log_dir),
                   keras.callbacks.TensorBoard(log_dir, write_graph=False,
                                               profile_batch=0),
                   callbacks.EpochLog(os.path.join(output_dir, EPOCH_LOG)),
                   callbacks.EpochCheckpoint(checkpoint_dir)] + (extra_callbacks or []))
    history = fit.history
  genotype = model.network.genotype()
  _write_final(model, genotype, output_dir, config.epochs)
  return SearchResult(genotype, history, config.epochs, output_dir, done)


def _write_final(model: SearchModel, genotype: genotypes.Genotype, output_dir: str,
                 epochs: int) -> None:
  genotypes.save_genotype(genotype, os.path.join(output_dir, "genotype.json"),
                          metadata={"epoch": epochs, "final": True})
  tmp = os.path.join(output_dir, "alphas.tmp.npz")
  np.savez(tmp, alphas_normal=model.network.alphas_normal.numpy(),
           alphas_reduce=model.network.alphas_reduce.numpy())
  os.replace(tmp, os.path.join(output_dir, "alphas.npz"))
  for cell in genotypes.CELL_TYPES:
    genotypes.plot_genotype(genotype, os.path.join(output_dir, f"{cell}.png"), cell=cell)
