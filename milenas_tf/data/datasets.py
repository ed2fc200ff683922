"""Input pipelines for the architecture search and for evaluation.

Images are kept in memory as uint8 arrays and fed through `tf.data`. Like the
DARTS / MiLeNAS reference code, the search uses the official *train* split
only: its first `train_portion` fraction trains the network weights and the
rest ("search-val") drives the architecture update and the search-time
evaluation.

Fashion-MNIST is read from the IDX files of the Debian package
`dataset-fashion-mnist` (or any directory holding them) or from
`tensorflow_datasets`; CIFAR-10 comes from `tensorflow_datasets`. Nothing is
ever downloaded.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zlib

import numpy as np
import tensorflow as tf

from milenas_tf.core import validation
from milenas_tf.core.errors import UserInputError

DATASETS = ("fashion_mnist", "cifar10")
SPLITS = ("train", "test")
SOURCES = ("auto", "idx", "tfds")

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_CROP_PADDING = 4


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a dataset.

  Attributes:
    name: Dataset name, one of `DATASETS` (or "synthetic").
    image_shape: `(height, width, channels)`.
    num_classes: Number of labels.
    mean: Per-channel mean of the training pixels, in [0, 1] units.
    std: Per-channel standard deviation of the training pixels.
    class_names: Human-readable label names.
  """

  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  class_names: tuple[str, ...]


_INFOS = {
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        image_shape=(28, 28, 1),
        num_classes=10,
        mean=(0.2860,),
        std=(0.3530,),
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        image_shape=(32, 32, 3),
        num_classes=10,
        # Values from the DARTS reference code (utils._data_transforms_cifar10).
        mean=(0.49139968, 0.48215827, 0.44653124),
        std=(0.24703233, 0.24348505, 0.26158768),
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog",
                     "frog", "horse", "ship", "truck"),
    ),
}


def dataset_info(name: str) -> DatasetInfo:
  """Returns the `DatasetInfo` of dataset `name`."""
  validation.check_choice("dataset name", name, DATASETS)
  return _INFOS[name]


# ----------------------------------------------------------------------------
# Raw data.
# ----------------------------------------------------------------------------


def read_idx(path: str, expected_magic: int | None = None) -> np.ndarray:
  """Reads an IDX file of unsigned bytes (optionally gzipped) into numpy.

  Args:
    path: File path; gzip compression is detected from the content.
    expected_magic: If set, the required magic number (2051 for images, 2049
      for labels).

  Returns:
    A uint8 array whose shape is given by the file header.

  Raises:
    UserInputError: If the file is unreadable, corrupt or truncated.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
    if data[:2] == b"\x1f\x8b":
      data = gzip.decompress(data)
  except (OSError, EOFError, zlib.error) as e:
    raise UserInputError(
        f"Cannot read IDX file {path}: {e}; reinstall the data "
        "(apt-get install --reinstall dataset-fashion-mnist).") from e
  bad = (f"Corrupt IDX file {path}: {{}}; reinstall the data "
         "(apt-get install --reinstall dataset-fashion-mnist).")
  if len(data) < 4:
    raise UserInputError(bad.format("file too short"))
  magic = int.from_bytes(data[:4], "big")
  ndim = data[3]
  if data[:3] != b"\x00\x00\x08" or ndim == 0 or (
      expected_magic is not None and magic != expected_magic):
    want = "" if expected_magic is None else f", expected {expected_magic}"
    raise UserInputError(bad.format(f"bad magic number {magic}{want}"))
  header = 4 + 4 * ndim
  if len(data) < header:
    raise UserInputError(bad.format("truncated header"))
  shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
  size = int(np.prod(shape))
  if len(data) - header != size:
    raise UserInputError(bad.format(
        f"header says {shape} = {size} bytes of data, found "
        f"{len(data) - header}"))
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _find_idx(data_dir: str, split: str, kind: str) -> str | None:
  ndim = 3 if kind == "images" else 1
  stem = os.path.join(data_dir, f"{_IDX_PREFIX[split]}-{kind}-idx{ndim}-ubyte")
  for path in (stem + ".gz", stem):
    if os.path.isfile(path):
      return path
  return None


def _load_idx(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  images_path = _find_idx(data_dir, split, "images")
  labels_path = _find_idx(data_dir, split, "labels")
  if images_path is None or labels_path is None:
    raise UserInputError(
        f"Fashion-MNIST IDX files for split {split!r} not found in "
        f"{data_dir}; install them with `apt-get install "
        "dataset-fashion-mnist` or point --config.data_dir at a directory "
        f"holding {_IDX_PREFIX[split]}-{{images-idx3,labels-idx1}}-ubyte[.gz].")
  images = read_idx(images_path, _IDX_IMAGES_MAGIC)
  labels = read_idx(labels_path, _IDX_LABELS_MAGIC)
  if images.shape[1:] != (28, 28) or len(images) != len(labels):
    raise UserInputError(
        f"Inconsistent Fashion-MNIST IDX files in {data_dir}: images "
        f"{images.shape}, labels {labels.shape}; expected (N, 28, 28) and "
        "(N,); reinstall the data (apt-get install --reinstall "
        "dataset-fashion-mnist).")
  return images[..., None], labels.astype(np.int64)


def _load_tfds(name: str, split: str, data_dir: str | None,
               limit: int | None) -> tuple[np.ndarray, np.ndarray]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tfds_split = split if limit is None else f"{split}[:{limit}]"
  try:
    ds = tfds.load(name, split=tfds_split, data_dir=data_dir,
                   as_supervised=True, download=False)
  except AssertionError as e:  # What tfds raises for unprepared datasets.
    hint = ("`apt-get install dataset-fashion-mnist` (or point "
            "--config.data_dir at the IDX files), or " if name ==
            "fashion_mnist" else "")
    raise UserInputError(
        f"Dataset {name!r} not found (tfds data_dir={data_dir or 'default'})"
        f"; get it with {hint}`tfds build {name}` on a machine with internet "
        "access and pass its data directory as --config.data_dir.") from e
  images, labels = [], []
  for x, y in tfds.as_numpy(ds.batch(8192)):
    images.append(x)
    labels.append(y)
  return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def _load_arrays(name: str, split: str, data_dir: str | None, source: str,
                 limit: int | None) -> tuple[np.ndarray, np.ndarray]:
  """`load_arrays` with an optional leading-examples `limit`."""
  info = dataset_info(name)
  validation.check_choice("split", split, SPLITS)
  validation.check_choice("data source", source, SOURCES)
  validation.check_int("limit", limit, allow_none=True)
  if name != "fashion_mnist" and source == "idx":
    raise UserInputError(
        f"source='idx' only supports fashion_mnist; use source='tfds' for "
        f"{name}.")
  if name == "fashion_mnist" and source != "tfds":
    idx_dir = data_dir or DEFAULT_FASHION_MNIST_DIR
    if source == "idx" or _find_idx(idx_dir, split, "images"):
      images, labels = _load_idx(idx_dir, split)
      return images[:limit], labels[:limit]
  images, labels = _load_tfds(name, split, data_dir, limit)
  if images.shape[1:] != info.image_shape:
    raise UserInputError(
        f"tfds returned {name} images of shape {images.shape[1:]}, expected "
        f"{info.image_shape}; rebuild it with `tfds build {name}`.")
  return images[:limit], labels[:limit]


def load_arrays(name: str, split: str, data_dir: str | None = None,
                source: str = "auto") -> tuple[np.ndarray, np.ndarray]:
  """Loads a whole split into memory.

  Args:
    name: One of `DATASETS`.
    split: "train" or "test".
    data_dir: For `source="idx"`, the directory holding the Fashion-MNIST IDX
      files (default `/usr/share/datasets/fashion-mnist`); for tfds, its data
      directory (default: the tfds default).
    source: "idx" (Fashion-MNIST only), "tfds", or "auto": the IDX files if
      present, else tfds.

  Returns:
    `(images, labels)`: uint8 `(N, H, W, C)` and int64 `(N,)`.

  Raises:
    UserInputError: On bad arguments or missing / corrupt data.
  """
  return _load_arrays(name, split, data_dir, source, None)


# ----------------------------------------------------------------------------
# Preprocessing.
# ----------------------------------------------------------------------------


def augment_images(images: tf.Tensor, seed: tf.Tensor,
                   padding: int = _CROP_PADDING) -> tf.Tensor:
  """Random crop with zero padding plus random horizontal flip, batched.

  Equivalent to torchvision's `RandomCrop(H, padding)` followed by
  `RandomHorizontalFlip()` applied to each image independently: every output
  is the input shifted by `(dy, dx)` in `[-padding, padding]^2` with zeros
  shifted in, mirrored with probability 1/2. Apply it before normalisation so
  the padding is black, as in the reference code.

  Args:
    images: `(B, H, W, C)` tensor of any dtype.
    seed: Shape `[2]` integer seed of the stateless random ops; the same seed
      gives the same augmentation.
    padding: Maximum shift in pixels.

  Returns:
    The augmented images, same shape and dtype.
  """
  images = tf.convert_to_tensor(images)
  shape = tf.shape(images)
  batch, height, width = shape[0], shape[1], shape[2]
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  offsets = tf.random.stateless_uniform(
      [2, batch], crop_seed, minval=0, maxval=2 * padding + 1, dtype=tf.int32)
  flip = tf.random.stateless_uniform([batch], flip_seed) < 0.5
  padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding],
                           [0, 0]])
  rows = offsets[0][:, None] + tf.range(height)[None, :]
  cols = tf.range(width)[None, :]
  cols = offsets[1][:, None] + tf.where(flip[:, None], width - 1 - cols, cols)
  out = tf.gather(padded, rows, axis=1, batch_dims=1)
  out = tf.gather(out, cols, axis=2, batch_dims=1)
  return tf.ensure_shape(out, images.shape)


def normalize_images(images: tf.Tensor, info: DatasetInfo) -> tf.Tensor:
  """Maps uint8 images to float32 `(x / 255 - mean) / std`."""
  x = tf.cast(images, tf.float32) / 255.0
  return (x - tf.constant(info.mean, tf.float32)) / tf.constant(
      info.std, tf.float32)


def _eval_pipeline(images: np.ndarray, labels: np.ndarray, batch_size: int,
                   info: DatasetInfo) -> tf.data.Dataset:
  ds = tf.data.Dataset.from_tensor_slices((images, labels))
  ds = ds.batch(batch_size).map(
      lambda x, y: (normalize_images(x, info), tf.cast(y, tf.int32)),
      num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)


def cutout(images: tf.Tensor, seed: tf.Tensor, length: int) -> tf.Tensor:
  """Zeroes one square per image, rows and columns [c - length//2, c + length//2).

  The reference `Cutout`: the centre c is uniform over the pixels, so squares
  near the border are clipped. Apply it after normalisation, as
  the reference does (the square is then the mean colour).

  Args:
    images: `(B, H, W, C)` float tensor.
    seed: shape `[2]` integer seed of the stateless random ops.
    length: side of the square.

  Returns:
    The images with the squares zeroed.
  """
  shape = tf.shape(images)
  batch, height, width = shape[0], shape[1], shape[2]
  seed_y, seed_x = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  cy = tf.random.stateless_uniform([batch, 1], seed_y, maxval=height, dtype=tf.int32)
  cx = tf.random.stateless_uniform([batch, 1], seed_x, maxval=width, dtype=tf.int32)
  rows, cols = tf.range(height)[None, :], tf.range(width)[None, :]
  half = length // 2
  inside_y = (rows >= cy - half) & (rows < cy + half)
  inside_x = (cols >= cx - half) & (cols < cx + half)
  hole = inside_y[:, :, None] & inside_x[:, None, :]
  return images * tf.cast(~hole, images.dtype)[:, :, :, None]


def _one_pass(num_examples: int, batch_size: int, seed: tf.Tensor) -> tf.data.Dataset:
  """`(indices, batch_seed)` of one pass over the examples in a random order."""
  order_seed, batch_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  order = tf.random.experimental.stateless_shuffle(tf.range(num_examples), order_seed)
  batches = num_examples // batch_size
  order = tf.reshape(order[:batches * batch_size], [batches, batch_size])
  return tf.data.Dataset.from_tensor_slices(
      (order, tf.random.experimental.stateless_split(batch_seed, batches)))


def _train_pipeline(images: np.ndarray, labels: np.ndarray, batch_size: int,
                    info: DatasetInfo, seed: int, augment: bool,
                    repeat: bool, epoch: tf.Variable | int,
                    cutout_length: int = 0) -> tf.data.Dataset:
  """Shuffled, optionally augmented (and cut out), drop-remainder batches.

  The order and the augmentation of an epoch are drawn from `(seed, epoch)` alone,
  `epoch` being read when an iterator starts: however many iterators were made
  before (Keras makes an extra one under a distribution strategy) and whether the
  run was resumed, epoch e gets the same batches. With `repeat`, one epoch is an
  endless stream of passes, each in its own order.
  """
  images, labels = tf.constant(images), tf.constant(labels)
  num_examples = len(labels)

  def passes(epoch_value):
    epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch_value])
    if not repeat:
      return _one_pass(num_examples, batch_size, epoch_seed)
    return tf.data.Dataset.counter().flat_map(lambda index: _one_pass(
        num_examples, batch_size,
        tf.random.experimental.stateless_fold_in(epoch_seed, index)))

  def preprocess(indices, batch_seed):
    x = tf.gather(images, indices)
    if augment:
      x = augment_images(x, batch_seed)
    x = normalize_images(x, info)
    if cutout_length:
      x = cutout(x, tf.random.experimental.stateless_fold_in(batch_seed, 1),
                 cutout_length)
    return x, tf.cast(tf.gather(labels, indices), tf.int32)

  current_epoch = lambda _: tf.cast(tf.convert_to_tensor(epoch), tf.int64)
  ds = tf.data.Dataset.range(1).map(current_epoch).flat_map(passes)
  ds = ds.apply(tf.data.experimental.assert_cardinality(
      tf.data.INFINITE_CARDINALITY if repeat else num_examples // batch_size))
  # Deterministic order: (seed, epoch) reproduces the whole stream.
  return ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------
# Public pipelines.
# ----------------------------------------------------------------------------


def search_datasets(
    name: str,
    batch_size: int,
    train_portion: float = 0.5,
    *,
    data_dir: str | None = None,
    source: str = "auto",
    seed: int = 2,
    limit: int | None = None,
    augment: bool = True,
    epoch: tf.Variable | int = 0,
) -> tuple[tf.data.Dataset, tf.data.Dataset, DatasetInfo]:
  """Builds the pipelines of the bi-level architecture search.

  The train split is cut into its first `floor(train_portion * N)` examples
  (search-train) and the rest (search-val), as in the DARTS reference code.

  Args:
    name: One of `DATASETS`.
    batch_size: Batch size of every stream.
    train_portion: Fraction of the train split used for search-train, in
      (0, 1).
    data_dir: See `load_arrays`.
    source: See `load_arrays`.
    seed: Seed of shuffling and augmentation; `(seed, epoch)` fixes an
      epoch's stream.
    limit: If set, only the first `limit` train examples are used.
    augment: Whether to augment both search streams (crop + flip).
    epoch: The epoch to produce: an int (every iteration gives the same
      stream), or an `core.callbacks.epoch_variable()` read when an iterator starts; set it
      before each epoch (`callbacks.InputEpoch`) to reshuffle and re-augment.

  Returns:
    `(train_ds, val_eval_ds, info)`. `train_ds` yields
    `((x_train, y_train), (x_val, y_val))`: one epoch of search-train batches
    zipped with an endless, independently shuffled search-val stream, so its
    cardinality is `n_train // batch_size`. `val_eval_ds` yields `(x, y)`
    batches of search-val in order, unaugmented, keeping the last partial
    batch. Images are normalised float32, labels int32.

  Raises:
    UserInputError: On bad arguments, missing data, or halves smaller than
      one batch.
  """
  info = dataset_info(name)
  validation.check_int("batch_size", batch_size)
  if (isinstance(train_portion, bool) or
      not isinstance(train_portion, (int, float)) or
      not 0.0 < train_portion < 1.0):
    raise UserInputError(
        f"train_portion must be strictly between 0 and 1, got "
        f"{train_portion!r} (0.5 as in MiLeNAS).")
  images, labels = _load_arrays(name, "train", data_dir, source, limit)
  split = int(np.floor(train_portion * len(images)))
  n_val = len(images) - split
  if min(split, n_val) < batch_size:
    raise UserInputError(
        f"batch_size={batch_size} exceeds the search-train ({split}) or "
        f"search-val ({n_val}) size; lower batch_size, raise limit or adjust "
        "train_portion.")
  train = _train_pipeline(images[:split], labels[:split], batch_size, info,
                          seed, augment, repeat=False, epoch=epoch)
  val = _train_pipeline(images[split:], labels[split:], batch_size, info,
                        seed + 1, augment, repeat=True, epoch=epoch)
  train_ds = tf.data.Dataset.zip(train, val).prefetch(tf.data.AUTOTUNE)
  val_eval_ds = _eval_pipeline(images[split:], labels[split:], batch_size,
                               info)
  return train_ds, val_eval_ds, info


def train_datasets(
    name: str,
    batch_size: int,
    *,
    data_dir: str | None = None,
    source: str = "auto",
    seed: int = 0,
    limit: int | None = None,
    augment: bool = True,
    cutout_length: int = 0,
    epoch: tf.Variable | int = 0,
) -> tuple[tf.data.Dataset, tf.data.Dataset, DatasetInfo]:
  """Builds the pipelines of training an evaluation network from scratch.

  Args:
    name: One of `DATASETS`.
    batch_size: Global batch size.
    data_dir: See `load_arrays`.
    source: See `load_arrays`.
    seed: Seed of shuffling, augmentation and cutout.
    limit: If set, only the first `limit` examples of each split are used.
    augment: Random crop (pad 4) and flip.
    cutout_length: Side of the cutout square; 0 disables it.
    epoch: The epoch to produce, as in `search_datasets`.

  Returns:
    `(train_ds, test_ds, info)`: one epoch of shuffled, augmented,
    drop-remainder training batches, and the test split in order.

  Raises:
    UserInputError: On bad arguments, missing data, or fewer training examples
      than one batch.
  """
  info = dataset_info(name)
  validation.check_int("batch_size", batch_size)
  if cutout_length < 0:
    raise UserInputError(f"cutout_length must be 0 (off) or positive, got {cutout_length}.")
  images, labels = _load_arrays(name, "train", data_dir, source, limit)
  if len(images) < batch_size:
    raise UserInputError(f"batch_size={batch_size} exceeds the {len(images)} training "
                         "examples; lower batch_size or raise limit.")
  train = _train_pipeline(images, labels, batch_size, info, seed, augment,
                          repeat=False, epoch=epoch, cutout_length=cutout_length)
  test_images, test_labels = _load_arrays(name, "test", data_dir, source, limit)
  return (train.prefetch(tf.data.AUTOTUNE),
          _eval_pipeline(test_images, test_labels, batch_size, info), info)


def eval_dataset(name: str, split: str, batch_size: int, *,
                 data_dir: str | None = None, source: str = "auto",
                 limit: int | None = None) -> tf.data.Dataset:
  """Normalised, unaugmented, in-order `(x, y)` batches of a whole split."""
  info = dataset_info(name)
  validation.check_int("batch_size", batch_size)
  images, labels = _load_arrays(name, split, data_dir, source, limit)
  return _eval_pipeline(images, labels, batch_size, info)


def synthetic_search_datasets(
    image_shape: tuple[int, int, int],
    num_classes: int,
    batch_size: int,
    steps: int,
    seed: int = 0,
) -> tuple[tf.data.Dataset, tf.data.Dataset, DatasetInfo]:
  """Random stand-in for `search_datasets`, for benchmarks.

  Args:
    image_shape: `(height, width, channels)`.
    num_classes: Number of labels.
    batch_size: Batch size.
    steps: Number of elements of `train_ds`.
    seed: Seed of the random data.

  Returns:
    `(train_ds, val_eval_ds, info)` with the structure, dtypes and shapes of
    `search_datasets`; `train_ds` has exactly `steps` elements (the same
    pre-generated batch, so the pipeline costs nothing) and `val_eval_ds` 2.
  """
  validation.check_int("batch_size", batch_size)
  validation.check_int("steps", steps)
  validation.check_int("num_classes", num_classes)
  image_shape = tuple(int(d) for d in image_shape)
  rng = np.random.default_rng(seed)

  def batch():
    x = rng.standard_normal((batch_size, *image_shape), np.float32)
    y = rng.integers(0, num_classes, batch_size).astype(np.int32)
    return x, y

  train_ds = tf.data.Dataset.from_tensors((batch(), batch())).repeat(steps)
  val_eval_ds = tf.data.Dataset.from_tensor_slices(
      tuple(np.stack(t) for t in zip(batch(), batch())))
  channels = image_shape[-1]
  info = DatasetInfo(
      name="synthetic",
      image_shape=image_shape,
      num_classes=num_classes,
      mean=(0.0,) * channels,
      std=(1.0,) * channels,
      class_names=tuple(str(i) for i in range(num_classes)),
  )
  return train_ds, val_eval_ds, info
