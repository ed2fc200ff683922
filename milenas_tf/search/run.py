"""The architecture search as a task of the run driver (`core.driver`).

`run_search(config, output_dir)` searches a cell and fills `output_dir` with:

- `config.json`: the configuration of the run (a rerun must match it);
- `genotype.json` (latest, with its epoch) and `genotypes/epoch_NNN.json`;
- `genotypes/by_size/nN_rR.json`: the best search-val genotype of each
  (normal, reduction) convolution count (`size`; with `config.track_size`);
- `epochs.jsonl`: one line per epoch: wall seconds, losses, accuracies and the
  derived cells' size (`normal_convs`, `reduce_convs`, `normal_skips`, `params`);
- `alphas.npz`: the final alpha (`alphas_normal`, `alphas_reduce`);
- `alphas_history.npz`: alpha after every epoch; at the end its plots
  `alphas_normal.png`, `alphas_reduce.png` (`alpha_history`);
- `size.png`: at the end, the derived cells' size against the epoch;
- `normal.png`, `reduce.png`: the final cells drawn;
- `checkpoints/`: the state of the last finished epoch (weights, alpha, both
  optimisers, epoch), from which a rerun with the same directory resumes;
- `logs/`: TensorBoard (losses, accuracies, the cells' size, learning rates,
  softmax(alpha) per edge as images and tables, each edge's entropy, the
  genotype as text).

With `config.early_stop_normal_convs` set, the search ends after the first epoch
whose derived cells hold the target convolution counts; `genotype.json` then
records that epoch and `"stopped_early": true`, and rerunning the command finds
the run finished.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import ml_collections
import tensorflow as tf

from milenas_tf.core import callbacks
from milenas_tf.core import driver
from milenas_tf.core import files
from milenas_tf.core import run_directory
from milenas_tf.data import datasets
from milenas_tf.search import alpha_history
from milenas_tf.search import callbacks as search_callbacks
from milenas_tf.search import config as search_config
from milenas_tf.search import model as search_model
from milenas_tf.search import size as cell_size
from milenas_tf.space import drawing
from milenas_tf.space import genotypes


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


class SearchTask(driver.Task):
  """Searches a cell: the search network, its two data streams and the final cell."""

  kind = "search"

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    return search_config.default_config()

  def validate(self) -> None:
    search_config.validate(self.config)

  def build_inputs(self, epoch: tf.Variable) -> driver.Inputs:
    config = self.config
    train_ds, val_ds, info = datasets.search_datasets(
        config.dataset, config.batch_size, config.train_portion,
        data_dir=config.data_dir or None, source=config.data_source, seed=config.seed,
        limit=config.limit or None, augment=config.augment, epoch=epoch)
    return driver.Inputs(train_ds, val_ds, info, int(train_ds.cardinality()))

  def build_model(self, inputs: driver.Inputs) -> search_model.SearchModel:
    config = self.config
    self._meter = cell_size.SizeMeter(inputs.info.num_classes, inputs.info.image_shape,
                                      config.init_channels, config.num_cells)
    return search_model.build_search_model(
        inputs.info.num_classes, inputs.info.image_shape,
        init_channels=config.init_channels, num_cells=config.num_cells,
        method=config.method, order=config.order, epochs=config.epochs,
        steps_per_epoch=inputs.steps_per_epoch, learning_rate=config.learning_rate,
        learning_rate_min=config.learning_rate_min, momentum=config.momentum,
        weight_decay=config.weight_decay, grad_clip=config.grad_clip,
        arch_learning_rate=config.arch_learning_rate,
        arch_weight_decay=config.arch_weight_decay, lambda_train=config.lambda_train,
        lambda_val=config.lambda_val, hessian=config.hessian,
        virtual_step=config.virtual_step, gumbel_tau_max=config.gumbel_tau_max,
        gumbel_tau_min=config.gumbel_tau_min, sync_batch_norm=config.sync_batch_norm)

  def _early_stop(self) -> tuple[int, int] | None:
    config = self.config
    if config.early_stop_normal_convs < 0:
      return None
    return config.early_stop_normal_convs, config.early_stop_reduce_convs

  def finished(self, model: search_model.SearchModel, epochs_done: int) -> bool:
    """Also finished when the restored cells had met the early stop."""
    if super().finished(model, epochs_done):
      return True
    target = self._early_stop()
    if not epochs_done or target is None:
      return False
    normal, reduce = cell_size.conv_counts(model.network.genotype())
    return (normal, reduce) == target

  def callbacks(self, output_dir: str, log_dir: str) -> list[keras.callbacks.Callback]:
    found = [search_callbacks.ArchitectureLogger(output_dir, log_dir)]
    if self.config.track_size:
      found.append(search_callbacks.CellSizeLogger(output_dir, self._meter,
                                                   self._early_stop()))
    return found

  def finish(self, model: search_model.SearchModel, inputs: driver.Inputs,
             progress: driver.Progress) -> SearchResult:
    """Writes the final genotype and alpha, the cell drawings and the plots over epochs."""
    output_dir, epochs = progress.output_dir, progress.epochs_done
    genotype = model.network.genotype()
    genotypes.save_genotype(genotype, os.path.join(output_dir, "genotype.json"),
                            metadata={"epoch": epochs, "final": True,
                                      "stopped_early": epochs < self.config.epochs})
    files.save_arrays_atomic(os.path.join(output_dir, "alphas.npz"),
                             alphas_normal=model.network.alphas_normal.numpy(),
                             alphas_reduce=model.network.alphas_reduce.numpy())
    history = alpha_history.load(output_dir)
    for cell in genotypes.CELL_TYPES:
      drawing.plot_genotype(genotype, os.path.join(output_dir, f"{cell}.png"), cell=cell)
      if history is not None:
        alpha_history.plot(history, cell, os.path.join(output_dir, f"alphas_{cell}.png"))
    log = os.path.join(output_dir, run_directory.EPOCH_LOG)
    if self.config.track_size and os.path.exists(log):
      cell_size.plot(callbacks.read_epoch_log(log), os.path.join(output_dir, "size.png"))
    return SearchResult(genotype, progress.history, epochs, output_dir,
                        progress.resumed_after)


def run_search(config: ml_collections.ConfigDict, output_dir: str, *,
               verbose: int | str = "auto",
               extra_callbacks: list[keras.callbacks.Callback] | None = None
               ) -> SearchResult:
  """Searches a cell architecture; resumes from `output_dir` when it holds this run.

  Args:
    config: a configuration like `search.config.default_config()`.
    output_dir: where results, checkpoints and logs go.
    verbose: Keras progress-bar verbosity.
    extra_callbacks: more Keras callbacks for `fit`.

  Returns:
    The `SearchResult`.

  Raises:
    UserInputError: for a bad configuration, missing data or an output directory
      holding another run.
  """
  return driver.run_experiment(SearchTask(config), output_dir, verbose=verbose,
                               extra_callbacks=extra_callbacks)
