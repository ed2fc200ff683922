"""Distribution strategies for training: one device, several, or machines.

`get_strategy(spec)` turns a config string into a `tf.distribute.Strategy`:

- "auto": `MirroredStrategy` over all visible GPUs when there are two or more,
  else the default single-device strategy;
- "default": the default strategy (one device);
- "mirrored": `MirroredStrategy` over all visible GPUs (the CPU if none);
- "multi_worker": `MultiWorkerMirroredStrategy`, configured by `TF_CONFIG`;
- a comma-separated device list, e.g. "/gpu:0,/gpu:1": `MirroredStrategy` over them.

The configured batch size is the global batch; Keras splits it across replicas.
With several replicas, batch norm uses the statistics of the global batch
(the `sync_batch_norm` option of the networks) and `TrainModel.train_step` clips the
global-batch gradient, so N replicas compute what one device computes. The search
(`milenas_tf.search`) does the same for its first-order methods; the second-order ones
run on one device.
"""

from __future__ import annotations

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
    gpus = tf.config.list_logical_devices("GPU")
    return (tf.distribute.MirroredStrategy() if len(gpus) > 1
            else tf.distribute.get_strategy())
  if spec == "default":
    return tf.distribute.get_strategy()
  if spec == "mirrored":
    return tf.distribute.MirroredStrategy()
  if spec == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  devices = [d.strip() for d in spec.split(",") if d.strip()]  # a device list
  known = {_canonical(d.name) for d in tf.config.list_logical_devices()}
  missing = [d for d in devices if _canonical(d) not in known]
  if missing:
    raise UserInputError(
        f"Unknown device(s) {', '.join(missing)}; this machine has "
        f"{', '.join(sorted(known))}.")
  return tf.distribute.MirroredStrategy(devices)


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
