"""Distribution strategies for training: one device, several, or machines.

`get_strategy(spec)` turns a config string into a `tf.distribute.Strategy`:

- "auto": "multi_worker" when `TF_CONFIG` names several workers (as `bin/launch.py`
  and cluster schedulers set it), else `MirroredStrategy` over all visible GPUs
  when there are two or more, else the default single-device strategy;
- "default": the default strategy (one device);
- "mirrored": `MirroredStrategy` over all visible GPUs (the CPU if none);
- "multi_worker": `MultiWorkerMirroredStrategy` over the machines (workers) that
  `TF_CONFIG` names, and the devices of each; every worker runs the same command;
- a comma-separated device list, e.g. "/gpu:0,/gpu:1": `MirroredStrategy` over them.

The configured batch size is the global batch; Keras splits it across replicas
(and, with several workers, hands each worker its share of every global batch).
With several replicas, batch norm uses the statistics of the global batch
(the `sync_batch_norm` option of the networks) and `TrainModel.train_step` clips the
global-batch gradient, so N replicas compute what one device computes. The search
(`milenas_tf.search`) does the same, the second-order methods' virtual steps
included.

A multi-worker strategy must exist before TensorFlow runs its first op (it
configures the runtime's collectives); `core.driver.run_experiment` creates it
first. `worker_of` says which worker a process is; `check_workers_agree` compares
values across workers. A worker that dies makes the others' next collective fail
(TensorFlow's coordination service stops receiving its heartbeats).
"""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf

from milenas_tf.core.errors import UserInputError

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")


def check_spec(spec: str) -> str:
  """Returns `spec` stripped; raises `UserInputError` if it names no strategy."""
  spec = spec.strip()
  if spec not in STRATEGIES and not spec.startswith("/"):
    raise UserInputError(f"Unknown distribution {spec!r}; choose one of {', '.join(STRATEGIES)} "
                         "or a comma-separated device list such as /gpu:0,/gpu:1.")
  return spec


def get_strategy(spec: str = "auto") -> tf.distribute.Strategy:
  """The strategy a config names (see the module docstring).

  One process gets one strategy object per name: strategies over the same devices
  created twice would issue clashing collective operations.

  Raises:
    UserInputError: for an unknown name or a device that does not exist.
  """
  spec = check_spec(spec)
  if spec not in _STRATEGIES:
    _STRATEGIES[spec] = _make_strategy(spec)
  return _STRATEGIES[spec]


_STRATEGIES: dict[str, tf.distribute.Strategy] = {}


def strategy_for_batch(spec: str, batch_size: int) -> tf.distribute.Strategy:
  """`get_strategy(spec)`, checking that the global batch splits evenly among its replicas.

  Raises:
    UserInputError: as `get_strategy`, or for a batch the replicas cannot share.
  """
  strategy = get_strategy(spec)
  if batch_size % strategy.num_replicas_in_sync:
    raise UserInputError(f"config.batch_size={batch_size} must divide evenly among the "
                         f"{strategy.num_replicas_in_sync} replicas of distribution "
                         f"{spec!r}.")
  return strategy


def _make_strategy(spec: str) -> tf.distribute.Strategy:
  if spec == "auto":
    if _cluster_size() > 1:
      return _multi_worker_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    return (tf.distribute.MirroredStrategy() if len(gpus) > 1
            else tf.distribute.get_strategy())
  if spec == "default":
    return tf.distribute.get_strategy()
  if spec == "mirrored":
    return tf.distribute.MirroredStrategy()
  if spec == "multi_worker":
    return _multi_worker_strategy()
  devices = [d.strip() for d in spec.split(",") if d.strip()]  # a device list
  known = {_canonical(d.name) for d in tf.config.list_logical_devices()}
  missing = [d for d in devices if _canonical(d) not in known]
  if missing:
    raise UserInputError(
        f"Unknown device(s) {', '.join(missing)}; this machine has "
        f"{', '.join(sorted(known))}.")
  return tf.distribute.MirroredStrategy(devices)


def _workers_in(cluster: dict) -> int:
  """The processes a cluster description names: its workers and its chief."""
  return len(cluster.get("worker", ())) + len(cluster.get("chief", ()))


def _cluster_size() -> int:
  """The workers `TF_CONFIG` names (0 if it is unset or unreadable)."""
  try:
    return _workers_in(json.loads(os.environ.get("TF_CONFIG", "") or "{}").get("cluster", {}))
  except (ValueError, AttributeError):
    return 0


def _multi_worker_strategy() -> tf.distribute.Strategy:
  """`MultiWorkerMirroredStrategy` from `TF_CONFIG`."""
  text = os.environ.get("TF_CONFIG", "")
  if not text:
    raise UserInputError(
        "distribution 'multi_worker' reads the cluster from the TF_CONFIG environment "
        "variable, which is not set; start the workers with bin/launch.py, or set "
        "TF_CONFIG on every machine (docs/distributed.md).")
  try:
    cluster = json.loads(text)
    workers = cluster["cluster"]["worker"]
    task = cluster["task"]
    task["type"], int(task["index"]), len(workers)  # pylint: disable=pointless-statement
  except (ValueError, KeyError, TypeError):
    raise UserInputError(
        f"TF_CONFIG={text[:200]!r} is not a cluster description: it must be JSON like "
        '{"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": '
        '"worker", "index": 0}} (docs/distributed.md).') from None
  # No collective timeout: TensorFlow 2.21 waits for each timeout on a thread of its
  # own, thousands of threads a second under batch norm's all-reduces.
  try:
    return tf.distribute.MultiWorkerMirroredStrategy()
  except RuntimeError as e:
    if "startup" not in str(e):
      raise
    raise UserInputError(
        "distribution 'multi_worker' must be created before TensorFlow runs any "
        "operation; create it first (core.distribution.get_strategy), or run the "
        "scripts, which do.") from None


@dataclasses.dataclass(frozen=True)
class Worker:
  """One process of a run.

  Attributes:
    index: its position among the workers (the chief is 0).
    count: the number of workers (processes) of the run.
    is_chief: whether it writes the run's files.
  """
  index: int = 0
  count: int = 1
  is_chief: bool = True


def worker_of(strategy: tf.distribute.Strategy) -> Worker:
  """Which worker of `strategy`'s cluster this process is (`Worker()` for one process)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
  workers = _workers_in(cluster)
  if workers <= 1:
    return Worker()
  index = resolver.task_id + (1 if resolver.task_type == "worker" and "chief" in cluster
                              else 0)
  return Worker(index, workers, bool(strategy.extended.should_checkpoint))


def check_workers_agree(strategy: tf.distribute.Strategy, values: dict[str, int]) -> None:
  """Raises on every worker if the workers hold different `values`.

  A collective operation: every worker must call it, with the same names.

  Args:
    strategy: the run's strategy.
    values: integers keyed by what they are ("configuration", ...), as the error
      names them.

  Raises:
    UserInputError: naming the first value on which a worker differs from the chief.
  """
  if worker_of(strategy).count == 1:
    return
  local = tf.constant([list(values.values())], tf.int64)
  rows = strategy.gather(
      strategy.experimental_distribute_values_from_function(lambda _: local), axis=0)
  rows = rows.numpy()
  for column, name in enumerate(values):
    differing = sorted({int(r) for r in rows[:, column]})
    if len(differing) > 1:
      raise UserInputError(
          f"the workers disagree on the {name} (values {differing[:4]}); start every "
          "worker with the same command, configuration and --output_dir, on storage "
          "every worker can read.")


class MultiWorkerModel:
  """A mixin for `keras.Model` subclasses that lets `fit` run under several workers.

  Keras 3.15's `fit` under `MultiWorkerMirroredStrategy` (keras-team/keras#20585)
  fails twice, and this mends both:

  - it builds the model from the first batch averaged across replicas with one
    `strategy.reduce` over the whole batch structure, which that strategy cannot
    do: the first replica's batch has the same shapes and is used instead;
  - it averages the step's logs across workers with `strategy.reduce(MEAN, axis=0)`,
    which fails for scalars: `step_logs` gives them as one-element vectors there.
  """

  def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    strategy = self.distribute_strategy
    if iterator is not None and worker_of(strategy).count > 1:
      for _, _, batches in iterator:
        data_batch = tf.nest.map_structure(
            lambda value: strategy.experimental_local_results(value)[0], next(batches))
        break
      iterator = None
    super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

  def step_logs(self) -> dict[str, tf.Tensor]:
    """The metrics' results, as `train_step` and `test_step` return them."""
    logs = {m.name: m.result() for m in self.metrics}
    if worker_of(self.distribute_strategy).count > 1:
      logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs


def slice_global_batches(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset
                         ) -> tf.data.Dataset | tf.distribute.DistributedDataset:
  """`dataset`'s global batches shared out among the replicas, each taking its slice.

  Every worker builds the same global batches (cheap for data held in memory) and
  replica r of R keeps rows [r B / R, (r + 1) B / R) of each batch of B, so that
  the replicas of all the workers together see, step by step, exactly the batches
  one device sees. (`Strategy.experimental_distribute_dataset` would shard the
  batches among workers by its own rule.) With one replica, `dataset` itself.

  Args:
    strategy: the run's strategy.
    dataset: batches whose size the replica count divides (nested structures of
      tensors, batch first).
  """
  replicas = strategy.num_replicas_in_sync
  if replicas == 1:
    return dataset

  def replica_batches(context: tf.distribute.InputContext) -> tf.data.Dataset:
    local = replicas // context.num_input_pipelines
    first = context.input_pipeline_id * local

    def slices(*batch):
      def split(tensor):
        rows = tf.reshape(tensor, tf.concat([[replicas, -1], tf.shape(tensor)[1:]], 0))
        return rows[first:first + local]
      return tf.nest.map_structure(split, batch)

    # The replicas of a worker take its consecutive elements in turn.
    return dataset.map(slices).unbatch()

  return strategy.distribute_datasets_from_function(replica_batches)


def _canonical(device: str) -> str:
  """"/job:localhost/replica:0/task:0/device:CPU:0" or "/cpu:0" -> "cpu:0"."""
  spec = tf.DeviceSpec.from_string(device)
  return f"{spec.device_type.lower()}:{spec.device_index}"


def replicas_in_sync() -> int:
  """Replicas the current replica context synchronises (1 without a strategy or
  in cross-replica context)."""
  context = tf.distribute.get_replica_context()
  return context.num_replicas_in_sync if context is not None else 1


def global_gradients(tape: tf.GradientTape, loss: tf.Tensor, variables) -> list:
  """The gradient of the global-batch mean loss, on every replica.

  `loss` is this replica's mean loss (recorded on `tape`); its gradients divided
  by N are summed across the N replicas. Without a strategy it is `tape.gradient(loss, variables)`.
  """
  replicas = replicas_in_sync()
  if replicas == 1:
    return tape.gradient(loss, variables)
  grads = [tf.zeros(v.shape, v.dtype) if g is None else g / replicas
           for g, v in zip(tape.gradient(loss, variables), variables)]
  return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)


def for_optimizer(grads) -> list:
  """Global gradients as Keras optimisers take them in a replica context.

  A Keras 3 optimiser sums the gradients it is given across replicas before
  applying them; global gradients, already equal on every replica, are divided by N.
  """
  replicas = replicas_in_sync()
  return list(grads) if replicas == 1 else [g / replicas for g in grads]


def split_cpu(count: int) -> None:
  """Splits the CPU into `count` logical devices ("/cpu:0" ... ), for tests and benchmarks.

  Raises:
    UserInputError: if TensorFlow has already initialised its devices.
  """
  cpu = tf.config.list_physical_devices("CPU")[0]
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * count)
  except RuntimeError:
    raise UserInputError("split_cpu must run before TensorFlow initialises its devices "
                         "(before any op or strategy is created).") from None
