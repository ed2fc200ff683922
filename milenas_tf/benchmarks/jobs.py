"""One benchmark job each: the search step, the training step, an exported model's
latency, timed in the process that calls it.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import time

from milenas_tf.core import distribution
from milenas_tf.core import graph_options
from milenas_tf.data import datasets
from milenas_tf.data import imagenet
from milenas_tf.search import model as search_model
from milenas_tf.serving import export
from milenas_tf.train import config as train_config
from milenas_tf.train import model as train_model
from milenas_tf.train import networks

SEARCH_CONFIGS = {
    # name: network size, batch size and input shape (image_size x image_size x channels).
    "paper": dict(num_cells=8, init_channels=16, batch_size=64, image_size=32, channels=3),
    "small": dict(num_cells=5, init_channels=8, batch_size=32, image_size=32, channels=3),
    "tiny": dict(num_cells=3, init_channels=4, batch_size=8, image_size=16, channels=1),
}


TRAIN_CONFIGS = {
    # name: evaluation network (DARTS_V2 cells), batch size and input shape.
    "cifar10": dict(setting="cifar10", num_cells=20, init_channels=36, batch_size=96,
                    image_size=32, channels=3, num_classes=10),
    "imagenet": dict(setting="imagenet", num_cells=14, init_channels=48, batch_size=128,
                     image_size=224, channels=3, num_classes=1000),
    "tiny": dict(setting="fashion_mnist", num_cells=3, init_channels=4, batch_size=8,
                 image_size=28, channels=1, num_classes=10),
}


def _peak_memory_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def search_step(config: str, method: str = "milenas", order: str = "reference",
                steps: int = 5, grappler: bool = True, inter_op_threads: int = 0,
                hessian: str | None = None, remapping: str = "auto",
                graph_optimizer: str = "light", devices: int = 1, workers: int = 1,
                communicate: bool = True, sync_batch_norm: str = "on",
                **overrides) -> dict:
  """Times the search step of one configuration in this process.

  Args:
    config: a key of `SEARCH_CONFIGS`.
    method: search method.
    order: "reference" or "fused".
    hessian: for second-order methods, "finite_difference" or "exact".
    steps: timed steps after the first one.
    grappler: run TensorFlow's graph optimiser.
    inter_op_threads: TensorFlow inter-op threads (0: its default).
    remapping: Grappler's op fusion, as the search config's `remapping`.
    graph_optimizer: Grappler's amount of optimisation, as the config's setting.
    devices: replicas (first-order methods); above 1, `MirroredStrategy` over that
      many logical CPU devices (the global batch is unchanged).
    workers: the processes of the job (`runner.run` starts them); above 1, this
      process is one of them.
    communicate: with several workers, whether they are one
      `MultiWorkerMirroredStrategy` cluster (from `TF_CONFIG`) sharing the global
      batch, or independent processes that each step on their share of it (the
      same computation without the collectives).
    sync_batch_norm: "on" (global-batch batch norm across replicas and workers)
      or "off" (each replica's own statistics), as the config's field.
    **overrides: changes to the configuration.

  Returns:
    A JSON-friendly dict of the measured figures.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  cluster = workers > 1 and communicate
  if cluster:  # before anything configures TensorFlow's context
    strategy = distribution.get_strategy("multi_worker")
  if devices > 1:
    distribution.split_cpu(devices)
  tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": not grappler})
  if inter_op_threads:
    tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
  # After split_cpu (it lists devices) and the meta-optimizer switch.
  remapping_on = graph_options.apply(remapping, graph_optimizer)
  spec = {**SEARCH_CONFIGS[config], **overrides}
  shape = (spec["image_size"], spec["image_size"], spec["channels"])
  tf.keras.utils.set_random_seed(0)
  # Independent workers each take their share of the global batch.
  batch = spec["batch_size"] // workers if workers > 1 and not communicate else spec[
      "batch_size"]
  data, _, _ = datasets.synthetic_search_datasets(shape, 10, batch, steps + 1)
  imported = time.perf_counter()
  if not cluster:
    strategy = distribution.get_strategy(
        _logical_cpus(devices) if devices > 1 else "default")
  with strategy.scope():
    model = search_model.build_search_model(
        num_classes=10, input_shape=shape, init_channels=spec["init_channels"],
        num_cells=spec["num_cells"], method=method, order=order, epochs=50,
        steps_per_epoch=100, hessian=hessian or "finite_difference",
        sync_batch_norm=_on(sync_batch_norm))
  model.make_train_function()
  train_function = model.train_function
  iterator = iter(distribution.slice_global_batches(strategy, data) if cluster
                  else strategy.experimental_distribute_dataset(data))

  def one_step():
    logs = train_function(iterator)
    return float(np.ravel(logs["loss"])[0])  # a 1-element vector under several workers

  t0 = time.perf_counter()
  first_done, step = _time_steps(one_step, steps)
  return {
      "benchmark": "search_step", "config": config, "method": method, "order": order,
      "hessian": hessian, "devices": devices, "workers": workers,
      "communicate": communicate, "replicas": strategy.num_replicas_in_sync,
      "sync_batch_norm": sync_batch_norm,
      "process_batch_size": batch,
      **spec, "grappler": grappler, "inter_op_threads": inter_op_threads,
      "remapping": remapping, "remapping_on": remapping_on,
      "graph_optimizer": graph_optimizer,
      "build_s": round(t0 - imported, 2),
      "first_step_s": round(first_done - imported, 2),
      "first_call_s": round(first_done - t0, 2),
      "step_s": round(step, 3),
      "images_per_s": round(spec["batch_size"] / step, 2),  # of the global batch
      "peak_memory_mb": round(_peak_memory_mb(), 1),
      "graph_ops": (_traced_ops(model.train_step, next(iter(data)))
                    if devices == 1 and not cluster else None),
  }


def _traced_ops(function, *args) -> int:
  """Ops of `function` traced on `args` and of every function it calls, each counted
  once, before graph optimisation (the size of what Python builds and Grappler takes)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  graph_def = tf.function(function).get_concrete_function(*args).graph.as_graph_def()
  return len(graph_def.node) + sum(len(f.node_def) for f in graph_def.library.function)


def _on(setting: str) -> bool:
  """A benchmark setting "on" or "off" as a bool."""
  return {"on": True, "off": False}[setting]


def _logical_cpus(count: int) -> str:
  """The device list of `count` logical CPUs ("/cpu:0,/cpu:1"), after `split_cpu(count)`."""
  return ",".join(f"/cpu:{i}" for i in range(count))


def _time_steps(step_fn, steps: int) -> tuple[float, float]:
  """Runs one step, then `steps` more; returns (first step end time, median step)."""
  step_fn()
  first_done = time.perf_counter()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    step_fn()
    times.append(time.perf_counter() - t)
  return first_done, statistics.median(times)


def _images_per_s(dataset, batches: int, batch_size: int) -> float:
  """Images/s of a batched dataset alone, after one warm-up batch."""
  iterator = iter(dataset.repeat().prefetch(2))
  next(iterator)
  t = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch_size / (time.perf_counter() - t)


def _imagenet_pipeline_images_per_s(batch_size: int, batches: int,
                                    image_size: int) -> float:
  """Images/s of the ImageNet training pipeline over synthetic JPEG TFRecords.

  256 smooth random images of 500x375 (the median ILSVRC-2012 size), JPEG
  quality 90, in two shards; decoding, random-resized crop, flip and colour
  jitter as in training.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as directory:
    for split, shard in (("train", 0), ("train", 1), ("validation", 0)):
      path = os.path.join(directory, f"{split}-{shard:05d}-of-00002")
      with tf.io.TFRecordWriter(path) as writer:
        for _ in range(128 if split == "train" else 1):
          coarse = rng.uniform(0, 255, size=(1, 24, 32, 3)).astype(np.float32)
          image = tf.image.resize(coarse, (375, 500)) + rng.normal(0, 8, (375, 500, 3))
          encoded = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image[0], 0, 255),
                                              tf.uint8), quality=90).numpy()
          feature = {
              "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                  value=[encoded])),
              "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
                  value=[int(rng.integers(1, 1001))])),
          }
          writer.write(tf.train.Example(features=tf.train.Features(
              feature=feature)).SerializeToString())
    train, _, _ = imagenet.imagenet_datasets(
        batch_size, data_dir=directory, source="tfrecord", image_size=image_size,
        shuffle_buffer=256)
    return _images_per_s(train, batches, batch_size)


def _synthetic_info(spec: dict):
  """The `DatasetInfo` of synthetic inputs of a `TRAIN_CONFIGS` entry."""

  shape = (spec["image_size"], spec["image_size"], spec["channels"])
  return datasets.DatasetInfo("synthetic", shape, spec["num_classes"], (0.5,) * shape[-1],
                              (0.25,) * shape[-1],
                              tuple(str(i) for i in range(spec["num_classes"])))


def train_step(config: str, steps: int = 5, genotype: str = "DARTS_V2",
               devices: int = 1, remapping: str = "auto", graph_optimizer: str = "light",
               sync_batch_norm: str = "on", **overrides) -> dict:
  """Times the training step of an evaluation network, and its input pipeline.

  The step is `TrainModel.train_step` (auxiliary head, drop path 0.2, clipping,
  coupled decay, SGD) on one pre-generated batch. The pipeline figure is that
  of the input pipeline alone: for the ImageNet setting the ImageNet training
  pipeline over synthetic JPEG TFRecords (`_imagenet_pipeline_images_per_s`),
  otherwise the CIFAR-style one (crop, flip, normalisation, cutout) over random
  uint8 images of the same shape.

  Args:
    config: a key of `TRAIN_CONFIGS`.
    steps: timed steps after the first one.
    genotype: the cell.
    devices: replicas; above 1, `MirroredStrategy` over that many logical CPU
      devices (the global batch is unchanged).
    remapping: Grappler's op fusion, as the training config's `remapping`.
    graph_optimizer: Grappler's amount of optimisation, as the config's setting.
    sync_batch_norm: "on" or "off", as the config's field (matters above one device).
    **overrides: changes to the configuration.

  Returns:
    A JSON-friendly dict of the measured figures.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  if devices > 1:
    distribution.split_cpu(devices)
  remapping_on = graph_options.apply(remapping, graph_optimizer)  # after: it lists devices
  spec = {**TRAIN_CONFIGS[config], **overrides}
  info = _synthetic_info(spec)
  shape, batch = info.image_shape, spec["batch_size"]
  tf.keras.utils.set_random_seed(0)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(4 * batch,) + shape, dtype=np.uint8)
  labels = rng.integers(0, spec["num_classes"], size=4 * batch)
  if spec["setting"] == "imagenet":
    pipeline_images_per_s = _imagenet_pipeline_images_per_s(batch, 4 * steps,
                                                            spec["image_size"])
  else:
    pipeline = datasets._train_pipeline(  # pylint: disable=protected-access
        images, labels, batch, info, seed=0, augment=True, repeat=True, epoch=0,
        cutout_length=16)
    pipeline_images_per_s = _images_per_s(pipeline, 4 * steps, batch)
  x, y = datasets.normalize_images(images[:batch], info), tf.constant(labels[:batch])

  imported = time.perf_counter()
  recipe = train_config.default_config()
  recipe.update(genotype=genotype, setting=spec["setting"],
                init_channels=spec["init_channels"], num_cells=spec["num_cells"],
                batch_size=batch, sync_batch_norm=_on(sync_batch_norm))
  if devices > 1:
    recipe.distribution = _logical_cpus(devices)
  strategy = distribution.strategy_for_batch(recipe.distribution, batch)
  with strategy.scope():
    model = train_model.build_train_model(recipe, info, steps_per_epoch=100)
  model.network.drop_path_rate.assign(0.2)
  model.make_train_function()
  data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()
  data = iter(strategy.experimental_distribute_dataset(data))
  t0 = time.perf_counter()
  first_done, step = _time_steps(lambda: float(model.train_function(data)["loss"]), steps)
  return {
      "benchmark": "train_step", "config": config, "genotype": genotype,
      "devices": devices, "replicas": strategy.num_replicas_in_sync,
      "sync_batch_norm": sync_batch_norm, **spec,
      "remapping": remapping, "remapping_on": remapping_on,
      "graph_optimizer": graph_optimizer,
      "build_s": round(t0 - imported, 2),
      "first_step_s": round(first_done - imported, 2),
      "first_call_s": round(first_done - t0, 2),
      "step_s": round(step, 3),
      "images_per_s": round(batch / step, 2),
      "pipeline_images_per_s": round(pipeline_images_per_s, 1),
      "pipeline_vs_step": round(pipeline_images_per_s * step / batch, 2),
      "peak_memory_mb": round(_peak_memory_mb(), 1),
  }


def serving_latency(config: str, batch_size: int = 1, duration_s: float = 20.0,
                    genotype: str = "DARTS_V2", remapping: str = "auto",
                    graph_optimizer: str = "light") -> dict:
  """Latency and throughput of an exported network against its Keras model.

  The network of a `TRAIN_CONFIGS` entry (untrained; speed does not depend on the
  weights) is exported with `export.export_network` and loaded back with
  `tf.saved_model.load`; its `serving_default` signature (uint8 pixels in,
  preprocessing in the graph) is timed against the Keras model's `predict_on_batch`
  on the same pixels normalised in TensorFlow. The two alternate in ten rounds of
  `duration_s / 10` seconds each, after one warm-up call each.

  Args:
    config: a key of `TRAIN_CONFIGS`.
    batch_size: images per call.
    duration_s: seconds of timed calls per runtime.
    genotype: the cell.
    remapping: Grappler's op fusion, as the training config's `remapping`.
    graph_optimizer: Grappler's amount of optimisation, as the config's setting.

  Returns:
    A JSON-friendly dict: per runtime (`saved_model`, `keras`) the median and 99th
    percentile latency in ms, images/s and calls; the SavedModel's latency ratio.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  remapping_on = graph_options.apply(remapping, graph_optimizer)
  spec = TRAIN_CONFIGS[config]
  info = _synthetic_info(spec)
  shape = info.image_shape
  tf.keras.utils.set_random_seed(0)
  network = networks.build_network(genotype, spec["setting"], spec["init_channels"],
                                   spec["num_cells"], auxiliary=False,
                                   num_classes=spec["num_classes"], input_shape=shape)
  images = np.random.default_rng(0).integers(0, 256, (batch_size,) + shape, np.uint8)
  with tempfile.TemporaryDirectory() as directory:
    t = time.perf_counter()
    result = export.export_network(network, info, directory, "model", warmup=False,
                                   model_config=False)
    export_s = time.perf_counter() - t
    signature = tf.saved_model.load(result.path).signatures[export.PIXELS_SIGNATURE]
    calls = {
        "saved_model": lambda: signature(images=tf.constant(images))["probabilities"],
        "keras": lambda: network.predict_on_batch(datasets.normalize_images(images, info)),
    }
    latencies = {name: [] for name in calls}
    for call in calls.values():
      call()
    for _ in range(10):
      for name, call in calls.items():
        end = time.perf_counter() + duration_s / 10
        while True:
          t = time.perf_counter()
          call()
          latencies[name].append(time.perf_counter() - t)
          if t >= end:
            break
  out = {"benchmark": "serving", "config": config, "genotype": genotype, **spec,
         "batch_size": batch_size, "remapping": remapping, "remapping_on": remapping_on,
         "graph_optimizer": graph_optimizer,
         "export_s": round(export_s, 2)}
  for name, values in latencies.items():
    p50, p99 = np.percentile(values, [50, 99])
    out.update({f"{name}_p50_ms": round(1000 * p50, 2), f"{name}_p99_ms": round(1000 * p99, 2),
                f"{name}_images_per_s": round(batch_size * len(values) / sum(values), 1),
                f"{name}_calls": len(values)})
  out["saved_model_p50_vs_keras"] = round(out["saved_model_p50_ms"] / out["keras_p50_ms"], 3)
  out["peak_memory_mb"] = round(_peak_memory_mb(), 1)
  return out


def _child_main() -> None:
  kwargs = json.loads(sys.argv[1])
  benchmark = {"train_step": train_step, "serving": serving_latency}.get(
      kwargs.pop("benchmark", None), search_step)
  print(json.dumps(benchmark(**kwargs)), flush=True)
