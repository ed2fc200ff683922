"""Tests for milenas_tf.data.imagenet (offline, on tiny synthetic data)."""

import math
import os
import random

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from milenas_tf.core.errors import UserInputError
from milenas_tf.data import imagenet

SIZE = 32  # Output side of the crops in these tests.
RESIZE = 36  # Shorter side before the evaluation centre crop.
MEAN = np.array(imagenet.IMAGENET_MEAN)
STD = np.array(imagenet.IMAGENET_STD)
WNIDS = ("n01440764", "n01443537", "n01484850")


def _jpeg(image: np.ndarray) -> bytes:
  return tf.io.encode_jpeg(image, quality=95).numpy()


def _png(image: np.ndarray) -> bytes:
  return tf.io.encode_png(image).numpy()


def _constant(color, shape=(40, 56)) -> np.ndarray:
  return np.broadcast_to(np.asarray(color, np.uint8), (*shape, 3)).copy()


def _denormalize(x) -> np.ndarray:
  """Normalised images back to [0, 255] pixel units."""
  return (np.asarray(x) * STD + MEAN) * 255.0


def _example(image_bytes: bytes, label: int) -> bytes:
  feature = {
      "image/encoded": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[image_bytes])),
      "image/class/label": tf.train.Feature(
          int64_list=tf.train.Int64List(value=[label])),
  }
  return tf.train.Example(
      features=tf.train.Features(feature=feature)).SerializeToString()


def _write_shards(directory, split, shards):
  """Writes `shards` (lists of (image bytes, label)) as split-i-of-n files."""
  os.makedirs(directory, exist_ok=True)
  for i, records in enumerate(shards):
    path = os.path.join(directory, f"{split}-{i:05d}-of-{len(shards):05d}")
    with tf.io.TFRecordWriter(path) as writer:
      for image_bytes, label in records:
        writer.write(_example(image_bytes, label))


# Distinct colours of the validation examples, and their (1-based) labels.
VAL_COLORS = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (200, 200, 20),
              (20, 200, 200), (200, 20, 200), (120, 120, 120)]
VAL_LABELS = [3, 1, 2, 2, 3, 1, 1]


def _write_imagenet_tfrecords(directory, layout="flat"):
  """2 train shards of 5 examples (labels 1..3), 1 validation shard of 7."""
  rng = np.random.default_rng(0)
  train = [[(_jpeg(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)),
             1 + (5 * s + i) % 3) for i in range(5)] for s in range(2)]
  val = [[(_jpeg(_constant(c)), y) for c, y in zip(VAL_COLORS, VAL_LABELS)]]
  sub = {"flat": ("", ""), "nested": ("train", "validation")}[layout]
  _write_shards(os.path.join(directory, sub[0]), "train", train)
  _write_shards(os.path.join(directory, sub[1]), "validation", val)
  return [y for shard in train for _, y in shard]


def _batches(ds):
  return list(ds.as_numpy_iterator())


# ---------------------------------------------------------------------------
# TFRecord source.
# ---------------------------------------------------------------------------


def test_tfrecord_source(tmp_path):
  train_labels = _write_imagenet_tfrecords(tmp_path)
  train_ds, val_ds, info = imagenet.imagenet_datasets(
      4, data_dir=str(tmp_path), source="tfrecord", image_size=SIZE,
      resize_size=RESIZE)
  assert info.name == "imagenet" and info.image_shape == (SIZE, SIZE, 3)
  assert info.num_classes == 1000 and len(info.class_names) == 1000
  assert info.class_names[:2] == ("class_0", "class_1")
  assert info.mean == imagenet.IMAGENET_MEAN
  assert info.std == imagenet.IMAGENET_STD
  image_spec = tf.TensorSpec((4, SIZE, SIZE, 3), tf.float32)
  assert train_ds.element_spec == (image_spec, tf.TensorSpec((4,), tf.int32))

  # 10 training examples in batches of 4: 2 batches, 2 examples dropped.
  batches = _batches(train_ds)
  assert len(batches) == 2
  seen = np.concatenate([y for _, y in batches])
  expected = np.array(train_labels) - 1  # label_offset=1 by default.
  assert set(seen) <= {0, 1, 2}
  assert all(np.sum(seen == c) <= np.sum(expected == c) for c in range(3))
  assert all(np.isfinite(x).all() for x, _ in batches)

  # Validation: in order, last partial batch kept, labels shifted, images
  # centre crops of the constant-colour JPEGs.
  val = _batches(val_ds)
  assert [len(y) for _, y in val] == [4, 3]
  np.testing.assert_array_equal(np.concatenate([y for _, y in val]),
                                np.array(VAL_LABELS) - 1)
  x = _denormalize(np.concatenate([x for x, _ in val]))
  np.testing.assert_allclose(x.mean(axis=(1, 2)), VAL_COLORS, atol=4.0)


def test_tfrecord_limit_and_drop_remainder(tmp_path):
  train_labels = _write_imagenet_tfrecords(tmp_path)
  train_ds, val_ds, _ = imagenet.imagenet_datasets(
      3, data_dir=str(tmp_path), source="tfrecord", image_size=SIZE,
      resize_size=RESIZE, limit=7)
  # The first 7 records (shard 0, then shard 1): 2 batches of 3.
  batches = _batches(train_ds)
  assert [len(y) for _, y in batches] == [3, 3]
  seen = np.concatenate([y for _, y in batches])
  first7 = np.array(train_labels[:7]) - 1
  assert all(np.sum(seen == c) <= np.sum(first7 == c) for c in range(3))
  np.testing.assert_array_equal(
      np.concatenate([y for _, y in _batches(val_ds)]),
      np.array(VAL_LABELS) - 1)


def test_tfrecord_label_offset_and_range_check(tmp_path):
  # Labels 0 (with the default offset 1) and 1000 (offset 0) are invalid.
  image = _jpeg(_constant((9, 9, 9)))
  for label, offset in ((0, 1), (1000, 0)):
    data_dir = tmp_path / f"bad{label}"
    _write_shards(data_dir, "train", [[(image, 1)]])
    _write_shards(data_dir, "validation", [[(image, 1), (image, label)]])
    _, val_ds, _ = imagenet.imagenet_datasets(
        1, data_dir=str(data_dir), source="tfrecord", image_size=SIZE,
        resize_size=RESIZE, label_offset=offset)
    batches = iter(val_ds)
    np.testing.assert_array_equal(next(batches)[1], [1 - offset])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=f"label_offset={offset}"):
      next(batches)


def test_tfrecord_synsets_file(tmp_path):
  _write_imagenet_tfrecords(tmp_path)
  synsets = tmp_path / "synsets.txt"
  synsets.write_text("\n".join(WNIDS[:2]) + "\n\n")
  _, val_ds, info = imagenet.imagenet_datasets(
      8, data_dir=str(tmp_path), source="tfrecord", image_size=SIZE,
      resize_size=RESIZE, synsets=str(synsets))
  assert info.class_names == WNIDS[:2] and info.num_classes == 2
  # With 2 classes, label 3 - 1 = 2 is out of range.
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 2\)"):
    _batches(val_ds)
  with pytest.raises(UserInputError, match="synsets file"):
    imagenet.imagenet_datasets(
        8, data_dir=str(tmp_path), source="tfrecord",
        synsets=str(tmp_path / "missing.txt"))


def test_training_stream_is_reproducible_and_reaugmented(tmp_path):
  train_labels = _write_imagenet_tfrecords(tmp_path)

  def epochs(seed, n=1):
    train_ds, _, _ = imagenet.imagenet_datasets(
        5, data_dir=str(tmp_path), source="tfrecord", image_size=SIZE,
        resize_size=RESIZE, seed=seed)
    # Sorted (image, label) pairs: the map is unordered, its outputs are not.
    return [sorted((x.tobytes(), int(y)) for xs, ys in _batches(train_ds)
                   for x, y in zip(xs, ys)) for _ in range(n)]

  first, second = epochs(3, n=2)
  # Batches of 5 use all 10 examples, each once.
  assert sorted(y for _, y in first) == sorted(np.array(train_labels) - 1)
  assert len({x for x, _ in first}) == 10
  assert epochs(3) == [first]  # Same seed, same augmented examples.
  assert not {x for x, _ in first} & {x for x, _ in epochs(4)[0]}
  assert not {x for x, _ in first} & {x for x, _ in second}  # Re-augmented.


# ---------------------------------------------------------------------------
# Image-folder source.
# ---------------------------------------------------------------------------

# One colour per class, as listed in WNIDS (sorted).
CLASS_COLORS = {WNIDS[0]: (240, 20, 20), WNIDS[1]: (20, 240, 20),
                WNIDS[2]: (20, 20, 240)}


def _write_folder(root, split, counts, extensions=(".JPEG", ".jpg", ".png")):
  """Writes counts[wnid] constant-colour images in root/split/wnid/."""
  for wnid, count in counts.items():
    directory = os.path.join(root, split, wnid)
    os.makedirs(directory, exist_ok=True)
    for i in range(count):
      ext = extensions[i % len(extensions)]
      encode = _png if ext.lower() == ".png" else _jpeg
      with open(os.path.join(directory, f"{wnid}_{i}{ext}"), "wb") as f:
        f.write(encode(_constant(CLASS_COLORS[wnid])))


def test_folder_source(tmp_path):
  # Created out of order; a stray file and a hidden folder are ignored.
  counts = {WNIDS[2]: 3, WNIDS[0]: 4, WNIDS[1]: 2}
  _write_folder(tmp_path, "train", counts)
  _write_folder(tmp_path, "val", {WNIDS[1]: 2, WNIDS[2]: 1, WNIDS[0]: 2})
  (tmp_path / "train" / WNIDS[0] / "notes.txt").write_text("not an image")
  (tmp_path / "train" / ".cache").mkdir()
  train_ds, val_ds, info = imagenet.imagenet_datasets(
      3, data_dir=str(tmp_path), source="folder", image_size=SIZE,
      resize_size=RESIZE)
  assert info.class_names == WNIDS and info.num_classes == 3
  assert info.image_shape == (SIZE, SIZE, 3)

  # 9 training images in batches of 3; each label exactly as often as its
  # class folder has images.
  batches = _batches(train_ds)
  assert len(batches) == 3
  assert batches[0][0].shape == (3, SIZE, SIZE, 3)
  assert batches[0][0].dtype == np.float32 and batches[0][1].dtype == np.int32
  seen = np.concatenate([y for _, y in batches])
  np.testing.assert_array_equal(np.bincount(seen, minlength=3), [4, 2, 3])

  # Validation: sorted wnids, then file names; colours match the labels.
  val = _batches(val_ds)
  assert [len(y) for _, y in val] == [3, 2]
  y = np.concatenate([y for _, y in val])
  np.testing.assert_array_equal(y, [0, 0, 1, 1, 2])
  x = _denormalize(np.concatenate([x for x, _ in val]))
  colors = np.array([CLASS_COLORS[WNIDS[i]] for i in y])
  np.testing.assert_allclose(x.mean(axis=(1, 2)), colors, atol=4.0)


def test_folder_validation_name_and_limit(tmp_path):
  _write_folder(tmp_path, "train", {w: 4 for w in WNIDS})
  _write_folder(tmp_path, "validation", {WNIDS[2]: 3})
  train_ds, val_ds, info = imagenet.imagenet_datasets(
      2, data_dir=str(tmp_path), source="folder", image_size=SIZE,
      resize_size=RESIZE, limit=5)
  assert info.num_classes == 3
  # The first 5 files in sorted order: 4 of class 0, 1 of class 1.
  seen = np.concatenate([y for _, y in _batches(train_ds)])
  assert len(seen) == 4 and set(seen) <= {0, 1}
  np.testing.assert_array_equal(
      np.concatenate([y for _, y in _batches(val_ds)]), [2, 2, 2])


def test_folder_errors(tmp_path):
  def build(data_dir, source="folder"):
    return imagenet.imagenet_datasets(
        2, data_dir=str(data_dir), source=source, image_size=SIZE,
        resize_size=RESIZE)

  with pytest.raises(UserInputError, match="does not exist"):
    build(tmp_path / "nowhere")
  with pytest.raises(UserInputError, match="needs data_dir"):
    imagenet.imagenet_datasets(2, data_dir=None, source="folder")
  _write_folder(tmp_path, "train", {WNIDS[0]: 2, WNIDS[1]: 2})
  with pytest.raises(UserInputError, match="No val/ or validation/ folder"):
    build(tmp_path)
  _write_folder(tmp_path, "val", {WNIDS[0]: 1, WNIDS[2]: 1})
  with pytest.raises(UserInputError, match=f"{WNIDS[2]} .*no counterpart"):
    build(tmp_path)

  empty = tmp_path / "empty"
  _write_folder(empty, "val", {WNIDS[0]: 1})
  (empty / "train" / WNIDS[0]).mkdir(parents=True)
  (empty / "train" / WNIDS[0] / "a.txt").write_text("no images")
  with pytest.raises(UserInputError, match="No images .* in .*train"):
    build(empty)
  with pytest.raises(UserInputError, match="No TFRecord shards train"):
    build(empty, source="tfrecord")


def test_bad_arguments(tmp_path):
  _write_folder(tmp_path, "train", {WNIDS[0]: 1})
  _write_folder(tmp_path, "val", {WNIDS[0]: 1})
  for kwargs, match in (({"source": "web"}, "auto, tfds, tfrecord, folder"),
                        ({"batch_size": 0}, "batch_size"),
                        ({"batch_size": 2.0}, "batch_size"),
                        ({"limit": 0}, "limit"),
                        ({"label_offset": -1}, "label_offset"),
                        ({"image_size": 64, "resize_size": 32},
                         "resize_size=32"),
                        ({"limit": 1}, "batch_size=2 exceeds limit=1"),
                        ({}, "batch_size=2 exceeds the 1 training images")):
    kwargs = {"batch_size": 2, **kwargs}
    with pytest.raises(UserInputError, match=match):
      imagenet.imagenet_datasets(data_dir=str(tmp_path), **kwargs)


# ---------------------------------------------------------------------------
# Source selection and tfds.
# ---------------------------------------------------------------------------


def test_auto_source(tmp_path):
  def class_names(data_dir):
    _, _, info = imagenet.imagenet_datasets(
        2, data_dir=str(data_dir), image_size=SIZE, resize_size=RESIZE)
    return info.class_names

  folder = tmp_path / "folder"
  _write_folder(folder, "train", {w: 1 for w in WNIDS})
  _write_folder(folder, "val", {w: 1 for w in WNIDS})
  assert class_names(folder) == WNIDS  # train/ exists: folder source.
  # Shards win over the image folders.
  _write_imagenet_tfrecords(folder)
  assert class_names(folder)[:3] == ("class_0", "class_1", "class_2")
  # The TPU layout, shards in train/ and validation/, is not taken for a
  # folder.
  nested = tmp_path / "nested"
  _write_imagenet_tfrecords(nested, layout="nested")
  assert len(class_names(nested)) == 1000
  # Neither: tfds, which is not prepared in an empty directory.
  with pytest.raises(UserInputError, match="not prepared") as e:
    class_names(tmp_path)
  assert "manual_dir" in str(e.value)


def test_tfds_source_with_mock_data(tmp_path):
  # mock_data generates random JPEGs of random small sizes and random labels
  # from the imagenet2012 feature spec, for every split; it ignores data_dir
  # and split slices ("validation[:6]").
  with tfds.testing.mock_data(num_examples=10):
    train_ds, val_ds, info = imagenet.imagenet_datasets(
        4, data_dir=None, source="tfds", image_size=SIZE, resize_size=RESIZE)
    assert info.num_classes == 1000 and len(info.class_names) == 1000
    assert info.class_names[:2] == ("n01440764", "n01443537")
    batches = _batches(train_ds)
    assert [x.shape for x, _ in batches] == [(4, SIZE, SIZE, 3)] * 2
    val = _batches(val_ds)
    assert [len(y) for _, y in val] == [4, 4, 2]
    for x, y in batches + val:
      assert x.dtype == np.float32 and np.isfinite(x).all()
      assert y.dtype == np.int32 and 0 <= y.min() and y.max() < 1000
    _, val_ds, _ = imagenet.imagenet_datasets(
        4, data_dir=None, source="tfds", image_size=SIZE, resize_size=RESIZE,
        limit=6)
    assert [len(y) for _, y in _batches(val_ds)] == [4, 2]


def test_tfds_manual_dir_without_tars(tmp_path):
  with pytest.raises(UserInputError, match="lacks ILSVRC2012_img_train.tar"):
    imagenet.imagenet_datasets(
        2, data_dir=str(tmp_path / "tfds"), source="tfds",
        manual_dir=str(tmp_path))


# ---------------------------------------------------------------------------
# Preprocessing.
# ---------------------------------------------------------------------------


def test_preprocess_eval_constant_color():
  color = np.array([200, 30, 90])
  expected = (color / 255.0 - MEAN) / STD
  out = imagenet.preprocess_eval(_png(_constant(color)), SIZE, RESIZE)
  assert out.shape == (SIZE, SIZE, 3) and out.dtype == tf.float32
  np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape),
                             atol=1e-5)
  # A JPEG decodes within a few levels of the colour.
  out = imagenet.preprocess_eval(_jpeg(_constant(color)), SIZE, RESIZE)
  np.testing.assert_allclose(_denormalize(out),
                             np.broadcast_to(color, out.shape), atol=4.0)


def test_preprocess_eval_is_resize_then_centre_crop():
  # Landscape 40x56: resized to 36x50 (shorter side 36, longer floor(50.4)),
  # then rows 2:34 and columns 9:41 (offsets round(4/2), round(18/2)).
  image = np.random.default_rng(1).integers(0, 256, (40, 56, 3), np.uint8)
  resized = tf.image.resize(image, [36, 50], antialias=True).numpy()
  expected = (resized[2:34, 9:41] / 255.0 - MEAN) / STD
  out = imagenet.preprocess_eval(_png(image), SIZE, RESIZE)
  np.testing.assert_allclose(out, expected, atol=1e-4)

  # Portrait 80x40 -> 72x36; the crop keeps rows 20:52 of it, i.e. rows
  # ~22..58 of the original, which are red; everything else is blue.
  image = _constant((0, 0, 255), (80, 40))
  image[20:60] = (255, 0, 0)
  out = _denormalize(imagenet.preprocess_eval(_png(image), SIZE, RESIZE))
  np.testing.assert_allclose(out, np.broadcast_to([255, 0, 0], out.shape),
                             atol=1e-3)


def test_preprocess_train_shape_and_seeding():
  image = np.random.default_rng(2).integers(0, 256, (40, 56, 3), np.uint8)
  for image_bytes in (_jpeg(image), _png(image)):
    outs = [imagenet.preprocess_train(image_bytes, [s, 1], SIZE).numpy()
            for s in range(4)]
    assert all(o.shape == (SIZE, SIZE, 3) and o.dtype == np.float32
               for o in outs)
    np.testing.assert_array_equal(
        imagenet.preprocess_train(image_bytes, [0, 1], SIZE), outs[0])
    assert len({o.tobytes() for o in outs}) == 4
    # Colour-jittered pixels stay in [0, 1] before normalisation.
    pixels = _denormalize(np.stack(outs)) / 255.0
    assert pixels.min() > -1e-4 and pixels.max() < 1 + 1e-4


def _torchvision_crop_areas(height, width, n, seed=0):
  """Area fractions of torchvision's RandomResizedCrop.get_params."""
  rng = random.Random(seed)
  areas = []
  for _ in range(n):
    for _ in range(10):
      target = height * width * rng.uniform(0.08, 1.0)
      ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
      w = int(round(math.sqrt(target * ratio)))
      h = int(round(math.sqrt(target / ratio)))
      if 0 < w <= width and 0 < h <= height:
        areas.append(h * w / (height * width))
        break
    else:
      in_ratio = width / height
      w = width if in_ratio <= 4 / 3 else int(round(height * 4 / 3))
      h = height if in_ratio >= 3 / 4 else int(round(width * 4 / 3))
      areas.append(h * w / (height * width))
  return np.array(areas)


def test_crop_window_matches_torchvision_random_resized_crop():
  height, width, n = 375, 500, 3000
  windows = np.array(list(tf.data.Dataset.range(n).map(
      lambda i: imagenet._crop_window(  # pylint: disable=protected-access
          tf.constant([height, width, 3]), tf.stack([i, i + 7]))
  ).as_numpy_iterator()))
  y, x, h, w = windows.T
  assert (y >= 0).all() and (x >= 0).all()
  assert (y + h <= height).all() and (x + w <= width).all()
  area = h * w / (height * width)
  assert 0.0795 <= area.min() < 0.1 and 0.9 < area.max() <= 1.0
  aspect = w / h  # 3/4..4/3 up to the rounding of h and w.
  assert aspect.min() > 0.74 and aspect.max() < 1.34
  assert aspect.min() < 0.77 and aspect.max() > 1.30
  # Same area distribution as torchvision (tf.image's sampler has mean 0.37
  # here), placed anywhere.
  reference = _torchvision_crop_areas(height, width, n)
  assert abs(area.mean() - reference.mean()) < 0.015
  np.testing.assert_allclose(np.quantile(area, [0.1, 0.5, 0.9]),
                             np.quantile(reference, [0.1, 0.5, 0.9]),
                             atol=0.04)
  assert (y == 0).any() and (y + h == height).any()
  assert (x == 0).any() and (x + w == width).any()


def test_preprocess_train_crops_the_sampled_window():
  # A grey image: the colour jitter is then one affine map of the grey level
  # (no clipping for levels in [64, 150]), so the output is an affine function
  # of the crop resized, flipped or not.
  rng = np.random.default_rng(3)
  gray = rng.integers(64, 150, (60, 80, 1), np.uint8)
  image = np.repeat(gray, 3, axis=-1)
  flips = []
  for s in range(6):
    seed = tf.constant([s, 11], tf.int64)
    crop_seed = tf.random.experimental.stateless_split(seed, 3)[0]
    window = imagenet._crop_window(  # pylint: disable=protected-access
        tf.constant(image.shape), crop_seed)
    y, x, h, w = window.numpy()
    expected = tf.image.resize(gray[y:y + h, x:x + w], [SIZE, SIZE],
                               antialias=True).numpy()[..., 0].ravel()
    expected_flipped = expected.reshape(SIZE, SIZE)[:, ::-1].ravel()
    for image_bytes, min_corr in ((_png(image), 0.9999),
                                  (_jpeg(image), 0.98)):
      out = _denormalize(imagenet.preprocess_train(
          image_bytes, seed, SIZE))
      assert np.abs(out - out[..., :1]).max() < 3.0  # Still grey.
      corr = [np.corrcoef(out[..., 0].ravel(), e)[0, 1]
              for e in (expected, expected_flipped)]
      assert max(corr) > min_corr, (s, corr)
      flips.append(int(np.argmax(corr)))
  assert set(flips) == {0, 1}


def test_preprocess_train_brightness_jitter_range():
  # On a constant grey image crop, flip, contrast, saturation and hue change
  # nothing: the output is the grey level times the brightness factor,
  # uniform in [0.6, 1.4].
  image_bytes = _png(_constant((100, 100, 100)))
  out = np.stack(list(tf.data.Dataset.range(300).map(
      lambda i: imagenet.preprocess_train(
          image_bytes, tf.stack([i, 5]), 8)).as_numpy_iterator()))
  factor = _denormalize(out) / 100.0
  assert np.ptp(factor, axis=(1, 2, 3)).max() < 1e-3  # Constant images.
  factor = factor[:, 0, 0, 0]
  assert factor.min() >= 0.6 - 1e-4 and factor.max() <= 1.4 + 1e-4
  assert factor.min() < 0.63 and factor.max() > 1.37
  assert abs(np.mean(factor < 1.0) - 0.5) < 0.1
