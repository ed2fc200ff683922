"""One process of the multi-worker tests: a tiny search or training through the driver.

  python tests/multi_worker_child.py '{"kind": "search", "output_dir": ..., ...}'

Run under `core.launch` (with `TF_CONFIG`: distribution "multi_worker") or alone
(distribution "default"). Options (JSON): kind ("search" or "train"), output_dir,
record (a path prefix: the final alpha and weights go to `<record><worker>.npz`),
method, epochs, limit, float64, eager (the steps run op by op, not traced),
die_at_epoch and die_worker (that worker SIGKILLs itself at the start of that epoch's
second step, or with hang set sleeps there for an hour, alive and sending heartbeats;
it writes the time to `<record>died`), worker_timeout_s (the configuration's),
stop_after (epochs; the run stops there and can be resumed).
"""

import json
import os
import signal
import sys
import time

from milenas_tf.core import cli  # pylint: disable=unused-import  # as the scripts: oneDNN on

import keras  # pylint: disable=g-import-not-at-top,wrong-import-order
import numpy as np
import tensorflow as tf

OPTIONS = json.loads(sys.argv[1])
if OPTIONS.get("float64"):
  keras.config.set_floatx("float64")
  keras.config.set_dtype_policy("float64")

# pylint: disable=g-import-not-at-top,wrong-import-position
from milenas_tf.core import distribution
from milenas_tf.search import config as search_config
from milenas_tf.search import run as search_run
from milenas_tf.train import config as train_config
from milenas_tf.train import run as train_run
# pylint: enable=g-import-not-at-top,wrong-import-position


def worker_index() -> int:
  config = json.loads(os.environ.get("TF_CONFIG", "{}"))
  return int(config.get("task", {}).get("index", 0))


class Control(keras.callbacks.Callback):
  """Records the final state; dies or stops where the options say."""

  def on_train_batch_begin(self, batch, logs=None):
    if (batch == 1 and self.epoch + 1 == OPTIONS.get("die_at_epoch")
        and worker_index() == OPTIONS.get("die_worker")):
      with open(OPTIONS["record"] + "died", "w") as f:
        f.write(str(time.time()))
      if OPTIONS.get("hang"):
        time.sleep(3600)
      os.kill(os.getpid(), signal.SIGKILL)

  def on_train_begin(self, logs=None):
    # The steps only: the driver's checks before and after use all_gather, which
    # has no eager form.
    tf.config.run_functions_eagerly(bool(OPTIONS.get("eager")))
    np.savez(f"{OPTIONS['record']}{worker_index()}_start.npz", **variables(self.model))

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    self.losses = getattr(self, "losses", []) + [float(logs["loss"])]

  def on_epoch_end(self, epoch, logs=None):
    if epoch + 1 == OPTIONS.get("stop_after"):
      self.model.stop_training = True

  def on_train_end(self, logs=None):
    tf.config.run_functions_eagerly(False)
    np.savez(f"{OPTIONS['record']}{worker_index()}.npz", **variables(self.model),
             losses=np.array(getattr(self, "losses", [])))


def variables(model) -> dict:
  """The network's weights (`w<i>`) and, in a search, its alphas (`a<i>`)."""
  network = model.network
  arrays = {f"w{i}": v.numpy() for i, v in enumerate(network.weights)}
  if hasattr(network, "arch_variables"):
    arrays.update({f"a{i}": v.numpy() for i, v in enumerate(network.arch_variables)})
  return arrays


def main() -> None:
  kind = OPTIONS["kind"]
  config = (search_config if kind == "search" else train_config).default_config()
  config.update(dataset="fashion_mnist", limit=OPTIONS.get("limit", 64), batch_size=16,
                epochs=OPTIONS.get("epochs", 2), init_channels=4, num_cells=3,
                distribution="multi_worker" if "TF_CONFIG" in os.environ else "default")
  if "worker_timeout_s" in OPTIONS:
    config.worker_timeout_s = OPTIONS["worker_timeout_s"]
  if kind == "search":
    config.update(method=OPTIONS.get("method", "milenas"), init_channels=2, order="fused",
                  augment=False)
    result = search_run.run_search(config, OPTIONS["output_dir"], verbose=0,
                                   extra_callbacks=[Control()])
    summary = {"genotype": str(result.genotype)}
  else:
    config.update(setting="fashion_mnist", limit=OPTIONS.get("limit", 128), batch_size=32,
                  drop_path_rate=0.0)
    result = train_run.run_training(config, OPTIONS["output_dir"], verbose=0,
                                    extra_callbacks=[Control()])
    summary = {"top1": result.test["top1"]}
  summary.update(worker=worker_index(), resumed_after=result.resumed_after,
                 output_dir=result.output_dir,
                 workers=distribution.worker_of(distribution.get_strategy(
                     config.distribution)).count)
  print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
  cli.run(lambda argv: main())
