"""SavedModels of trained networks, in the layout TensorFlow Serving loads as is.

`export_network(network, info, base_dir, model_name)` writes
`<base_dir>/<model_name>/<version>/`: a SavedModel of the inference graph (no
auxiliary head, no drop path, batch norm with its moving statistics, float32
outputs) with two signatures,

- `serving_default` (`PIXELS_SIGNATURE`): input `images`, uint8
  `[batch, height, width, channels]` at the training resolution;
- `serving_bytes` (`BYTES_SIGNATURE`): input `image_bytes`, string `[batch]` of
  encoded JPEG, PNG, GIF or BMP images of any size, decoded and resized in the graph
  (ImageNet: shorter side to `resize_size`, central crop, as in evaluation);

both returning `probabilities` (float32 `[batch, classes]`), `classes` (int32
`[batch, k]`, the top-k class indices, most probable first) and `class_names`
(string `[batch, k]`). Normalisation with the training statistics is part of the
graph. The version is one more than the largest one present, so an export never
replaces a served model; `assets.extra/tf_serving_warmup_requests` holds one request
per signature, which the server replays before it serves; `<base_dir>/models.config`
lists every model under `base_dir` for `tensorflow_model_server --model_config_file`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Callable

import keras
import ml_collections
import numpy as np
import tensorflow as tf

from milenas_tf.core import divergence
from milenas_tf.core.errors import UserInputError
from milenas_tf.data import datasets
from milenas_tf.data import imagenet
from milenas_tf.serving import protos as serving_protos
from milenas_tf.train import config as train_config
from milenas_tf.train import inputs as train_inputs
from milenas_tf.train import model as train_model
from milenas_tf.train import restore

PIXELS_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"
PIXELS_INPUT = "images"
BYTES_INPUT = "image_bytes"
OUTPUTS = ("probabilities", "classes", "class_names")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MODEL_CONFIG_FILE = "models.config"


@dataclasses.dataclass(frozen=True)
class ExportResult:
  """Where an export went.

  Attributes:
    path: the version directory, `<base_dir>/<model_name>/<version>`.
    model_name: the model's name (its directory under the base).
    version: the version number.
    model_config: the `models.config` written, or None.
  """
  path: str
  model_name: str
  version: int
  model_config: str | None


def versions(model_dir: str) -> list[int]:
  """The version numbers under a model directory (TF Serving's numeric subdirectories)."""
  if not os.path.isdir(model_dir):
    return []
  return sorted(int(name) for name in os.listdir(model_dir)
                if name.isdigit() and os.path.isdir(os.path.join(model_dir, name)))


def next_version(model_dir: str) -> int:
  """One more than the largest version under `model_dir` (1 for a new model)."""
  return max(versions(model_dir), default=0) + 1


def _check_name(model_name: str) -> None:
  if not model_name or model_name in (".", "..") or os.sep in model_name or (
      not model_name.replace("_", "").replace("-", "").replace(".", "").isalnum()):
    raise UserInputError(f"Bad model name {model_name!r}: use letters, digits, '_', '-' "
                         "and '.' (it becomes a directory and the name clients ask for).")


def _decode_resized(image_bytes: tf.Tensor, image_shape: tuple[int, int, int]
                    ) -> tf.Tensor:
  """One encoded image as float32 pixels in [0, 255] at `image_shape` (bilinear)."""
  height, width, channels = image_shape
  image = tf.io.decode_image(image_bytes, channels=channels, expand_animations=False)
  image = tf.image.resize(image, (height, width), method="bilinear")
  return tf.ensure_shape(image, image_shape)


def serving_functions(network: keras.Model, info: datasets.DatasetInfo, top_k: int = 5,
                      resize_size: int | None = None
                      ) -> dict[str, tuple[Callable, tf.TensorSpec]]:
  """The serving functions of a network and their input specs, by signature name.

  Args:
    network: an evaluation network (`networks.EvalNetwork`), built.
    info: the dataset it was trained on: image shape, statistics, class names.
    top_k: how many classes `classes` and `class_names` list (at most the number of
      classes).
    resize_size: for ImageNet-style preprocessing of encoded images, the shorter side
      before the central crop (256 for 224 crops); None resizes the whole image to
      the training resolution.

  Returns:
    `{signature name: (tf.function, input TensorSpec)}`.

  Raises:
    UserInputError: for a top_k below 1 or a resize_size below the image size.
  """
  if top_k < 1:
    raise UserInputError(f"top_k must be at least 1, got {top_k}.")
  height, width, channels = info.image_shape
  if resize_size is not None and (resize_size < min(height, width) or channels != 3):
    raise UserInputError(f"resize_size={resize_size} needs RGB images no larger than it "
                         f"(the network takes {info.image_shape}); use None or 256.")
  k = min(top_k, info.num_classes)
  class_names = tf.constant(info.class_names, tf.string)

  def outputs(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
    # A served graph does not check its inputs' shapes, and some kernels (oneDNN's
    # convolution) abort the process on a wrong rank instead of returning an error.
    pixels = tf.ensure_shape(pixels, (None,) + tuple(info.image_shape))
    logits = network(datasets.normalize_images(pixels, info), training=False)
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
    classes = tf.math.top_k(probabilities, k).indices
    return {"probabilities": probabilities, "classes": classes,
            "class_names": tf.gather(class_names, classes)}

  def decode(image_bytes):
    if resize_size is None:
      return _decode_resized(image_bytes, info.image_shape)
    return imagenet.decode_eval(image_bytes, height, resize_size)

  def from_bytes(image_bytes):
    pixels = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec(
        info.image_shape, tf.float32))
    return outputs(pixels)

  return {
      PIXELS_SIGNATURE: (tf.function(outputs), tf.TensorSpec(
          (None,) + tuple(info.image_shape), tf.uint8, name=PIXELS_INPUT)),
      BYTES_SIGNATURE: (tf.function(from_bytes), tf.TensorSpec(
          (None,), tf.string, name=BYTES_INPUT)),
  }


def warmup_records(model_name: str, info: datasets.DatasetInfo) -> list[bytes]:
  """Serialised `PredictionLog`s for TF Serving's warm-up: one batch-of-one request per
  signature (a grey image as pixels and as PNG bytes)."""
  image = np.full((1,) + tuple(info.image_shape), 128, np.uint8)
  png = tf.io.encode_png(image[0]).numpy()
  return [
      serving_protos.prediction_log(model_name, PIXELS_SIGNATURE, {PIXELS_INPUT: image}),
      serving_protos.prediction_log(model_name, BYTES_SIGNATURE,
                                    {BYTES_INPUT: np.array([png], dtype=object)}),
  ]


def write_model_config(base_dir: str, serving_base_dir: str | None = None) -> str:
  """Writes `<base_dir>/models.config` listing every model directory under `base_dir`.

  Args:
    base_dir: the export base directory.
    serving_base_dir: where the server sees `base_dir` (e.g. `/models` inside a
      container); `base_dir`'s absolute path when None.

  Returns:
    The file's path.
  """
  serving_base_dir = serving_base_dir or os.path.abspath(base_dir)
  entries = []
  for name in sorted(os.listdir(base_dir)):
    if versions(os.path.join(base_dir, name)):
      entries.append(f'  config {{\n    name: "{name}"\n'
                     f'    base_path: "{serving_base_dir.rstrip("/")}/{name}"\n'
                     '    model_platform: "tensorflow"\n  }\n')
  path = os.path.join(base_dir, MODEL_CONFIG_FILE)
  with open(path + ".tmp", "w") as f:
    f.write("model_config_list {\n" + "".join(entries) + "}\n")
  os.replace(path + ".tmp", path)
  return path


def export_network(network: keras.Model, info: datasets.DatasetInfo, base_dir: str,
                   model_name: str, *, version: int | None = None, top_k: int = 5,
                   resize_size: int | None = None, warmup: bool = True,
                   model_config: bool = True, serving_base_dir: str | None = None
                   ) -> ExportResult:
  """Writes a network as a new version of a TF Serving model.

  The SavedModel is written to a hidden directory next to the version and renamed
  into place when complete, so a server polling the model never sees half of it.

  Args:
    network: an evaluation network, built (its weights as trained).
    info: the dataset it was trained on.
    base_dir: the base directory of the served models.
    model_name: the model's directory under `base_dir` and its name on the server.
    version: the version to write; the next free one when None. An existing version
      is never replaced.
    top_k: the length of `classes` and `class_names`.
    resize_size: see `serving_functions`.
    warmup: write `assets.extra/tf_serving_warmup_requests`.
    model_config: write `<base_dir>/models.config`.
    serving_base_dir: see `write_model_config`.

  Returns:
    The `ExportResult`.

  Raises:
    UserInputError: for a bad name or version, a version that exists, or a network
      with NaN or infinite weights.
  """
  _check_name(model_name)
  divergence.check_finite(network.weights, "the network to export",
                          "export the weights of a training that did not diverge.")
  model_dir = os.path.join(base_dir, model_name)
  if version is None:
    version = next_version(model_dir)
  elif version < 1:
    raise UserInputError(f"version must be a positive integer, got {version}.")
  path = os.path.join(model_dir, str(version))
  if os.path.exists(path):
    raise UserInputError(f"{path} exists and is never replaced; export with another "
                         f"--version or leave it out to get version {next_version(model_dir)}.")
  functions = serving_functions(network, info, top_k, resize_size)
  archive = keras.export.ExportArchive()
  archive.track(network)
  for name, (function, spec) in functions.items():
    archive.add_endpoint(name, function, input_signature=[spec])
  tmp = os.path.join(model_dir, f".tmp-{version}-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    os.makedirs(model_dir, exist_ok=True)
    archive.write_out(tmp, verbose=False)
    if warmup:
      os.makedirs(os.path.join(tmp, os.path.dirname(WARMUP_FILE)), exist_ok=True)
      with tf.io.TFRecordWriter(os.path.join(tmp, WARMUP_FILE)) as writer:
        for record in warmup_records(model_name, info):
          writer.write(record)
    os.rename(tmp, path)  # fails rather than replace a version written meanwhile
  except OSError as e:
    raise UserInputError(f"Could not write {path} ({e}); check the directory and "
                         "export again.") from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  config_path = write_model_config(base_dir, serving_base_dir) if model_config else None
  return ExportResult(path, model_name, version, config_path)


def export_run(output_dir: str, base_dir: str, model_name: str | None = None, *,
               which: str = "best", **kwargs) -> ExportResult:
  """Exports a `bin/train.py` run's weights (see `export_network`).

  Args:
    output_dir: the training run's directory.
    base_dir: the base directory of the served models.
    model_name: the model's name; the run directory's name when None.
    which: "best" or "last" weights.
    **kwargs: passed to `export_network`. For an ImageNet run `resize_size` defaults
      to the run's evaluation `resize_size`.

  Returns:
    The `ExportResult`.

  Raises:
    UserInputError: if the run or its weights are missing or not finite, or as
      `export_network`.
  """
  trained = restore.load_trained_model(output_dir, which)
  name = model_name or os.path.basename(os.path.normpath(output_dir))
  return _export_trained(trained.model, trained.config, trained.info, trained.weights_path,
                         base_dir, name, **kwargs)


def export_weights(config: ml_collections.ConfigDict, weights_path: str, base_dir: str,
                   model_name: str, **kwargs) -> ExportResult:
  """Exports a genotype's network with weights from a file (see `export_network`).

  Args:
    config: a training configuration naming the genotype, setting, sizes and dataset
      the weights were trained with (`train_config.default_config()` and its files).
    weights_path: a `.weights.h5` file of `bin/train.py` (`checkpoints/` or `best/`).
    base_dir: the base directory of the served models.
    model_name: the model's name.
    **kwargs: passed to `export_network`.

  Returns:
    The `ExportResult`.

  Raises:
    UserInputError: for a bad configuration, or weights that are missing, do not fit
      or are not finite, or as `export_network`.
  """
  train_config.validate(config)
  info = train_inputs.config_dataset_info(config)
  model = restore.build_with_weights(config, info, weights_path)
  return _export_trained(model, config, info, weights_path, base_dir, model_name, **kwargs)


def _export_trained(model: train_model.TrainModel, config: ml_collections.ConfigDict,
                    info: datasets.DatasetInfo, weights_path: str, base_dir: str,
                    model_name: str, **kwargs) -> ExportResult:
  """`export_network` of a `TrainModel`'s network loaded from `weights_path`, which
  must be finite; ImageNet runs resize encoded images as their evaluation does unless
  `resize_size` is given."""
  divergence.check_finite(
      model.network.weights, weights_path,
      "the training that wrote them diverged; export the weights of a run that did not "
      "(--which=best keeps the best epoch's), or retrain with a lower "
      "--config.learning_rate.")
  if config.dataset == "imagenet":
    kwargs.setdefault("resize_size", train_config.run_imagenet_options(config).resize_size)
  return export_network(model.network, info, base_dir, model_name, **kwargs)
