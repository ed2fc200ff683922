"""The run driver: one resumable sequence for every kind of run.

A run is a `Task` (the search, `search.run.SearchTask`, or the training of a
cell, `train.run.TrainingTask`): it checks its configuration and supplies the
strategy, the data, the model, its own callbacks and what it writes at the end.
`run_experiment(task, output_dir)` does the rest, in this order:

1. check the whole configuration (`task.validate`), before any work starts;
2. set the graph optimiser's options and create the distribution strategy;
3. lock the output directory for the life of the run (`lock.DirectoryLock`: one
   run per directory) and check it: new, or holding this run (to resume);
4. seed every random generator with `config.seed`, and turn TensorFlow's op
   determinism on for the run when `config.deterministic` is set;
5. build the data and, in the strategy's scope, the model;
6. write `config.json` (once data and model are known to work) and the task's
   start files;
7. restore the last finished epoch's checkpoint when resuming;
8. `fit` the remaining epochs with the shared callbacks (input epoch, the
   divergence guard, TensorBoard, the epoch log, the checkpoint) around the
   task's own; the guard comes before every callback that writes the model, so a
   NaN or infinite loss or weight stops the run before it is saved; on several
   workers a watchdog (`watchdog.StallWatchdog`) stops a run whose steps no longer
   finish;
9. return what `task.finish` writes and reports, and release the lock.

Under `MultiWorkerMirroredStrategy` only the chief locks, checks and writes the
output directory; see `run_experiment`.

Modelled on the TF Model Garden's `base_task.Task` and `train_lib.run_experiment`.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import tempfile
from typing import Any

import keras
import ml_collections
import tensorflow as tf

from milenas_tf.core import callbacks
from milenas_tf.core import determinism
from milenas_tf.core import distribution
from milenas_tf.core import divergence
from milenas_tf.core import files
from milenas_tf.core import graph_options
from milenas_tf.core import lock
from milenas_tf.core import run_directory
from milenas_tf.core import watchdog
from milenas_tf.core.errors import UserInputError


@dataclasses.dataclass
class Inputs:
  """The data of a run.

  Attributes:
    train: the training pipeline (`fit`'s data).
    validation: the pipeline evaluated after every epoch.
    info: what the data is (a `data.datasets.DatasetInfo`).
    steps_per_epoch: training steps in one epoch.
    in_memory: whether every worker can build the same global batches cheaply; if
      not (files to read and decode), TensorFlow shares the input out among workers.
  """
  train: tf.data.Dataset
  validation: tf.data.Dataset
  info: Any
  steps_per_epoch: int
  in_memory: bool = True


@dataclasses.dataclass
class Progress:
  """What `run_experiment` did, handed to `Task.finish`.

  Attributes:
    output_dir: the run's directory.
    history: per-epoch logs of the epochs run by this call.
    resumed_after: epochs finished by earlier runs when this one started.
    epochs_done: epochs finished now, earlier runs' included (fewer than
      `config.epochs` after an early stop).
  """
  output_dir: str
  history: dict
  resumed_after: int
  epochs_done: int


class Task(abc.ABC):
  """One kind of run: its configuration, data, model, callbacks and final write.

  Attributes:
    kind: what the run is called in messages ("search", "training").
    config: the run's configuration.
  """

  kind: str = "run"

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @classmethod
  @abc.abstractmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    """The defaults: a field a saved run lacks counts as its default there."""

  @abc.abstractmethod
  def validate(self) -> None:
    """Checks the whole configuration; raises `UserInputError` naming the fix."""

  def strategy(self) -> tf.distribute.Strategy:
    """The run's strategy (`config.distribution`, checked against the batch)."""
    return distribution.strategy_for_batch(self.config.distribution,
                                           self.config.batch_size)

  @abc.abstractmethod
  def build_inputs(self, epoch: tf.Variable) -> Inputs:
    """The data; in-memory pipelines produce the epoch that `epoch` holds."""

  @abc.abstractmethod
  def build_model(self, inputs: Inputs) -> keras.Model:
    """The compiled, built model (called in the strategy's scope)."""

  def finished(self, model: keras.Model, epochs_done: int) -> bool:
    """Whether nothing is left to run after `epochs_done` epochs (a restored model).

    By default, once `config.epochs` are done; a task with an early stop also
    when the restored model had met it.
    """
    return epochs_done >= self.config.epochs

  def write_start(self, output_dir: str, inputs: Inputs) -> None:
    """Writes the task's files of a starting or resuming run (none by default)."""

  def callbacks(self, output_dir: str, log_dir: str) -> list[keras.callbacks.Callback]:
    """The task's own callbacks, run after the input epoch is set and the divergence
    guard has checked the epoch, and before the shared logs and the checkpoint."""
    return []

  @abc.abstractmethod
  def finish(self, model: keras.Model, inputs: Inputs, progress: Progress) -> Any:
    """Writes the final results and returns what the run produced."""


def _check_nothing_lost(output_dir: str) -> None:
  """Refuses to restart a run whose log shows finished epochs but which has no
  checkpoint left (deleted or moved): restarting would silently redo them."""
  log = os.path.join(output_dir, run_directory.EPOCH_LOG)
  logged = callbacks.read_epoch_log(log) if os.path.exists(log) else []
  # Epoch 1 may be logged by a run that stopped before committing its checkpoint.
  if logged and logged[-1]["epoch"] >= 2:
    raise UserInputError(
        f"{output_dir} logged {logged[-1]['epoch']} finished epochs but holds no "
        f"checkpoint ({run_directory.CHECKPOINT_DIR}/ is empty or gone); restore it, or "
        "remove the directory to start the run over.")


def run_experiment(task: Task, output_dir: str, *, verbose: int | str = "auto",
                   extra_callbacks: list[keras.callbacks.Callback] | None = None) -> Any:
  """Runs a task to its last epoch; resumes from `output_dir` when it holds this run.

  Under `MultiWorkerMirroredStrategy` every worker calls this with the same
  configuration and `output_dir`. The chief runs as a single process does; the
  other workers read the chief's checkpoint from `output_dir` to resume, write into
  a temporary directory removed at the end, and show no progress bar. The workers
  check that they agree on the configuration and the epochs done before the first
  step, and on every variable after the last.

  Args:
    task: the run.
    output_dir: where the configuration, checkpoints, logs and results go.
    verbose: Keras progress-bar verbosity.
    extra_callbacks: more Keras callbacks for `fit`, run last.

  Returns:
    What `task.finish` returns.

  Raises:
    UserInputError: for a bad configuration, missing data, an output directory
      holding another run or in use by another process, or workers that disagree.
    DivergenceError: (a `UserInputError`) at the first NaN or infinite loss or weight.
  """
  config = task.config
  task.validate()
  # First: a multi-worker strategy must configure TensorFlow's context before any op.
  strategy = task.strategy()
  graph_options.apply(config.remapping, config.graph_optimizer)
  worker = distribution.worker_of(strategy)
  deterministic = determinism.op_determinism(config.get("deterministic", False))
  if worker.is_chief:
    # Checked under the lock, so that the answer (new, or this run) holds for the run.
    with lock.DirectoryLock(output_dir, task.kind), deterministic:
      return _run_locked(task, output_dir, output_dir, strategy, verbose, extra_callbacks)
  prefix = f"milenas_{task.kind}_worker{worker.index}_"
  with tempfile.TemporaryDirectory(prefix=prefix) as scratch, deterministic:
    result = _run_locked(task, output_dir, scratch, strategy, 0, extra_callbacks)
  # What the task reports as written is where the chief wrote it.
  if dataclasses.is_dataclass(result) and hasattr(result, "output_dir"):
    result = dataclasses.replace(result, output_dir=output_dir)
  return result


def _run_locked(task: Task, output_dir: str, write_dir: str, strategy: tf.distribute.Strategy,
                verbose: int | str, extra_callbacks: list[keras.callbacks.Callback] | None
                ) -> Any:
  """`run_experiment` from the output directory's check on, with the directory locked
  (the chief) or writing into `write_dir` (another worker)."""
  config = task.config
  chief = write_dir == output_dir
  if chief:
    resuming = run_directory.check_output_dir(output_dir, config.to_dict(), task.kind,
                                              defaults=task.default_config().to_dict())
  else:
    resuming = os.path.isdir(os.path.join(output_dir, run_directory.CHECKPOINT_DIR))
  keras.utils.set_random_seed(config.seed)
  input_epoch = callbacks.epoch_variable()
  inputs = task.build_inputs(input_epoch)
  with strategy.scope():
    model = task.build_model(inputs)
  if chief and not resuming:
    os.makedirs(output_dir, exist_ok=True)
    files.write_json_atomic(os.path.join(output_dir, run_directory.CONFIG_FILE),
                            config.to_dict())
  task.write_start(write_dir, inputs)
  checkpoint_dir = os.path.join(output_dir, run_directory.CHECKPOINT_DIR)
  done = (callbacks.EpochCheckpoint.restore(model, checkpoint_dir, config.epochs)
          if resuming else 0)
  if chief and resuming and not done:
    _check_nothing_lost(output_dir)
  several = distribution.worker_of(strategy).count > 1
  if several:
    distribution.check_workers_agree(strategy, {
        "configuration": files.fingerprint(config.to_json(sort_keys=True)),
        "finished epochs": done})
  if done and verbose != 0:
    print(f"Resuming the {task.kind} in {output_dir} after epoch {done} of "
          f"{config.epochs}.")
  history = {}
  if not task.finished(model, done):
    log_dir = os.path.join(write_dir, run_directory.LOG_DIR)
    # Writers of the run's records; the other workers compute what the chief does
    # but keep no records.
    records = [keras.callbacks.TensorBoard(log_dir, write_graph=False, profile_batch=0),
               callbacks.EpochLog(os.path.join(output_dir, run_directory.EPOCH_LOG)),
               callbacks.EpochCheckpoint(checkpoint_dir)] if chief else []
    # A worker that hangs while alive would keep the others waiting in a collective.
    timeout_s = config.get("worker_timeout_s", 0)
    guards = [watchdog.StallWatchdog(timeout_s)] if several and timeout_s > 0 else []
    # In-memory batches: each replica takes its slice of the same global batches.
    train = (distribution.slice_global_batches(strategy, inputs.train)
             if inputs.in_memory else inputs.train)
    fit = model.fit(
        train, validation_data=inputs.validation, epochs=config.epochs,
        initial_epoch=done, verbose=verbose, shuffle=False,
        callbacks=[*guards, callbacks.InputEpoch(input_epoch),
                   divergence.DivergenceGuard(task.kind, divergence.advice_for(config)),
                   *task.callbacks(write_dir, log_dir),
                   *records,
                   *(extra_callbacks or [])])
    history = fit.history
  if several:  # one process has nothing to compare: no digest of every variable
    distribution.check_workers_agree(strategy, {
        "variables after the last step": files.fingerprint(
            *[v.numpy().tobytes() for v in model.variables])})
  ran = len(next(iter(history.values()), []))
  return task.finish(model, inputs, Progress(write_dir, history, done, done + ran))
