"""Tests for milenas_tf.data.datasets."""

import gzip
import itertools
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from milenas_tf.core import callbacks
from milenas_tf.core.errors import UserInputError
from milenas_tf.data import datasets

FMNIST_DIR = datasets.DEFAULT_FASHION_MNIST_DIR
needs_fmnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FMNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason="apt-get install dataset-fashion-mnist")


def _idx_bytes(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 8, array.ndim]) + np.asarray(
      array.shape, ">u4").tobytes()
  return header + array.astype(np.uint8).tobytes()


def _write_fake_fmnist(directory, split="train", n=10, gz=True, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, n, dtype=np.uint8)
  prefix = {"train": "train", "test": "t10k"}[split]
  for kind, ndim, array in (("images", 3, images), ("labels", 1, labels)):
    path = os.path.join(directory, f"{prefix}-{kind}-idx{ndim}-ubyte")
    data = _idx_bytes(array)
    if gz:
      path, data = path + ".gz", gzip.compress(data)
    with open(path, "wb") as f:
      f.write(data)
  return images, labels


def _denormalize(x, info):
  return np.rint((np.asarray(x) * info.std + np.asarray(info.mean)) * 255)


# ---------------------------------------------------------------------------
# IDX parsing and loading.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_load_arrays_reads_idx_files(tmp_path, gz):
  images, labels = _write_fake_fmnist(tmp_path, "test", n=7, gz=gz)
  x, y = datasets.load_arrays("fashion_mnist", "test", str(tmp_path), "idx")
  assert x.dtype == np.uint8 and x.shape == (7, 28, 28, 1)
  assert y.dtype == np.int64 and y.shape == (7,)
  np.testing.assert_array_equal(x[..., 0], images)
  np.testing.assert_array_equal(y, labels)


def test_read_idx_rejects_corrupt_files(tmp_path):
  good = _idx_bytes(np.zeros((2, 3), np.uint8))
  path = tmp_path / "f"
  path.write_bytes(b"\x00\x00\x09" + good[3:])  # Wrong dtype code.
  with pytest.raises(UserInputError, match="bad magic number"):
    datasets.read_idx(str(path))
  path.write_bytes(good)
  with pytest.raises(UserInputError, match="expected 2051"):
    datasets.read_idx(str(path), 2051)
  path.write_bytes(good[:-1])
  with pytest.raises(UserInputError, match="Corrupt IDX"):
    datasets.read_idx(str(path))
  path.write_bytes(gzip.compress(good)[:-5])
  with pytest.raises(UserInputError, match="Cannot read IDX"):
    datasets.read_idx(str(path))


def test_load_arrays_rejects_mismatched_idx_files(tmp_path):
  _write_fake_fmnist(tmp_path, "train", n=5)
  (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
      gzip.compress(_idx_bytes(np.zeros(4, np.uint8))))
  with pytest.raises(UserInputError, match="Inconsistent"):
    datasets.load_arrays("fashion_mnist", "train", str(tmp_path))


def test_missing_data_says_how_to_get_it(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(UserInputError, match="apt-get install dataset-fashion"):
    datasets.load_arrays("fashion_mnist", "train", missing, "idx")
  # "auto" falls back to tfds, which has no data there either.
  with pytest.raises(UserInputError, match="dataset-fashion-mnist") as e:
    datasets.load_arrays("fashion_mnist", "train", missing)
  assert "tfds build fashion_mnist" in str(e.value)
  with pytest.raises(UserInputError, match="tfds build cifar10"):
    datasets.load_arrays("cifar10", "test", missing)


def test_bad_arguments():
  with pytest.raises(UserInputError, match="fashion_mnist, cifar10"):
    datasets.dataset_info("mnist")
  with pytest.raises(UserInputError, match="fashion_mnist, cifar10"):
    datasets.load_arrays("imagenet", "train")
  with pytest.raises(UserInputError, match="split"):
    datasets.load_arrays("fashion_mnist", "validation")
  with pytest.raises(UserInputError, match="source"):
    datasets.load_arrays("fashion_mnist", "train", source="web")
  with pytest.raises(UserInputError, match="only supports fashion_mnist"):
    datasets.load_arrays("cifar10", "train", source="idx")
  for portion in (0, 1, 1.5, -0.1):
    with pytest.raises(UserInputError, match="train_portion"):
      datasets.search_datasets("fashion_mnist", 8, portion)
  with pytest.raises(UserInputError, match="batch_size"):
    datasets.search_datasets("fashion_mnist", 0)


@needs_fmnist
def test_real_fashion_mnist_matches_info():
  info = datasets.dataset_info("fashion_mnist")
  x, y = datasets.load_arrays("fashion_mnist", "train", source="idx")
  assert x.shape == (60000, *info.image_shape) and x.dtype == np.uint8
  assert y.shape == (60000,) and y.dtype == np.int64
  np.testing.assert_array_equal(np.unique(y), np.arange(info.num_classes))
  pixels = x.astype(np.float64) / 255.0
  np.testing.assert_allclose(pixels.mean(), info.mean[0], atol=1e-3)
  np.testing.assert_allclose(pixels.std(), info.std[0], atol=1e-3)
  x_test, y_test = datasets.load_arrays("fashion_mnist", "test")
  assert x_test.shape == (10000, 28, 28, 1) and y_test.shape == (10000,)
  assert 0 <= y_test.min() and y_test.max() <= 9


# ---------------------------------------------------------------------------
# Pipelines.
# ---------------------------------------------------------------------------


@needs_fmnist
def test_search_datasets_fashion_mnist():
  batch = 64
  epoch = callbacks.epoch_variable()
  train_ds, val_eval_ds, info = datasets.search_datasets(
      "fashion_mnist", batch, 0.5, limit=512, epoch=epoch)
  x_all, y_all = datasets.load_arrays("fashion_mnist", "train")
  assert info == datasets.dataset_info("fashion_mnist")
  assert train_ds.cardinality().numpy() == 4
  spec = tf.TensorSpec((batch, 28, 28, 1), tf.float32)
  label_spec = tf.TensorSpec((batch,), tf.int32)
  assert train_ds.element_spec == ((spec, label_spec), (spec, label_spec))

  # val_eval_ds: exactly the second half, in order, normalised, unaugmented.
  xs, ys = zip(*val_eval_ds.as_numpy_iterator())
  assert len(xs) == 4 and xs[0].dtype == np.float32 and ys[0].dtype == np.int32
  expected = (x_all[256:512] / 255.0 - info.mean[0]) / info.std[0]
  np.testing.assert_allclose(np.concatenate(xs), expected, atol=1e-5)
  np.testing.assert_array_equal(np.concatenate(ys), y_all[256:512])

  # Two epochs; each reshuffles and re-augments; the images are augmented.
  epochs = []
  for value in (0, 1):
    epoch.assign(value)
    epochs.append(list(train_ds.as_numpy_iterator()))
  assert [len(e) for e in epochs] == [4, 4]
  assert not np.array_equal(epochs[0][0][0][0], epochs[1][0][0][0])
  raw_keys = {x.tobytes() for x in x_all[:512]}
  seen = [r.astype(np.uint8).tobytes() in raw_keys
          for (x, _), _ in epochs[0] for r in _denormalize(x, info)]
  assert np.mean(seen) < 0.5


@needs_fmnist
def test_search_halves_are_disjoint_and_val_repeats():
  batch = 32
  train_ds, _, info = datasets.search_datasets(
      "fashion_mnist", batch, 0.75, limit=256, augment=False)
  # 192 search-train examples -> 6 batches; the 64 search-val examples only
  # fill 2 batches per pass, so the val stream must repeat 3 times.
  assert train_ds.cardinality().numpy() == 6
  x_all, _ = datasets.load_arrays("fashion_mnist", "train")

  def keys(x):
    return [r.astype(np.uint8).tobytes() for r in _denormalize(x, info)]

  for _ in range(2):
    elements = list(train_ds.as_numpy_iterator())
    assert len(elements) == 6
    train_keys = [k for (x, _), _ in elements for k in keys(x)]
    assert sorted(train_keys) == sorted(x.tobytes() for x in x_all[:192])
    # 3 passes over search-val (batch order across passes is not fixed).
    val_keys = [k for _, (x, _) in elements for k in keys(x)]
    assert sorted(val_keys) == sorted(
        3 * [x.tobytes() for x in x_all[192:256]])


def test_search_augmentation_is_fresh_every_batch_and_epoch(tmp_path):
  # All images equal: batches differ only through their augmentation.
  image = np.zeros((28, 28), np.uint8)
  image[5:20, 8:14] = 200
  rng = np.random.default_rng(0)
  images = np.broadcast_to(image, (256, 28, 28))
  for kind, ndim, array in (("images", 3, images),
                            ("labels", 1, rng.integers(0, 10, 256))):
    (tmp_path / f"train-{kind}-idx{ndim}-ubyte").write_bytes(
        _idx_bytes(array))

  def stream(seed):
    epoch = callbacks.epoch_variable()
    train_ds, _, _ = datasets.search_datasets(
        "fashion_mnist", 64, 0.75, data_dir=str(tmp_path), seed=seed, epoch=epoch)
    epochs = []
    for value in (0, 1):
      epoch.assign(value)
      epochs.append(list(train_ds.as_numpy_iterator()))
    train_batches = [t[0] for e in epochs for t, _ in e]
    val_batches = [v[0] for e in epochs for _, v in e]
    return train_batches, val_batches

  train_batches, val_batches = stream(seed=2)
  for batches in (train_batches, val_batches):
    assert len({b.tobytes() for b in batches}) == 6
  # The seed reproduces the stream; another seed changes it.
  np.testing.assert_array_equal(stream(seed=2), (train_batches, val_batches))
  assert not np.array_equal(stream(seed=3)[0], train_batches)


@needs_fmnist
def test_an_epochs_batches_do_not_depend_on_earlier_iterators():
  # Keras iterates a dataset once more before training under a distribution
  # strategy, and a resumed run starts afresh: neither may change an epoch's data.
  def first_batches(train_ds):
    return [(t[1], v[1]) for t, v in train_ds.take(2).as_numpy_iterator()]

  epoch = callbacks.epoch_variable(1)
  train_ds, _, _ = datasets.search_datasets("fashion_mnist", 16, limit=128, epoch=epoch)
  for _ in range(3):  # iterators made and dropped
    next(iter(train_ds))
  epoch_1 = first_batches(train_ds)
  np.testing.assert_array_equal(epoch_1, first_batches(train_ds))
  fresh, _, _ = datasets.search_datasets("fashion_mnist", 16, limit=128, epoch=1)
  np.testing.assert_array_equal(epoch_1, first_batches(fresh))
  epoch.assign(2)
  assert not np.array_equal(epoch_1, first_batches(train_ds))

  train, _, _ = datasets.train_datasets("fashion_mnist", 16, limit=64, cutout_length=8,
                                        epoch=epoch)
  images = [x for x, _ in train.take(2).as_numpy_iterator()]
  np.testing.assert_array_equal(images, [x for x, _ in train.take(2).as_numpy_iterator()])
  epoch.assign(3)
  assert not np.array_equal(images, [x for x, _ in train.take(2).as_numpy_iterator()])


def test_search_datasets_rejects_too_small_halves(tmp_path):
  _write_fake_fmnist(tmp_path, "train", n=100)
  with pytest.raises(UserInputError, match="batch_size=64"):
    datasets.search_datasets("fashion_mnist", 64, data_dir=str(tmp_path))
  with pytest.raises(UserInputError, match="search-val"):
    datasets.search_datasets("fashion_mnist", 16, 0.9, data_dir=str(tmp_path))


def test_eval_dataset_keeps_partial_batch(tmp_path):
  images, labels = _write_fake_fmnist(tmp_path, "test", n=10, gz=False)
  ds = datasets.eval_dataset("fashion_mnist", "test", 4,
                             data_dir=str(tmp_path), limit=9)
  batches = list(ds.as_numpy_iterator())
  assert [len(b[1]) for b in batches] == [4, 4, 1]
  info = datasets.dataset_info("fashion_mnist")
  x = np.concatenate([b[0] for b in batches])
  np.testing.assert_array_equal(_denormalize(x, info)[..., 0], images[:9])
  np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]),
                                labels[:9])


def _find_shift(out, image, max_shift):
  """Returns (flip, dy, dx) such that out is image shifted, or None."""
  h, w = image.shape[:2]
  m = max_shift
  padded = np.pad(image, [(m, m), (m, m), (0, 0)])
  for flip, candidate in ((False, padded), (True, padded[:, ::-1])):
    for dy, dx in itertools.product(range(2 * m + 1), repeat=2):
      if np.array_equal(out, candidate[dy:dy + h, dx:dx + w]):
        return flip, dy - m, dx - m
  return None


def test_augment_images_shifts_with_zero_fill_and_flips():
  # Distinct non-zero pixels: every shift / flip is identifiable.
  images = np.arange(1, 6 * 8 * 8 * 2 + 1).reshape(6, 8, 8, 2).astype(
      np.int32)
  found = []
  for s in range(8):
    out = datasets.augment_images(images, tf.constant([s, 7])).numpy()
    assert out.shape == images.shape and out.dtype == images.dtype
    for o, image in zip(out, images):
      transform = _find_shift(o, image, 4)
      assert transform is not None
      found.append(transform)
  np.testing.assert_array_equal(
      datasets.augment_images(images, tf.constant([3, 7])),
      datasets.augment_images(images, tf.constant([3, 7])))
  assert {flip for flip, _, _ in found} == {False, True}
  assert len({(dy, dx) for _, dy, dx in found}) > 10
  for axis in (1, 2):  # Shifts span the whole [-4, 4] range.
    shifts = [t[axis] for t in found]
    assert min(shifts) == -4 and max(shifts) == 4


def test_synthetic_search_datasets():
  train_ds, val_eval_ds, info = datasets.synthetic_search_datasets(
      (32, 32, 3), 10, 8, steps=5)
  assert train_ds.cardinality().numpy() == 5
  assert len(list(train_ds)) == 5
  spec = tf.TensorSpec((8, 32, 32, 3), tf.float32)
  label_spec = tf.TensorSpec((8,), tf.int32)
  assert train_ds.element_spec == ((spec, label_spec), (spec, label_spec))
  (x, y), = val_eval_ds.take(1)
  assert x.shape == (8, 32, 32, 3) and y.dtype == tf.int32
  assert len(list(val_eval_ds)) >= 1
  assert info.image_shape == (32, 32, 3) and len(info.mean) == 3


# ---------------------------------------------------------------------------
# CIFAR-10 through (mocked) tfds: no data, no download.
# ---------------------------------------------------------------------------


def test_cifar10_through_mocked_tfds():
  with tfds.testing.mock_data(num_examples=128):
    x, y = datasets.load_arrays("cifar10", "train")
    assert x.shape == (128, 32, 32, 3) and x.dtype == np.uint8
    assert y.dtype == np.int64 and 0 <= y.min() and y.max() <= 9
    train_ds, val_eval_ds, info = datasets.search_datasets(
        "cifar10", 16, limit=96)
    assert info.image_shape == (32, 32, 3) and len(info.std) == 3
    assert train_ds.cardinality().numpy() == 3
    (xt, yt), (xv, yv) = next(iter(train_ds))
    assert xt.shape == xv.shape == (16, 32, 32, 3)
    assert yt.dtype == yv.dtype == tf.int32
    assert sum(len(b[1]) for b in val_eval_ds) == 48
