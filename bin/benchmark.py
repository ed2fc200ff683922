#!/usr/bin/env python3
"""Times the search and training steps and exported models, each job in a fresh process;
prints JSON lines.

  python bin/benchmark.py                       # search: paper and small configs, both orders
  python bin/benchmark.py --configs=small --orders=fused --steps=3
  python bin/benchmark.py --configs=small --orders=fused --devices=1,2 --steps=3
  python bin/benchmark.py --configs=paper --orders=reference --workers=1,2 --steps=3
  python bin/benchmark.py --configs=paper --orders=reference --workers=1,2 \
      --sync_batch_norm=on,off
  python bin/benchmark.py --configs= --train_configs=cifar10,imagenet --devices=1,2
  python bin/benchmark.py --configs=paper --orders=reference --onednn=on,off
  python bin/benchmark.py --configs= --train_configs=cifar10 --remapping=off,on
  python bin/benchmark.py --configs=small --orders=reference --graph_optimizer=light,full
  python bin/benchmark.py --configs= --serving_configs=cifar10 --serving_batches=1,64
  python bin/benchmark.py --configs=paper --orders=reference \
      --methods=milenas,darts_2nd,milenas_2nd --hessians=finite_difference,exact
  python bin/benchmark.py --configs=paper --orders=reference \
      --methods=milenas,darts_2nd --hessians=exact_recompute --rounds=3

Results of the same configuration, order, settings, replica or worker count and round
carry their ratio to `milenas` (`step_s_vs_milenas`, ...) when `milenas` is among the
methods; `--rounds` repeats the whole list to show how far the ratios move between runs.
Every job runs with oneDNN on (`TF_ENABLE_ONEDNN_OPTS=1`, as the scripts do), Grappler
as the configs' defaults leave it (remapper "auto", optimiser "light") and global-batch
batch norm unless `--onednn`, `--remapping`, `--graph_optimizer` or `--sync_batch_norm`
says otherwise.
"""

import json

from absl import flags

from milenas_tf.core import cli  # first: it turns oneDNN on before TensorFlow loads
from milenas_tf.benchmarks import jobs as benchmark_jobs
from milenas_tf.benchmarks import runner as benchmark_runner

_CONFIGS = flags.DEFINE_list("configs", ["small", "paper"],
                             f"Configurations: {', '.join(benchmark_jobs.SEARCH_CONFIGS)}.")
_METHODS = flags.DEFINE_list("methods", ["milenas"], "Search methods.")
_ORDERS = flags.DEFINE_list("orders", ["reference", "fused"], "Update orders.")
_HESSIANS = flags.DEFINE_list("hessians", ["finite_difference"],
                              "Hessian-vector products of the second-order methods.")
_TRAIN_CONFIGS = flags.DEFINE_list(
    "train_configs", [],
    f"Training-step configurations: {', '.join(benchmark_jobs.TRAIN_CONFIGS)} (none by default).")
_DEVICES = flags.DEFINE_list(
    "devices", ["1"], "Search (first-order methods) and training jobs: replica counts "
    "(logical CPU devices under MirroredStrategy above 1).")
_WORKERS = flags.DEFINE_list(
    "workers", ["1"], "Search jobs (first-order methods): process counts; above 1, a "
    "MultiWorkerMirroredStrategy cluster on 127.0.0.1 and, for comparison, as many "
    "independent processes each on its share of the batch.")
_ONEDNN = flags.DEFINE_list(
    "onednn", ["on"], "oneDNN settings, one job each: on, off, default (as in this shell).")
_REMAPPING = flags.DEFINE_list(
    "remapping", ["auto"], "Grappler remapper settings, one job each: auto (off on "
    "CPUs, as the configs), on, off.")
_GRAPH_OPTIMIZER = flags.DEFINE_list(
    "graph_optimizer", ["light"], "Grappler optimisation settings, one job each: light "
    "(one round, no memory optimiser; the configs' default), full (TensorFlow's).")
_SYNC_BATCH_NORM = flags.DEFINE_list(
    "sync_batch_norm", ["on"], "Search and training jobs, one each: on (global-batch batch "
    "norm across replicas and workers, the configs' default), off (each replica's own).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after the first one.")
_ROUNDS = flags.DEFINE_integer(
    "rounds", 1, "Runs the whole list of jobs this many times, one round after the "
    "other; each result carries its round, and its ratios are to its round's milenas.")
_SERVING_CONFIGS = flags.DEFINE_list(
    "serving_configs", [], "Exported-model latency against Keras for these training "
    f"configurations: {', '.join(benchmark_jobs.TRAIN_CONFIGS)} (none by default).")
_SERVING_BATCHES = flags.DEFINE_list("serving_batches", ["1", "64"],
                                     "Serving jobs: images per call.")
_SERVING_SECONDS = flags.DEFINE_float("serving_seconds", 20.0,
                                      "Serving jobs: seconds of timed calls per runtime.")


def main(argv):
  cli.check_no_arguments(argv)
  jobs = benchmark_runner.search_jobs(_CONFIGS.value, _METHODS.value, _ORDERS.value,
                                      _STEPS.value, _HESSIANS.value, _DEVICES.value,
                                      _WORKERS.value)
  jobs += benchmark_runner.train_jobs(_TRAIN_CONFIGS.value, _STEPS.value, _DEVICES.value)
  jobs = benchmark_runner.with_settings(jobs, "sync_batch_norm", _SYNC_BATCH_NORM.value)
  jobs += benchmark_runner.serving_jobs(_SERVING_CONFIGS.value, _SERVING_BATCHES.value,
                                        _SERVING_SECONDS.value)
  jobs = benchmark_runner.with_settings(jobs, "remapping", _REMAPPING.value)
  jobs = benchmark_runner.with_settings(jobs, "graph_optimizer", _GRAPH_OPTIMIZER.value)
  jobs = benchmark_runner.with_settings(jobs, "onednn", _ONEDNN.value)
  jobs = benchmark_runner.in_rounds(jobs, _ROUNDS.value)
  for result in benchmark_runner.with_ratios(benchmark_runner.run(jobs)):
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
  cli.run(main)
