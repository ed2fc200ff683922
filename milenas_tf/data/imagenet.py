"""ImageNet input pipelines for training an evaluation network.

The DARTS / MiLeNAS "mobile setting": 224x224 crops of ILSVRC-2012, 1000
classes, preprocessed as the reference `train_imagenet.py` does with
torchvision. For training that means `RandomResizedCrop(224)` (area 8%-100% of
the image, aspect ratio 3/4-4/3), a random horizontal flip and
`ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)`. For
evaluation it means `Resize(256)` followed by `CenterCrop(224)`. Both end with
scaling to [0, 1] and normalising with `IMAGENET_MEAN` / `IMAGENET_STD`.

Three sources are read ("auto" picks the first present, in this order);
nothing is ever downloaded:

* "tfrecord": TFRecord shards `train-*-of-*` and `validation-*-of-*` directly
  in `data_dir` (or in its `train/` and `validation/` subdirectories), with the
  features `image/encoded` (JPEG bytes) and `image/class/label` (int64). This
  is the layout written by Inception's `build_imagenet_data.py` and the TPU
  `imagenet_to_gcs.py`, whose labels run from 1 to 1000. `label_offset` (1 by
  default) is therefore subtracted.
* "folder": the images in `data_dir/train/<wnid>/` and `data_dir/val/<wnid>/`
  (`validation/` is accepted too), as .jpeg / .jpg / .png files. A class's
  index is the position of its wnid among the sorted train subdirectories.
* "tfds": the `tensorflow_datasets` dataset `imagenet2012`, prepared in
  `data_dir` (or prepared there from the ILSVRC-2012 tar files in
  `manual_dir`).
"""

from __future__ import annotations

import math
import os

import tensorflow as tf

from milenas_tf.core import validation
from milenas_tf.core.errors import UserInputError
from milenas_tf.data.datasets import DatasetInfo

# The normalisation of the DARTS reference ImageNet code (train_imagenet.py).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCES = ("auto", "tfds", "tfrecord", "folder")

NUM_CLASSES = 1000
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
DEFAULT_SHUFFLE_BUFFER = 10_000

# torchvision RandomResizedCrop defaults, as used by the reference code.
_CROP_AREA_RANGE = (0.08, 1.0)
_CROP_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
_CROP_ATTEMPTS = 10
# torchvision ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4,
# hue=0.2) of the reference code.
_BRIGHTNESS = _CONTRAST = _SATURATION = 0.4
_HUE = 0.2
# libjpeg's default (JDCT_ISLOW), i.e. what PIL decodes with.
_DCT_METHOD = "INTEGER_ACCURATE"
# PIL's bilinear filter, used by torchvision on PIL images, is antialiased.
_ANTIALIAS = True

_TFDS_NAME = "imagenet2012"
_TFDS_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
_SPLITS = ("train", "validation")
_SHARD_PATTERNS = ("{split}-*-of-*", "{split}/{split}-*-of-*")
_FOLDER_SPLITS = {"train": ("train",), "validation": ("val", "validation")}
_TFRECORD_BUFFER_BYTES = 8 << 20
_MAX_INTERLEAVE_FILES = 16


# ----------------------------------------------------------------------------
# Preprocessing of one image.
# ----------------------------------------------------------------------------


def _decode(image_bytes: tf.Tensor) -> tf.Tensor:
  """Decodes a JPEG (or PNG, GIF, BMP) into a uint8 `(H, W, 3)` tensor."""
  return tf.cond(
      tf.io.is_jpeg(image_bytes),
      lambda: tf.io.decode_jpeg(image_bytes, channels=3,
                                dct_method=_DCT_METHOD),
      lambda: tf.io.decode_image(image_bytes, channels=3,
                                 expand_animations=False))


def _crop_window(image_shape: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Samples the window of torchvision's `RandomResizedCrop`, statelessly.

  Up to 10 attempts draw an area uniformly in [8%, 100%] of the image and an
  aspect ratio (width / height) log-uniformly in [3/4, 4/3]; the first window
  that fits is placed uniformly at random. If none fits, the central crop of
  the whole image with its aspect ratio clamped to [3/4, 4/3] is used.
  (`tf.image.sample_distorted_bounding_box` is not used: it draws the height
  uniformly, which favours small areas; on a 375x500 image its mean crop area
  is 0.37 of the image against torchvision's 0.43.)

  Args:
    image_shape: `[height, width, ...]` integer tensor.
    seed: Shape `[2]` integer seed.

  Returns:
    int32 `[offset_y, offset_x, crop_height, crop_width]`.
  """
  image_shape = tf.cast(image_shape, tf.int32)
  height, width = image_shape[0], image_shape[1]
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  area_seed, ratio_seed, y_seed, x_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  target_area = h * w * tf.random.stateless_uniform(
      [_CROP_ATTEMPTS], area_seed, *_CROP_AREA_RANGE)
  log_lo, log_hi = (math.log(r) for r in _CROP_ASPECT_RANGE)
  ratio = tf.exp(tf.random.stateless_uniform([_CROP_ATTEMPTS], ratio_seed,
                                             log_lo, log_hi))
  crop_w = tf.cast(tf.round(tf.sqrt(target_area * ratio)), tf.int32)
  crop_h = tf.cast(tf.round(tf.sqrt(target_area / ratio)), tf.int32)
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  first = tf.reduce_min(
      tf.where(fits, tf.range(_CROP_ATTEMPTS), _CROP_ATTEMPTS))

  def random_window():
    ch, cw = crop_h[first], crop_w[first]
    u = tf.stack([tf.random.stateless_uniform([], y_seed),
                  tf.random.stateless_uniform([], x_seed)])
    span = tf.cast(tf.stack([height - ch + 1, width - cw + 1]), tf.float32)
    offset = tf.minimum(tf.cast(u * span, tf.int32),
                        tf.stack([height - ch, width - cw]))
    return tf.stack([offset[0], offset[1], ch, cw])

  def central_window():
    lo, hi = _CROP_ASPECT_RANGE
    in_ratio = w / h
    round_int = lambda x: tf.cast(tf.round(x), tf.int32)
    ch = tf.where(in_ratio < lo, round_int(w / lo), height)
    cw = tf.where(in_ratio > hi, round_int(h * hi), width)
    return tf.stack([(height - ch) // 2, (width - cw) // 2, ch, cw])

  return tf.cond(tf.reduce_any(fits), random_window, central_window)


def _decode_and_random_crop(image_bytes: tf.Tensor,
                            seed: tf.Tensor) -> tf.Tensor:
  """Decodes only the `_crop_window` of JPEGs; other formats are cropped."""

  def jpeg():
    window = _crop_window(tf.image.extract_jpeg_shape(image_bytes), seed)
    return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3,
                                         dct_method=_DCT_METHOD)

  def other():
    image = tf.io.decode_image(image_bytes, channels=3,
                               expand_animations=False)
    y, x, h, w = tf.unstack(_crop_window(tf.shape(image), seed))
    return image[y:y + h, x:x + w]

  return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  return tf.image.rgb_to_grayscale(image)  # ITU-R 601-2, as torchvision.


def _color_jitter(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """torchvision's `ColorJitter(0.4, 0.4, 0.4, 0.2)` on a float RGB image.

  Brightness, contrast and saturation factors are uniform in [0.6, 1.4], the
  hue shift in [-0.2, 0.2] of a turn; the four adjustments are applied in a
  random order, each clipping to [0, 1], as torchvision does.

  Args:
    image: float32 `(H, W, 3)` in [0, 1].
    seed: Shape `[2]` integer seed.

  Returns:
    The jittered image.
  """
  order_seed, factor_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  u = tf.random.stateless_uniform([4], factor_seed, -1.0, 1.0)
  brightness = 1.0 + _BRIGHTNESS * u[0]
  contrast = 1.0 + _CONTRAST * u[1]
  saturation = 1.0 + _SATURATION * u[2]
  hue = _HUE * u[3]

  def blend(x, other, factor):
    return tf.clip_by_value(factor * x + (1.0 - factor) * other, 0.0, 1.0)

  adjustments = (
      lambda x: tf.clip_by_value(x * brightness, 0.0, 1.0),
      lambda x: blend(x, tf.reduce_mean(_grayscale(x)), contrast),
      lambda x: blend(x, _grayscale(x), saturation),
      lambda x: tf.clip_by_value(tf.image.adjust_hue(x, hue), 0.0, 1.0),
  )
  order = tf.argsort(tf.random.stateless_uniform([4], order_seed))

  def step(i, x):
    x = tf.switch_case(order[i], [lambda f=f: f(x) for f in adjustments])
    return i + 1, x

  # A loop rather than 4 unrolled switches: a quarter of the graph to trace.
  _, image = tf.while_loop(lambda i, _: i < 4, step, [0, image],
                           parallel_iterations=1)
  return image


def _normalize(image: tf.Tensor) -> tf.Tensor:
  """Maps [0, 1] floats to `(x - IMAGENET_MEAN) / IMAGENET_STD`."""
  return (image - tf.constant(IMAGENET_MEAN, tf.float32)) / tf.constant(
      IMAGENET_STD, tf.float32)


def preprocess_train(image_bytes: tf.Tensor, seed: tf.Tensor,
                     image_size: int = 224) -> tf.Tensor:
  """Decodes and augments one training image, as the reference code does.

  Random-resized crop (see `_crop_window`; only the window of a JPEG is
  decoded) resized bilinearly to `image_size` squared, horizontal flip with
  probability 1/2, colour jitter (see `_color_jitter`), scaling to [0, 1] and
  normalisation with `IMAGENET_MEAN` / `IMAGENET_STD`. The random ops are
  stateless: the same bytes and seed always give the same output.

  Args:
    image_bytes: Scalar string tensor, an encoded JPEG or PNG (any format
      `tf.io.decode_image` reads).
    seed: Shape `[2]` integer seed. It is split into
      `stateless_split(seed, 3)` = (crop, flip, jitter) seeds.
    image_size: Side of the square output.

  Returns:
    float32 `(image_size, image_size, 3)` tensor.
  """
  seed = tf.convert_to_tensor(seed)
  crop_seed, flip_seed, jitter_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  image = _decode_and_random_crop(image_bytes, crop_seed)
  image = tf.image.resize(image, [image_size, image_size],
                          method="bilinear", antialias=_ANTIALIAS) / 255.0
  image = tf.cond(tf.random.stateless_uniform([], flip_seed) < 0.5,
                  lambda: tf.reverse(image, [1]), lambda: image)
  image = _color_jitter(image, jitter_seed)
  return tf.ensure_shape(_normalize(image), [image_size, image_size, 3])


def decode_eval(image_bytes: tf.Tensor, image_size: int = 224,
                resize_size: int = 256) -> tf.Tensor:
  """Decodes one evaluation image: torchvision `Resize` + `CenterCrop`.

  The shorter side is resized bilinearly to `resize_size` (the longer one to
  `floor(resize_size * long / short)`) and the central `image_size` square is cut
  out (offsets rounded as torchvision does). Deterministic.

  Args:
    image_bytes: Scalar string tensor, an encoded JPEG or PNG.
    image_size: Side of the square output.
    resize_size: Length of the shorter side before cropping, at least
      `image_size`.

  Returns:
    float32 `(image_size, image_size, 3)` pixels in [0, 255].

  Raises:
    UserInputError: if `resize_size` is below `image_size`.
  """
  if resize_size < image_size:
    raise UserInputError(
        f"resize_size={resize_size} is smaller than image_size={image_size}; "
        "use resize_size >= image_size (256 for 224 crops).")
  image = _decode(image_bytes)
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
  size = tf.constant(resize_size, tf.float64)
  new_h = tf.where(h <= w, size, tf.floor(size * h / w))
  new_w = tf.where(w <= h, size, tf.floor(size * w / h))
  new_size = tf.cast(tf.stack([new_h, new_w]), tf.int32)
  image = tf.image.resize(image, new_size, method="bilinear",
                          antialias=_ANTIALIAS)
  offset = tf.cast(
      tf.round(tf.cast(new_size - image_size, tf.float64) / 2.0), tf.int32)
  image = image[offset[0]:offset[0] + image_size,
                offset[1]:offset[1] + image_size]
  return tf.ensure_shape(image, [image_size, image_size, 3])


def preprocess_eval(image_bytes: tf.Tensor, image_size: int = 224,
                    resize_size: int = 256) -> tf.Tensor:
  """`decode_eval`, scaled to [0, 1] and normalised with `IMAGENET_MEAN` /
  `IMAGENET_STD`: float32 `(image_size, image_size, 3)`."""
  return _normalize(decode_eval(image_bytes, image_size, resize_size) / 255.0)


# ----------------------------------------------------------------------------
# Sources: each yields (encoded image, int label) per example.
# ----------------------------------------------------------------------------


def _find_shards(data_dir: str, split: str) -> list[str]:
  for pattern in _SHARD_PATTERNS:
    files = tf.io.gfile.glob(
        os.path.join(data_dir, pattern.format(split=split)))
    if files:
      return sorted(files)
  return []


def _tfrecord_source(data_dir: str, num_classes: int, label_offset: int):
  """Returns `({split: shard paths}, parse)`; `parse` checks the label."""
  shards = {split: _find_shards(data_dir, split) for split in _SPLITS}
  for split, files in shards.items():
    if not files:
      raise UserInputError(
          f"No TFRecord shards {split}-*-of-* in {data_dir} (nor in "
          f"{os.path.join(data_dir, split)}); write them with "
          "build_imagenet_data.py / imagenet_to_gcs.py or pick another "
          "source.")
  features = {
      "image/encoded": tf.io.FixedLenFeature([], tf.string),
      "image/class/label": tf.io.FixedLenFeature([], tf.int64),
  }
  message = (
      f"ImageNet TFRecord label minus label_offset={label_offset} is outside "
      f"[0, {num_classes}); shards of build_imagenet_data.py / "
      "imagenet_to_gcs.py hold labels 1..1000 (label_offset=1), 0-based "
      "shards need label_offset=0")

  def parse(record):
    example = tf.io.parse_single_example(record, features)
    label = example["image/class/label"] - label_offset
    checks = [
        tf.debugging.assert_greater_equal(label, tf.constant(0, tf.int64),
                                          message=message),
        tf.debugging.assert_less(label, tf.constant(num_classes, tf.int64),
                                 message=message),
    ]
    with tf.control_dependencies(checks):
      return example["image/encoded"], tf.cast(label, tf.int32)

  return shards, parse


def _read_tfrecords(files: list[str], *, shuffle: bool, seed: int,
                    limit: int | None) -> tf.data.Dataset:
  """Records of `files`; file order and sequential if not `shuffle`."""
  if limit is not None or not shuffle:
    ds = tf.data.TFRecordDataset(files, buffer_size=_TFRECORD_BUFFER_BYTES)
    return ds if limit is None else ds.take(limit)
  files_ds = tf.data.Dataset.from_tensor_slices(files).shuffle(
      len(files), seed=seed, reshuffle_each_iteration=True)
  # Deterministic interleave: with the seeded shuffles it fixes the stream,
  # so a seed reproduces which augmentation each example gets.
  return files_ds.interleave(
      lambda f: tf.data.TFRecordDataset(f, buffer_size=_TFRECORD_BUFFER_BYTES),
      cycle_length=min(len(files), _MAX_INTERLEAVE_FILES), block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _list_dirs(path: str) -> list[str]:
  names = [n.rstrip("/") for n in tf.io.gfile.listdir(path)]
  return sorted(n for n in names if not n.startswith(".")
                and tf.io.gfile.isdir(os.path.join(path, n)))


def _folder_split_dir(data_dir: str, split: str) -> str:
  for name in _FOLDER_SPLITS[split]:
    path = os.path.join(data_dir, name)
    if tf.io.gfile.isdir(path):
      return path
  names = " or ".join(f"{n}/" for n in _FOLDER_SPLITS[split])
  raise UserInputError(
      f"No {names} folder in {data_dir}; the folder source needs "
      f"{data_dir}/train/<wnid>/*.JPEG and {data_dir}/val/<wnid>/*.JPEG.")


def _folder_files(data_dir: str) -> tuple[dict, tuple[str, ...]]:
  """Returns `({split: (paths, labels)}, wnids)` of an image folder."""
  split_dirs = {split: _folder_split_dir(data_dir, split) for split in _SPLITS}
  wnids = _list_dirs(split_dirs["train"])
  index = {wnid: i for i, wnid in enumerate(wnids)}
  files = {}
  for split, split_dir in split_dirs.items():
    classes = _list_dirs(split_dir)
    unknown = [wnid for wnid in classes if wnid not in index]
    if unknown:
      raise UserInputError(
          f"Class folder(s) {', '.join(unknown[:5])} of {split_dir} have no "
          f"counterpart in {split_dirs['train']}; every val/<wnid> needs a "
          "train/<wnid> folder (remove or rename the extra folders).")
    paths, labels = [], []
    for wnid in classes:
      class_dir = os.path.join(split_dir, wnid)
      names = sorted(n for n in tf.io.gfile.listdir(class_dir)
                     if n.lower().endswith(IMAGE_EXTENSIONS))
      paths.extend(os.path.join(class_dir, n) for n in names)
      labels.extend([index[wnid]] * len(names))
    if not paths:
      raise UserInputError(
          f"No images ({'/'.join(IMAGE_EXTENSIONS)}) in {split_dir}/<wnid>/; "
          "put each class's images in a subfolder named after its wnid.")
    files[split] = (paths, labels)
  return files, tuple(wnids)


def _read_folder(paths: list[str], labels: list[int], *, shuffle: bool,
                 seed: int, limit: int | None) -> tf.data.Dataset:
  paths, labels = paths[:limit], labels[:limit]
  ds = tf.data.Dataset.from_tensor_slices(
      (tf.constant(paths), tf.constant(labels, tf.int32)))
  if shuffle:  # The whole list: cheap, and better than any buffer.
    ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
  return ds.map(lambda path, label: (tf.io.read_file(path), label),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _tfds_builder(data_dir: str | None, manual_dir: str | None):
  """Returns the `imagenet2012` builder, prepared from `manual_dir` if set."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder(_TFDS_NAME, data_dir=data_dir)
  if manual_dir is not None and not builder.is_prepared():
    missing = [t for t in _TFDS_TARS
               if not tf.io.gfile.exists(os.path.join(manual_dir, t))]
    if missing:
      raise UserInputError(
          f"manual_dir {manual_dir} lacks {' and '.join(missing)}; download "
          "them from https://image-net.org/download-images into it.")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def _read_tfds(builder, split: str, *, shuffle: bool, seed: int,
               limit: int | None, data_dir: str | None) -> tf.data.Dataset:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tfds_split = split if limit is None else f"{split}[:{limit}]"
  read_config = tfds.ReadConfig(
      shuffle_seed=seed, shuffle_reshuffle_each_iteration=True,
      interleave_cycle_length=_MAX_INTERLEAVE_FILES, interleave_block_length=1)
  try:
    ds = builder.as_dataset(
        split=tfds_split, shuffle_files=shuffle, read_config=read_config,
        as_supervised=True, decoders={"image": tfds.decode.SkipDecoding()})
  except AssertionError as e:  # What tfds raises for unprepared datasets.
    raise UserInputError(
        f"tfds dataset {_TFDS_NAME} is not prepared in "
        f"{data_dir or 'the default tfds data_dir'}; download "
        f"{' and '.join(_TFDS_TARS)} from "
        "https://image-net.org/download-images and pass their folder as "
        "manual_dir (or run `tfds build imagenet2012 --manual_dir=...`), or "
        "use TFRecord shards / an image folder.") from e
  ds = ds.map(lambda image, label: (image, tf.cast(label, tf.int32)))
  return ds if limit is None else ds.take(limit)  # tfds mocks ignore slices.


# ----------------------------------------------------------------------------
# Public pipeline.
# ----------------------------------------------------------------------------


def _resolve_source(source: str, data_dir: str | None,
                    manual_dir: str | None) -> str:
  validation.check_choice("ImageNet source", source, SOURCES)
  if data_dir is None:
    if source in ("tfrecord", "folder"):
      raise UserInputError(
          f"source={source!r} needs data_dir (--config.data_dir), the "
          "directory holding the ImageNet data.")
    return "tfds"
  manual = source == "tfds" and manual_dir is not None
  if not tf.io.gfile.isdir(data_dir) and not manual:
    raise UserInputError(
        f"ImageNet data_dir {data_dir} does not exist; point data_dir "
        "(--config.data_dir) at the TFRecord shards, the train/ and val/ "
        "image folders, or the tfds data directory.")
  if source != "auto":
    return source
  if _find_shards(data_dir, "train"):
    return "tfrecord"
  if tf.io.gfile.isdir(os.path.join(data_dir, "train")):
    return "folder"
  return "tfds"


def _read_synsets(path: str) -> tuple[str, ...]:
  try:
    with tf.io.gfile.GFile(path) as f:
      names = tuple(line.split()[0] for line in f.read().splitlines()
                    if line.strip())
  except (OSError, tf.errors.OpError) as e:
    raise UserInputError(
        f"Cannot read the synsets file {path}: {e}; pass a text file with one "
        "wnid per line, in label order.") from e
  if not names:
    raise UserInputError(f"The synsets file {path} is empty; pass a text file "
                         "with one wnid per line, in label order.")
  return names


def imagenet_datasets(
    batch_size: int,
    *,
    data_dir: str | None,
    source: str = "auto",
    image_size: int = 224,
    resize_size: int = 256,
    seed: int = 0,
    limit: int | None = None,
    label_offset: int = 1,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    manual_dir: str | None = None,
    synsets: str | None = None,
) -> tuple[tf.data.Dataset, tf.data.Dataset, DatasetInfo]:
  """Builds the ImageNet training and validation pipelines.

  Args:
    batch_size: Global batch size.
    data_dir: The TFRecord shards' or image folder's directory, or the tfds
      data directory (None: the tfds default; only for tfds).
    source: One of `SOURCES`. "auto" picks "tfrecord" if `train-*-of-*`
      shards are in `data_dir` (or `data_dir/train/`), else "folder" if
      `data_dir/train/` exists, else "tfds".
    image_size: Side of the square crops.
    resize_size: Shorter side of validation images before the central crop.
    seed: Seed of file and example shuffling and of the augmentation.
    limit: If set, only the first `limit` examples of each split are used (in
      file order, or sorted path order for a folder).
    label_offset: Subtracted from TFRecord labels: 1 for the usual shards,
      whose labels run from 1 to 1000; 0 for 0-based shards. Labels outside
      [0, num_classes) after subtraction fail at run time.
    shuffle_buffer: Examples in the TFRecord / tfds shuffle buffer (about
      110 KB of encoded JPEG each). A folder's file list is shuffled whole.
    manual_dir: tfds only: a folder with `ILSVRC2012_img_train.tar` and
      `ILSVRC2012_img_val.tar` to prepare `imagenet2012` from, into `data_dir`,
      if it is not prepared yet (this takes hours).
    synsets: TFRecord only: a text file with one wnid per line, label 0 first
      (e.g. `imagenet_lsvrc_2015_synsets.txt`); it gives the class names and
      number of classes (default: 1000 classes "class_0", ...).

  Returns:
    `(train_ds, val_ds, info)`. `train_ds` yields one epoch of shuffled,
    augmented (`preprocess_train`), drop-remainder batches; every iteration
    reshuffles and re-augments, and `seed` fixes the augmentation each example
    gets (the order within an epoch is not guaranteed: examples are decoded
    in parallel without ordering). `val_ds` yields the validation split in
    order (`preprocess_eval`), keeping the last partial batch. Images are
    float32 `(batch, image_size, image_size, 3)`, labels int32. `info` is a
    `DatasetInfo` named "imagenet" whose class names are the wnids (folder,
    tfds) or from `synsets`.

  Raises:
    UserInputError: On bad arguments or missing data.
  """
  validation.check_int("batch_size", batch_size)
  validation.check_int("image_size", image_size)
  validation.check_int("resize_size", resize_size)
  validation.check_int("limit", limit, allow_none=True)
  validation.check_int("shuffle_buffer", shuffle_buffer)
  validation.check_int("label_offset", label_offset, minimum=0)
  validation.check_int("seed", seed, minimum=0)
  if resize_size < image_size:
    raise UserInputError(
        f"resize_size={resize_size} is smaller than image_size={image_size}; "
        "use resize_size >= image_size (256 for 224 crops).")
  if limit is not None and limit < batch_size:
    raise UserInputError(
        f"batch_size={batch_size} exceeds limit={limit}: no training batch "
        "would be left; lower batch_size or raise limit.")
  source = _resolve_source(source, data_dir, manual_dir)

  if source == "folder":
    files, class_names = _folder_files(data_dir)
    num_train = len(files["train"][0][:limit])
    if num_train < batch_size:
      raise UserInputError(
          f"batch_size={batch_size} exceeds the {num_train} training images "
          f"in {data_dir}; lower batch_size or add images.")
    train = _read_folder(*files["train"], shuffle=True, seed=seed, limit=limit)
    val = _read_folder(*files["validation"], shuffle=False, seed=seed,
                       limit=limit)
  elif source == "tfrecord":
    class_names = (_read_synsets(synsets) if synsets is not None else
                   tuple(f"class_{i}" for i in range(NUM_CLASSES)))
    shards, parse = _tfrecord_source(data_dir, len(class_names), label_offset)
    train = _read_tfrecords(shards["train"], shuffle=True, seed=seed,
                            limit=limit).shuffle(
                                shuffle_buffer, seed=seed,
                                reshuffle_each_iteration=True)
    # Parsing is cheap and keeps the encoded bytes, so it stays sequential.
    train = train.map(parse)
    val = _read_tfrecords(shards["validation"], shuffle=False, seed=seed,
                          limit=limit).map(parse)
  else:
    builder = _tfds_builder(data_dir, manual_dir)
    class_names = tuple(builder.info.features["label"].names)
    train = _read_tfds(builder, "train", shuffle=True, seed=seed, limit=limit,
                       data_dir=data_dir).shuffle(
                           shuffle_buffer, seed=seed,
                           reshuffle_each_iteration=True)
    val = _read_tfds(builder, "validation", shuffle=False, seed=seed,
                     limit=limit, data_dir=data_dir)

  # One stateless seed per example, fresh on every iteration, attached
  # before the unordered map so a seed reproduces each example's augmentation.
  seeds = tf.data.Dataset.random(
      seed=seed, rerandomize_each_iteration=True).batch(2)
  train = tf.data.Dataset.zip(train, seeds).map(
      lambda example, example_seed: (
          preprocess_train(example[0], example_seed, image_size), example[1]),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  train = train.batch(batch_size, drop_remainder=True).prefetch(
      tf.data.AUTOTUNE)
  val = val.map(
      lambda image, label: (preprocess_eval(image, image_size, resize_size),
                            label),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  val = val.batch(batch_size).prefetch(tf.data.AUTOTUNE)
  info = DatasetInfo(
      name="imagenet",
      image_shape=(image_size, image_size, 3),
      num_classes=len(class_names),
      mean=IMAGENET_MEAN,
      std=IMAGENET_STD,
      class_names=class_names,
  )
  return train, val, info
