"""Training a searched cell from scratch, as a task of the run driver (`core.driver`).

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

from milenas_tf.core import driver
from milenas_tf.core import files
from milenas_tf.train import callbacks as train_callbacks
from milenas_tf.train import config as train_config
from milenas_tf.train import inputs as train_inputs
from milenas_tf.train import model as train_model


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


class TrainingTask(driver.Task):
  """Trains an evaluation network: the recipe's data, model, drop path and best weights."""

  kind = "training"

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    return train_config.default_config()

  def validate(self) -> None:
    train_config.validate(self.config)

  def build_inputs(self, epoch: tf.Variable) -> driver.Inputs:
    return driver.Inputs(*train_inputs.load_datasets(self.config, epoch),
                         in_memory=self.config.dataset != "imagenet")

  def build_model(self, inputs: driver.Inputs) -> train_model.TrainModel:
    return train_model.build_train_model(self.config, inputs.info, inputs.steps_per_epoch)

  def write_start(self, output_dir: str, inputs: driver.Inputs) -> None:
    files.write_json_atomic(os.path.join(output_dir, train_inputs.DATASET_FILE),
                            dataclasses.asdict(inputs.info))

  def callbacks(self, output_dir: str, log_dir: str) -> list[keras.callbacks.Callback]:
    return [train_callbacks.DropPathSchedule(self.config.drop_path_rate, self.config.epochs),
            train_callbacks.BestWeights(os.path.join(output_dir, train_callbacks.BEST_DIR))]

  def finish(self, model: train_model.TrainModel, inputs: driver.Inputs,
             progress: driver.Progress) -> TrainResult:
    """Evaluates the final weights on the test split."""
    test = model.evaluate(inputs.validation, verbose=0, return_dict=True)
    best = train_callbacks.BestWeights.read(
        os.path.join(progress.output_dir, train_callbacks.BEST_DIR))
    return TrainResult(progress.history, test, best, progress.output_dir,
                       progress.resumed_after)


def run_training(config: ml_collections.ConfigDict, output_dir: str, *,
                 verbose: int | str = "auto",
                 extra_callbacks: list[keras.callbacks.Callback] | None = None
                 ) -> TrainResult:
  """Trains a genotype's network; resumes from `output_dir` when it holds this run.

  Args:
    config: a configuration like `train.config.default_config()`.
    output_dir: where checkpoints, logs and the best weights go.
    verbose: Keras progress-bar verbosity.
    extra_callbacks: more Keras callbacks for `fit`.

  Returns:
    The `TrainResult`.

  Raises:
    UserInputError: for a bad configuration, missing data or an output directory
      holding another run.
  """
  return driver.run_experiment(TrainingTask(config), output_dir, verbose=verbose,
                               extra_callbacks=extra_callbacks)
