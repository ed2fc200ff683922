"""Export to TF Serving's layout: signatures, fresh-process loading, versions, warm-up
records, and the inference graph against the Keras network."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from milenas_tf.core import files
from milenas_tf.core import precision
from milenas_tf.core import run_directory
from milenas_tf.core.errors import UserInputError
from milenas_tf.data import datasets
from milenas_tf.serving import export
from milenas_tf.train import callbacks as train_callbacks
from milenas_tf.train import config as train_config
from milenas_tf.train import model as train_model
from milenas_tf.train import networks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_INFO = datasets.DatasetInfo("cifar_like", (32, 32, 3), 10, (0.49, 0.48, 0.45),
                                  (0.25, 0.24, 0.26), tuple(f"c{i}" for i in range(10)))

# Runs in a fresh interpreter in which this package and Keras cannot be imported.
FRESH_LOAD = """
import sys
sys.modules["milenas_tf"] = None
sys.modules["keras"] = None
import numpy as np, tensorflow as tf
path, inputs, out = sys.argv[1:]
model = tf.saved_model.load(path)
x = np.load(inputs)
pixels = model.signatures["serving_default"](images=tf.constant(x))
encoded = [tf.io.encode_png(image).numpy() for image in x]
from_bytes = model.signatures["serving_bytes"](image_bytes=tf.constant(encoded))
np.savez(out, pixels=pixels["probabilities"].numpy(), bytes=from_bytes["probabilities"].numpy(),
         classes=pixels["classes"].numpy(), names=pixels["class_names"].numpy())
"""

WRONG_RANK = """
import sys
sys.modules["milenas_tf"] = None
sys.modules["keras"] = None
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
try:
  serve(images=tf.zeros((28, 28, 1), tf.uint8))
except tf.errors.InvalidArgumentError as error:
  print("rejected by EnsureShape:", "EnsureShape" in str(error))
"""


def _randomize_statistics(network, seed=0):
  """Moving means and variances far from their initial values, so that inference-mode
  batch norm differs from training mode."""
  rng = np.random.default_rng(seed)
  for variable in network.non_trainable_variables:
    if "moving_mean" in variable.path:
      variable.assign(rng.normal(0, 0.5, variable.shape).astype(np.float32))
    elif "moving_variance" in variable.path:
      variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype(np.float32))


def _keras_probabilities(network, images, info):
  logits = network(datasets.normalize_images(images, info), training=False)
  return tf.nn.softmax(logits).numpy()


@pytest.fixture(scope="module")
def fmnist():
  images, _ = datasets.load_arrays("fashion_mnist", "test")
  return images[:6]


@pytest.fixture(scope="module")
def fmnist_export(tmp_path_factory, fmnist):
  info = datasets.dataset_info("fashion_mnist")
  network = networks.build_network("DARTS_V2", "fashion_mnist", 4, 3, auxiliary=True,
                                   num_classes=10, input_shape=info.image_shape)
  _randomize_statistics(network)
  base = str(tmp_path_factory.mktemp("serving"))
  result = export.export_network(network, info, base, "fmnist", top_k=3)
  return network, info, result, tf.saved_model.load(result.path)


def _fresh_load(path, images, tmp_path):
  np.save(tmp_path / "x.npy", images)
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  subprocess.run([sys.executable, "-c", FRESH_LOAD, path, str(tmp_path / "x.npy"),
                  str(tmp_path / "out.npz")], check=True, env=env, cwd=str(tmp_path),
                 capture_output=True, timeout=300)
  return np.load(tmp_path / "out.npz", allow_pickle=True)


def test_fresh_process_loads_fashion_mnist_model_and_matches_keras(fmnist_export, fmnist,
                                                                   tmp_path):
  network, info, result, _ = fmnist_export
  got = _fresh_load(result.path, fmnist, tmp_path)
  want = _keras_probabilities(network, fmnist, info)
  statistics = [v.numpy() for v in network.non_trainable_variables]
  training_mode = tf.nn.softmax(network(datasets.normalize_images(fmnist, info),
                                        training=True)[0]).numpy()
  for variable, value in zip(network.non_trainable_variables, statistics):
    variable.assign(value)  # a training-mode call moved them
  assert np.abs(want - training_mode).max() > 1e-3  # the statistics matter
  np.testing.assert_allclose(got["pixels"], want, atol=1e-5)
  np.testing.assert_allclose(got["bytes"], want, atol=1e-5)  # PNG at 28x28: lossless
  np.testing.assert_array_equal(got["classes"], np.argsort(-want, axis=1)[:, :3])
  names = np.array(info.class_names)[got["classes"]]
  np.testing.assert_array_equal(got["names"].astype(str), names)


def test_fresh_process_loads_cifar_shape_model_and_matches_keras(tmp_path):
  network = networks.NetworkCIFAR("DARTS_V2", num_classes=10, init_channels=4, num_cells=3,
                                  auxiliary=True, input_shape=(32, 32, 3))
  _randomize_statistics(network, seed=1)
  result = export.export_network(network, CIFAR_INFO, str(tmp_path / "serving"), "cifar",
                                 warmup=False, model_config=False)
  images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  got = _fresh_load(result.path, images, tmp_path)
  want = _keras_probabilities(network, images, CIFAR_INFO)
  np.testing.assert_allclose(got["pixels"], want, atol=1e-5)
  np.testing.assert_allclose(got["bytes"], want, atol=1e-5)
  assert got["classes"].shape == (5, 5)


def test_saved_model_cli_lists_and_runs_the_signatures(fmnist_export, fmnist, tmp_path):
  network, info, result, _ = fmnist_export
  cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  shown = subprocess.run(cli + ["show", "--dir", result.path, "--all"], check=True,
                         capture_output=True, text=True, env=env, timeout=300).stdout
  for name in (export.PIXELS_SIGNATURE, export.BYTES_SIGNATURE, "images", "image_bytes",
               *export.OUTPUTS):
    assert f"['{name}']" in shown
  np.save(tmp_path / "x.npy", fmnist[:1])
  ran = subprocess.run(cli + ["run", "--dir", result.path, "--tag_set", "serve",
                              "--signature_def", export.PIXELS_SIGNATURE,
                              "--inputs", f"images={tmp_path / 'x.npy'}"],
                       check=True, capture_output=True, text=True, env=env,
                       timeout=300).stdout
  printed = ran.split("Result for output key probabilities:")[1]
  values = np.array([float(v) for v in printed.replace("[", " ").replace("]", " ").split()])
  np.testing.assert_allclose(values, _keras_probabilities(network, fmnist[:1], info)[0],
                             atol=1e-5)


def test_signatures_names_dtypes_and_batch_sizes(fmnist_export, fmnist):
  network, info, _, loaded = fmnist_export
  assert set(loaded.signatures) == {export.PIXELS_SIGNATURE, export.BYTES_SIGNATURE}
  for name, input_name, dtype in ((export.PIXELS_SIGNATURE, "images", tf.uint8),
                                  (export.BYTES_SIGNATURE, "image_bytes", tf.string)):
    function = loaded.signatures[name]
    spec = function.structured_input_signature[1]
    assert list(spec) == [input_name] and spec[input_name].dtype == dtype
    outputs = function.structured_outputs
    assert set(outputs) == set(export.OUTPUTS)
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["classes"].dtype == tf.int32
    assert outputs["class_names"].dtype == tf.string
  want = _keras_probabilities(network, fmnist, info)
  for batch in (fmnist[:1], fmnist):
    out = loaded.signatures[export.PIXELS_SIGNATURE](images=tf.constant(batch))
    np.testing.assert_allclose(out["probabilities"].numpy(), want[:len(batch)], atol=1e-5)
    assert out["classes"].shape == (len(batch), 3)


def test_bytes_signature_resizes_and_reads_jpeg(fmnist_export, fmnist):
  network, info, _, loaded = fmnist_export
  large = tf.image.resize(fmnist[:2], (56, 56), method="bilinear")
  encoded = [tf.io.encode_png(tf.cast(tf.round(image), tf.uint8)).numpy()
             for image in large]
  encoded.append(tf.io.encode_jpeg(fmnist[2], quality=100).numpy())
  out = loaded.signatures[export.BYTES_SIGNATURE](image_bytes=tf.constant(encoded))
  resized = tf.image.resize(tf.cast(tf.round(large), tf.uint8), (28, 28),
                            method="bilinear")
  want = tf.nn.softmax(network((resized / 255.0 - info.mean) / info.std,
                               training=False)).numpy()
  np.testing.assert_allclose(out["probabilities"].numpy()[:2], want, atol=1e-5)
  decoded = tf.io.decode_jpeg(encoded[2], channels=1)[None]
  np.testing.assert_allclose(out["probabilities"].numpy()[2],
                             _keras_probabilities(network, decoded, info)[0], atol=1e-5)


def test_malformed_inputs_raise_and_the_model_keeps_working(fmnist_export, fmnist):
  _, _, _, loaded = fmnist_export
  pixels = loaded.signatures[export.PIXELS_SIGNATURE]
  rejected = (TypeError, ValueError, tf.errors.InvalidArgumentError)
  with pytest.raises(rejected, match="uint8"):
    pixels(images=tf.constant(fmnist, tf.float32))  # wrong dtype
  with pytest.raises(rejected):
    pixels(images=tf.constant(fmnist[0]))  # wrong rank
  with pytest.raises(tf.errors.InvalidArgumentError):
    loaded.signatures[export.BYTES_SIGNATURE](
        image_bytes=tf.constant([b"\xff\xd8\xff\xe0 not a jpeg"]))
  out = pixels(images=tf.constant(fmnist[:2]))
  assert out["probabilities"].shape == (2, 10)


def test_wrong_rank_request_is_an_error_not_a_crash_with_onednn(fmnist_export, tmp_path):
  # oneDNN's convolution aborts the process on a rank-3 input; the signature checks first.
  path = fmnist_export[2].path
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "1"}
  proc = subprocess.run([sys.executable, "-c", WRONG_RANK, path], env=env, cwd=str(tmp_path),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "rejected by EnsureShape: True" in proc.stdout


def test_versions_increase_and_are_never_replaced(fmnist_export):
  network, info, first, _ = fmnist_export
  base = os.path.dirname(os.path.dirname(first.path))
  second = export.export_network(network, info, base, "fmnist", warmup=False)
  assert (first.version, second.version) == (1, 2)
  assert export.versions(os.path.join(base, "fmnist")) == [1, 2]
  with pytest.raises(UserInputError, match="never replaced.*version 3"):
    export.export_network(network, info, base, "fmnist", version=1)
  assert not [n for n in os.listdir(os.path.join(base, "fmnist")) if n.startswith(".")]
  with pytest.raises(UserInputError, match="Bad model name"):
    export.export_network(network, info, base, "a/b")
  with open(second.model_config) as f:
    text = f.read()
  assert 'name: "fmnist"' in text
  assert f'base_path: "{os.path.abspath(base)}/fmnist"' in text
  assert export.write_model_config(base, "/models") and 'base_path: "/models/fmnist"' in (
      open(os.path.join(base, export.MODEL_CONFIG_FILE)).read())


def test_warmup_records_are_prediction_logs_the_model_answers(fmnist_export):
  _, info, result, loaded = fmnist_export
  records = list(tf.data.TFRecordDataset(os.path.join(result.path, export.WARMUP_FILE)))
  assert len(records) == 2
  signatures = []
  for record in records:
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    request = log.predict_log.request
    assert request.model_spec.name == "fmnist"
    signatures.append(request.model_spec.signature_name)
    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    out = loaded.signatures[request.model_spec.signature_name](**inputs)
    assert out["probabilities"].shape == (1, info.num_classes)
  assert signatures == [export.PIXELS_SIGNATURE, export.BYTES_SIGNATURE]


def test_imagenet_bytes_signature_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
  info = datasets.DatasetInfo("imagenet_like", (64, 64, 3), 5, (0.485, 0.456, 0.406),
                              (0.229, 0.224, 0.225), tuple("abcde"))
  network = networks.build_network("DARTS_V2", "imagenet", 8, 3, auxiliary=False,
                                   num_classes=5, input_shape=info.image_shape)
  functions = export.serving_functions(network, info, top_k=2, resize_size=72)
  image = np.random.default_rng(0).integers(0, 256, (72, 72, 3), dtype=np.uint8)
  got = functions[export.BYTES_SIGNATURE][0](tf.constant([tf.io.encode_png(image).numpy()]))
  want = functions[export.PIXELS_SIGNATURE][0](tf.constant(image[None, 4:68, 4:68]))
  np.testing.assert_allclose(got["probabilities"].numpy(), want["probabilities"].numpy(),
                             atol=1e-5)
  with pytest.raises(UserInputError, match="resize_size"):
    export.serving_functions(network, info, resize_size=32)


def test_a_mixed_precision_network_exports_float32_outputs(tmp_path, fmnist):
  info = datasets.dataset_info("fashion_mnist")
  networks_by_policy = {}
  for policy in ("float32", "mixed_float16"):
    with precision.policy_scope(policy):
      networks_by_policy[policy] = networks.build_network(
          "DARTS_V2", "fashion_mnist", 4, 3, auxiliary=False, num_classes=10,
          input_shape=info.image_shape)
  mixed = networks_by_policy["mixed_float16"]
  mixed.set_weights(networks_by_policy["float32"].get_weights())
  assert any(layer.compute_dtype == "float16" for layer in mixed._flatten_layers())
  result = export.export_network(mixed, info, str(tmp_path), "mixed", warmup=False)
  signature = tf.saved_model.load(result.path).signatures[export.PIXELS_SIGNATURE]
  assert signature.structured_outputs["probabilities"].dtype == tf.float32
  got = signature(images=tf.constant(fmnist))["probabilities"].numpy()
  want = _keras_probabilities(networks_by_policy["float32"], fmnist, info)
  np.testing.assert_allclose(got, want, atol=2e-3)  # float16 rounding
  np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def _fake_run(directory, dataset="fashion_mnist"):
  """A training run directory as bin/train.py leaves it, with untrained weights."""
  config = train_config.default_config()
  config.update(genotype="DARTS_V2", init_channels=4, num_cells=3, dataset=dataset,
                setting="fashion_mnist")
  model = train_model.build_train_model(config, datasets.dataset_info(dataset), 1)
  _randomize_statistics(model.network, seed=2)
  os.makedirs(directory)
  files.write_json_atomic(os.path.join(directory, run_directory.CONFIG_FILE),
                          config.to_dict())
  path = os.path.join(directory, "best", train_callbacks.BestWeights.WEIGHTS)
  files.save_weights_atomic(model, path)
  return config, model, path


def test_export_run_and_export_weights_carry_the_trained_weights(tmp_path, fmnist):
  config, model, weights = _fake_run(str(tmp_path / "my_run"))
  info = datasets.dataset_info("fashion_mnist")
  want = _keras_probabilities(model.network, fmnist, info)
  result = export.export_run(str(tmp_path / "my_run"), str(tmp_path / "serving"))
  assert result.model_name == "my_run" and result.version == 1
  other = export.export_weights(config, weights, str(tmp_path / "serving"), "by_weights")
  for path in (result.path, other.path):
    out = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(fmnist))
    np.testing.assert_allclose(out["probabilities"].numpy(), want, atol=1e-5)
  with pytest.raises(UserInputError, match="train at least one epoch"):
    export.export_run(str(tmp_path / "my_run"), str(tmp_path / "serving"), which="last")
  with pytest.raises(UserInputError, match="holds no training run"):
    export.export_run(str(tmp_path), str(tmp_path / "serving"))
  config.init_channels = 6
  with pytest.raises(UserInputError, match="does not fit the configured network"):
    export.export_weights(config, weights, str(tmp_path / "serving"), "wrong")


def test_export_and_predict_scripts(tmp_path, fmnist):
  _fake_run(str(tmp_path / "run"))
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

  def script(name, *flags):
    return subprocess.run([sys.executable, os.path.join(ROOT, "bin", name), *flags],
                          capture_output=True, text=True, env=env, timeout=300)

  base = str(tmp_path / "serving")
  done = script("export.py", f"--run_dir={tmp_path / 'run'}", f"--export_dir={base}",
                "--model_name=shirts", "--top_k=2")
  assert done.returncode == 0, done.stderr
  assert "Exported shirts version 1" in done.stdout
  image = tmp_path / "item.png"
  image.write_bytes(tf.io.encode_png(fmnist[0]).numpy())
  np.save(tmp_path / "batch.npy", fmnist[:3])
  done = script("predict.py", f"--model={base}/shirts", "--json", str(image))
  assert done.returncode == 0, done.stderr
  (entry,) = [json.loads(line) for line in done.stdout.splitlines()]
  assert entry["input"] == str(image) and len(entry["top"]) == 2
  done = script("predict.py", f"--model={base}/shirts/1", str(tmp_path / "batch.npy"))
  assert done.returncode == 0, done.stderr
  assert [line.split(":")[0] for line in done.stdout.splitlines()] == [
      "batch.npy[0]", "batch.npy[1]", "batch.npy[2]"]
  (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
  done = script("predict.py", f"--model={base}/shirts", str(tmp_path / "broken.jpg"))
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1] == (
      f"error: {tmp_path / 'broken.jpg'} is not a readable image (JPEG, PNG, GIF or BMP).")
