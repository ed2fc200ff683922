"""Clients of exported models: the TF Serving messages against the official protos, the
REST and gRPC clients against stand-in servers that speak TF Serving's documented formats,
and a real tensorflow_model_server when one is installed."""

import base64
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from milenas_tf.core.errors import UserInputError
from milenas_tf.data import datasets
from milenas_tf.serving import client as serving_client
from milenas_tf.serving import export
from milenas_tf.serving import protos as serving_protos
from milenas_tf.train import networks

MODEL = "fmnist"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  info = datasets.dataset_info("fashion_mnist")
  network = networks.build_network("DARTS_V2", "fashion_mnist", 4, 3, auxiliary=False,
                                   num_classes=10, input_shape=info.image_shape)
  base = str(tmp_path_factory.mktemp("serving"))
  result = export.export_network(network, info, base, MODEL, top_k=3)
  return base, result, tf.saved_model.load(result.path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  pixels, _ = datasets.load_arrays("fashion_mnist", "test")
  directory = tmp_path_factory.mktemp("images")
  paths = []
  for i, image in enumerate(pixels[:3]):
    path = directory / f"item{i}.png"
    path.write_bytes(tf.io.encode_png(image).numpy())
    paths.append(str(path))
  np.save(directory / "batch.npy", pixels[:4])
  return paths, str(directory / "batch.npy"), pixels[:4]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_signature(model, signature, values):
  function = model.signatures[signature]
  (name,) = function.structured_input_signature[1]
  return {k: v.numpy() for k, v in function(**{name: tf.constant(values)}).items()}


class _StandInRestServer(http.server.BaseHTTPRequestHandler):
  """Answers `POST /v1/models/<name>[/versions/<v>]:predict` as TF Serving documents it."""
  model = None

  def do_POST(self):  # pylint: disable=invalid-name
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    if self.path not in (f"/v1/models/{MODEL}:predict", f"/v1/models/{MODEL}/versions/1:predict"):
      return self._reply(404, {"error": "Servable not found for request: Latest(other)"})
    signature = body.get("signature_name", "serving_default")
    values = body["instances"]
    if values and isinstance(values[0], dict):
      values = [base64.b64decode(v["b64"]) for v in values]
    else:
      values = np.asarray(values, np.uint8)
    try:
      outputs = _run_signature(self.model, signature, values)
    except tf.errors.InvalidArgumentError as e:
      return self._reply(400, {"error": e.message})
    rows = [{k: (v[i].astype(str) if v.dtype == object else v[i]).tolist()
             for k, v in outputs.items()} for i in range(len(values))]
    self._reply(200, {"predictions": rows})

  def _reply(self, code, body):
    data = json.dumps(body).encode()
    self.send_response(code)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, *args):  # quiet
    pass


@pytest.fixture(scope="module")
def rest_server(exported):
  handler = type("Handler", (_StandInRestServer,), {"model": exported[2]})
  server = http.server.ThreadingHTTPServer(("localhost", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  yield f"http://localhost:{server.server_address[1]}"
  server.shutdown()


class _StandInPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
  """TF Serving's gRPC Predict, with the official message classes."""

  def __init__(self, model):
    self.model = model

  def Predict(self, request, context):  # pylint: disable=invalid-name
    if request.model_spec.name != MODEL:
      context.abort(grpc.StatusCode.NOT_FOUND, "Servable not found for request")
    (tensor,) = request.inputs.values()
    try:
      outputs = _run_signature(self.model, request.model_spec.signature_name,
                               tf.make_ndarray(tensor))
    except tf.errors.InvalidArgumentError as e:
      context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.message)
    response = predict_pb2.PredictResponse()
    for key, value in outputs.items():
      response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
    return response


@pytest.fixture(scope="module")
def grpc_address(exported):
  server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      _StandInPredictionService(exported[2]), server)
  port = server.add_insecure_port("localhost:0")
  server.start()
  yield f"localhost:{port}"
  server.stop(None)


def test_predict_request_bytes_parse_as_the_official_message():
  pixels = np.arange(24, dtype=np.uint8).reshape(1, 2, 4, 3)
  request = predict_pb2.PredictRequest.FromString(serving_protos.predict_request(
      "m", "serving_default", {"images": pixels, "extra": np.array([b"x", b"yz"], object)}))
  assert request.model_spec.name == "m"
  assert request.model_spec.signature_name == "serving_default"
  np.testing.assert_array_equal(tf.make_ndarray(request.inputs["images"]), pixels)
  assert list(tf.make_ndarray(request.inputs["extra"])) == [b"x", b"yz"]


def test_predict_response_parsing_of_an_official_message():
  response = predict_pb2.PredictResponse()
  probabilities = np.array([[0.25, 0.75]], np.float32)
  response.outputs["probabilities"].CopyFrom(tf.make_tensor_proto(probabilities))
  response.outputs["class_names"].CopyFrom(tf.make_tensor_proto(np.array([[b"b", b"a"]])))
  response.model_spec.name = "m"  # a non-output field is skipped
  response.model_spec.version.value = 3
  outputs = serving_protos.parse_predict_response(response.SerializeToString())
  assert set(outputs) == {"probabilities", "class_names"}
  np.testing.assert_array_equal(outputs["probabilities"], probabilities)
  assert outputs["class_names"].tolist() == [[b"b", b"a"]]


def test_rest_request_body_follows_the_documented_row_format(images):
  paths, batch_path, pixels = images
  body = serving_client.RestClient.request_body(serving_client.load_inputs(paths[:2]))
  assert body["signature_name"] == export.BYTES_SIGNATURE
  assert [base64.b64decode(i["b64"]) for i in body["instances"]] == [
      open(p, "rb").read() for p in paths[:2]]
  body = serving_client.RestClient.request_body(serving_client.load_inputs([batch_path]))
  assert body == {"signature_name": export.PIXELS_SIGNATURE, "instances": pixels.tolist()}
  json.dumps(body)  # serialisable as is


def test_rest_response_parsing_of_documented_formats():
  row = {"predictions": [{"probabilities": [0.1, 0.9], "classes": [1], "class_names": ["b"]},
                         {"probabilities": [0.8, 0.2], "classes": [0], "class_names": ["a"]}]}
  outputs = serving_client.RestClient.parse_response(row)
  np.testing.assert_allclose(outputs["probabilities"], [[0.1, 0.9], [0.8, 0.2]])
  assert outputs["class_names"].tolist() == [["b"], ["a"]]
  columnar = {"outputs": {"probabilities": [[0.1, 0.9]], "classes": [[1]]}}
  assert serving_client.RestClient.parse_response(columnar)["classes"].tolist() == [[1]]
  with pytest.raises(UserInputError, match="answered with an error: Servable not found"):
    serving_client.RestClient.parse_response({"error": "Servable not found"})
  with pytest.raises(UserInputError, match="Unexpected response"):
    serving_client.RestClient.parse_response({"result": []})


def test_local_rest_and_grpc_clients_agree(exported, images, rest_server, grpc_address):
  base, result, _ = exported
  paths, batch_path, _ = images
  clients = [serving_client.LocalClient(os.path.join(base, MODEL)),
             serving_client.RestClient(rest_server, MODEL),
             serving_client.RestClient(rest_server, MODEL, version=1),
             serving_client.GrpcClient(grpc_address, MODEL)]
  assert clients[0].path == result.path  # the newest version of the model directory
  for files in (paths, paths[:1], [batch_path]):
    inputs = serving_client.load_inputs(files)
    want = clients[0].predict(inputs)
    ranked = serving_client.top_k(want, inputs.labels)
    for client in clients[1:]:
      got = client.predict(inputs)
      np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)
      np.testing.assert_array_equal(got["classes"], want["classes"])
      assert serving_client.top_k(got, inputs.labels) == ranked
  (first, *_) = ranked
  probabilities = want["probabilities"][0]
  assert [t["class"] for t in first["top"]] == list(np.argsort(-probabilities)[:3])
  assert first["top"][0]["name"] == datasets.dataset_info(
      "fashion_mnist").class_names[first["top"][0]["class"]]


def test_server_errors_and_unreachable_servers_are_one_line(images, rest_server,
                                                            grpc_address):
  paths, _, _ = images
  inputs = serving_client.load_inputs(paths[:1])
  with pytest.raises(UserInputError, match="HTTP 404: Servable not found"):
    serving_client.RestClient(rest_server, "other").predict(inputs)
  with pytest.raises(UserInputError, match="answered NOT_FOUND"):
    serving_client.GrpcClient(grpc_address, "other").predict(inputs)
  corrupt = serving_client.Inputs(export.BYTES_SIGNATURE, [b"\xff\xd8 not a jpeg"], ["x"])
  with pytest.raises(UserInputError, match="HTTP 400"):
    serving_client.RestClient(rest_server, MODEL).predict(corrupt)
  with pytest.raises(UserInputError, match="INVALID_ARGUMENT"):
    serving_client.GrpcClient(grpc_address, MODEL).predict(corrupt)
  closed = _free_port()
  with pytest.raises(UserInputError, match="Cannot reach .*rest_api_port"):
    serving_client.RestClient(f"http://localhost:{closed}", MODEL, timeout=5).predict(inputs)
  with pytest.raises(UserInputError, match="Cannot reach .*--port"):
    serving_client.GrpcClient(f"localhost:{closed}", MODEL, timeout=5).predict(inputs)


def test_local_client_rejects_missing_models_and_wrong_inputs(exported, tmp_path):
  base, _, _ = exported
  with pytest.raises(UserInputError, match="No SavedModel at"):
    serving_client.LocalClient(str(tmp_path))
  client = serving_client.LocalClient(os.path.join(base, MODEL))
  wrong = serving_client.Inputs(export.PIXELS_SIGNATURE,
                                np.zeros((2, 32, 32, 3), np.uint8), ["a", "b"])
  with pytest.raises(UserInputError, match=r"takes images as uint8 \(None, 28, 28, 1\), "
                     r"got uint8 \(2, 32, 32, 3\)"):
    client.predict(wrong)
  corrupt = serving_client.Inputs(export.BYTES_SIGNATURE, [b"GIF89a broken"], ["x"])
  with pytest.raises(UserInputError, match="rejected the input"):
    client.predict(corrupt)


def test_load_inputs_errors(tmp_path, images):
  paths, batch_path, _ = images
  with pytest.raises(UserInputError, match="Nothing to classify"):
    serving_client.load_inputs([])
  with pytest.raises(UserInputError, match="does not exist"):
    serving_client.load_inputs([str(tmp_path / "missing.png")])
  with pytest.raises(UserInputError, match="either one .npy batch or image files"):
    serving_client.load_inputs([batch_path, paths[0]])
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(UserInputError, match="notes.txt is not a readable image"):
    serving_client.load_inputs([str(tmp_path / "notes.txt")])
  np.save(tmp_path / "floats.npy", np.zeros((2, 28, 28, 1), np.float32))
  with pytest.raises(UserInputError, match="float32 array of shape"):
    serving_client.load_inputs([str(tmp_path / "floats.npy")])
  np.save(tmp_path / "one.npy", np.zeros((28, 28, 1), np.uint8))
  one = serving_client.load_inputs([str(tmp_path / "one.npy")])
  assert one.values.shape == (1, 28, 28, 1) and one.labels == ["one.npy[0]"]


def _server_binary():
  return shutil.which("tensorflow_model_server")


@pytest.mark.skipif(_server_binary() is None,
                    reason="tensorflow_model_server is not installed on this machine")
def test_a_real_tensorflow_model_server_serves_the_export(exported, images):
  base, _, _ = exported
  paths, _, _ = images
  grpc_port, rest_port = _free_port(), _free_port()
  server = subprocess.Popen([_server_binary(), f"--port={grpc_port}",
                             f"--rest_api_port={rest_port}",
                             f"--model_config_file={os.path.join(base, export.MODEL_CONFIG_FILE)}"])
  try:
    inputs = serving_client.load_inputs(paths)
    want = serving_client.LocalClient(os.path.join(base, MODEL)).predict(inputs)
    rest = serving_client.RestClient(f"http://localhost:{rest_port}", MODEL)
    for _ in range(120):
      try:
        got = rest.predict(inputs)
        break
      except UserInputError:
        time.sleep(1)
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)
    got = serving_client.GrpcClient(f"localhost:{grpc_port}", MODEL).predict(inputs)
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)
  finally:
    server.terminate()
    server.wait()
