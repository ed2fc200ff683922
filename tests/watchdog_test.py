"""The stall watchdog: when it waits, when it aborts, and that the abort fails a collective.

The whole path (a worker stopped with SIGSTOP, the other ending with one line) runs in
multi_worker_test.
"""

import subprocess
import sys
import textwrap
import threading
import time

from milenas_tf.core import watchdog

TIMEOUT_S = 0.5


class Aborts:
  """Records the watchdog's abort messages."""

  def __init__(self):
    self.messages = []
    self.event = threading.Event()

  def __call__(self, message):
    self.messages.append(message)
    self.event.set()


def watching(**kwargs):
  aborts = Aborts()
  dog = watchdog.StallWatchdog(TIMEOUT_S, abort=aborts, **kwargs)
  dog.on_train_begin()
  dog.on_epoch_begin(0)
  return dog, aborts


def test_first_batch_is_not_watched():
  # The first batch traces the step: however long it takes, nothing is aborted.
  dog, aborts = watching()
  time.sleep(4 * TIMEOUT_S)
  dog.on_train_end()
  assert aborts.messages == [] and not dog.fired


def test_steps_that_keep_finishing_are_not_aborted():
  dog, aborts = watching()
  for batch in range(20):
    dog.on_train_batch_end(batch)
    time.sleep(TIMEOUT_S / 10)
  dog.on_train_end()
  assert aborts.messages == []


def test_no_step_for_the_timeout_aborts_once_with_the_field():
  dog, aborts = watching(field="config.worker_timeout_s")
  dog.on_train_batch_end(0)
  assert aborts.event.wait(timeout=30)
  time.sleep(3 * TIMEOUT_S)
  dog.on_train_end()
  assert aborts.messages == ["no step finished in 0.5 s (config.worker_timeout_s)"]
  assert dog.fired


def test_validation_waits_for_its_own_first_batch():
  # Validation's first batch traces its step too; its end resumes the watch.
  dog, aborts = watching()
  dog.on_train_batch_end(0)
  dog.on_test_begin()
  time.sleep(4 * TIMEOUT_S)
  assert aborts.messages == []
  dog.on_test_batch_end(0)
  assert aborts.event.wait(timeout=30)
  dog.on_train_end()


def test_a_new_fit_waits_for_its_first_batch_again():
  dog, aborts = watching()
  dog.on_train_batch_end(0)
  dog.on_train_end()
  dog.on_train_begin()  # a resumed run traces its step again
  dog.on_epoch_begin(1)
  time.sleep(4 * TIMEOUT_S)
  dog.on_train_end()
  assert aborts.messages == []


# In a process of its own: an abort lasts for the rest of the process.
ABORT = textwrap.dedent("""
    import tensorflow as tf
    from milenas_tf.core import watchdog

    def all_reduce():
      return tf.raw_ops.CollectiveReduceV2(
          input=tf.constant([1.0]), group_size=1, group_key=1, instance_key=1,
          ordering_token=[], merge_op="Add", final_op="Id")

    print("before:", all_reduce().numpy().tolist())
    watchdog.abort_collectives("no step finished in 5 s (config.worker_timeout_s)")
    try:
      all_reduce()
    except tf.errors.DeadlineExceededError as e:
      print("after:", e.message.splitlines()[0])
""")


def test_abort_fails_collectives_with_the_message():
  # A one-member collective group runs without a cluster; after the abort it fails
  # with the watchdog's message, as a step waiting for a hung worker does.
  proc = subprocess.run([sys.executable, "-c", ABORT], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "before: [1.0]" in proc.stdout
  assert ("Collective ops is aborted by: no step finished in 5 s "
          "(config.worker_timeout_s)") in proc.stdout, proc.stdout
