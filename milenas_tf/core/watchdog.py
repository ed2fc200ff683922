"""The stall watchdog: a cluster whose steps stop finishing ends with one line.

When a worker of a `MultiWorkerMirroredStrategy` cluster dies, TensorFlow's
coordination service misses its heartbeats and the others' next collective fails
(a stopped process, SIGSTOP, sends none either). When a worker hangs while its
heartbeat thread runs on (deadlocked, stuck in its input or a file system), the
others wait in that collective for ever. Collective timeouts are no cure in
TensorFlow 2.21: each one waits on a thread of its own, thousands a second under
batch norm's all-reduces.

`StallWatchdog` instead notes the time of every finished training and validation
batch and epoch; a thread of its own aborts the process's collective operations
when none has come for `timeout_s` seconds. The step waiting in a collective then
fails with `DeadlineExceededError`, which the scripts print as the one line of a
lost worker, after the usual cleanup. A phase (training, validation) is not watched
until its first batch has finished in this `fit`: that batch traces the step, which
takes minutes at the paper configuration under several workers.
"""

from __future__ import annotations

import threading
import time

import keras
import tensorflow as tf
from tensorflow.python.eager import context  # abort_collective_ops has no public name


def abort_collectives(message: str) -> None:
  """Fails this process's pending and future collective operations with `message`."""
  context.context().abort_collective_ops(tf.errors.DEADLINE_EXCEEDED, message)


class StallWatchdog(keras.callbacks.Callback):
  """Aborts the collectives when no batch or epoch has finished for `timeout_s` seconds.

  Args:
    timeout_s: seconds without a finished batch or epoch (> 0).
    field: the configuration field that sets `timeout_s`, named in the error.
    abort: called once with the error's message when the wait is over.
  """

  def __init__(self, timeout_s: float, field: str = "config.worker_timeout_s",
               abort=abort_collectives):
    super().__init__()
    self.timeout_s = float(timeout_s)
    self.field = field
    self.abort = abort
    self.fired = False
    self._last = None  # when progress was last seen; None while not watching
    self._seen = set()  # phases whose first batch has finished
    self._stop = threading.Event()
    self._thread = None

  def _progress(self, phase: str | None = None) -> None:
    if phase:
      self._seen.add(phase)
    if phase or self._seen:
      self._last = time.monotonic()

  def _await_first(self, phase: str) -> None:
    if phase not in self._seen:
      self._last = None

  def _watch(self) -> None:
    while not self._stop.wait(min(1.0, self.timeout_s / 10)):
      last = self._last
      if last is not None and time.monotonic() - last > self.timeout_s:
        self.fired = True
        self.abort(f"no step finished in {self.timeout_s:g} s ({self.field})")
        return

  def on_train_begin(self, logs=None):
    self._seen.clear()
    self._last = None
    self._stop.clear()
    self._thread = threading.Thread(target=self._watch, name="stall_watchdog", daemon=True)
    self._thread.start()

  def on_train_end(self, logs=None):
    self._stop.set()
    if self._thread is not None:
      self._thread.join()

  def on_epoch_begin(self, epoch, logs=None):
    self._await_first("train")

  def on_train_batch_end(self, batch, logs=None):
    self._progress("train")

  def on_test_begin(self, logs=None):
    self._await_first("test")

  def on_test_batch_end(self, batch, logs=None):
    self._progress("test")

  def on_test_end(self, logs=None):
    self._progress()

  def on_epoch_end(self, epoch, logs=None):
    self._progress()
