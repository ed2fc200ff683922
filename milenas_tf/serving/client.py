"""Prediction from exported models: a local SavedModel, or TF Serving over REST or gRPC.

All three clients take the same `Inputs` (encoded image files for the
`serving_bytes` signature, or a uint8 pixel batch for `serving_default`; see
`export`) and return the signature's outputs as NumPy arrays:
`{"probabilities", "classes", "class_names"}`. Every failure a user can cause or meet
(a missing model, an input of the wrong shape or type, an unreadable image, a server
that is unreachable or answers with an error) raises `UserInputError` with one line
that says what happened and what to do.

REST follows TF Serving's documented API (`POST /v1/models/<name>[/versions/<v>]:predict`
with `{"signature_name": ..., "instances": [...]}`; binary inputs as `{"b64": ...}`;
answers `{"predictions": [...]}` or `{"error": ...}`). gRPC calls
`tensorflow.serving.PredictionService/Predict` with messages built by
`serving_protos`, so neither needs the `tensorflow-serving-api` package.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import urllib.error
import urllib.request
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from milenas_tf.core.errors import UserInputError
from milenas_tf.serving import export
from milenas_tf.serving import protos as serving_protos

_GRPC_PREDICT = "/tensorflow.serving.PredictionService/Predict"


@dataclasses.dataclass
class Inputs:
  """A batch to classify.

  Attributes:
    signature: `export.BYTES_SIGNATURE` or `export.PIXELS_SIGNATURE`.
    values: encoded images (a list of bytes) or a uint8 `[batch, h, w, c]` array.
    labels: one display name per example (file names, or `file[i]` for arrays).
  """
  signature: str
  values: list[bytes] | np.ndarray
  labels: list[str]

  @property
  def input_name(self) -> str:
    return (export.BYTES_INPUT if self.signature == export.BYTES_SIGNATURE
            else export.PIXELS_INPUT)


def load_inputs(paths: Sequence[str]) -> Inputs:
  """Reads image files (encoded bytes) or one `.npy` batch of uint8 pixels.

  Raises:
    UserInputError: for no paths, a missing or unreadable file, a `.npy` mixed with
      other files, an array that is not uint8 of rank 3 or 4, or an empty one.
  """
  if not paths:
    raise UserInputError("Nothing to classify: give image files or one .npy batch.")
  for path in paths:
    if not os.path.isfile(path):
      raise UserInputError(f"{path} does not exist or is not a file.")
  if any(p.endswith(".npy") for p in paths):
    if len(paths) != 1:
      raise UserInputError("Give either one .npy batch or image files, not both or "
                           "several batches.")
    try:
      array = np.load(paths[0], allow_pickle=False)
    except (OSError, ValueError) as e:
      raise UserInputError(f"{paths[0]} is not a readable .npy file ({e}).") from None
    if array.ndim == 3:
      array = array[None]
    if array.dtype != np.uint8 or array.ndim != 4:
      raise UserInputError(
          f"{paths[0]} holds a {array.dtype} array of shape {array.shape}; the model "
          "takes uint8 pixels [batch, height, width, channels] (or one image "
          "[height, width, channels]).")
    if array.size == 0:  # a kernel error in the model otherwise, or an empty answer
      raise UserInputError(
          f"{paths[0]} holds no pixels (shape {array.shape}); give a batch of at least "
          "one image [batch, height, width, channels] with batch, height and width >= 1.")
    name = os.path.basename(paths[0])
    return Inputs(export.PIXELS_SIGNATURE, array,
                  [f"{name}[{i}]" for i in range(len(array))])
  values = []
  for path in paths:
    with open(path, "rb") as f:
      data = f.read()
    try:
      tf.io.decode_image(data, expand_animations=False)
    except (tf.errors.InvalidArgumentError, ValueError):
      raise UserInputError(f"{path} is not a readable image (JPEG, PNG, GIF or "
                           "BMP).") from None
    values.append(data)
  return Inputs(export.BYTES_SIGNATURE, values, list(paths))


def _as_tensor(inputs: Inputs) -> tf.Tensor:
  if inputs.signature == export.BYTES_SIGNATURE:
    return tf.constant(inputs.values, tf.string)
  return tf.constant(inputs.values, tf.uint8)


class LocalClient:
  """Runs a SavedModel in this process.

  Args:
    path: a version directory (holding `saved_model.pb`) or a model directory
      (`<base>/<name>`, whose newest version is used).

  Raises:
    UserInputError: if no SavedModel is there.
  """

  def __init__(self, path: str):
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
      found = export.versions(path)
      if not found:
        raise UserInputError(f"No SavedModel at {path}: give a version directory "
                             "(with saved_model.pb) or a model directory of "
                             "bin/export.py.")
      path = os.path.join(path, str(found[-1]))
    self.path = path
    self._model = tf.saved_model.load(path)

  def predict(self, inputs: Inputs) -> dict[str, np.ndarray]:
    """The signature's outputs for a batch.

    Raises:
      UserInputError: if the model lacks the signature or rejects the input.
    """
    if inputs.signature not in self._model.signatures:
      raise UserInputError(f"{self.path} has no signature {inputs.signature!r} "
                           f"(it has {', '.join(self._model.signatures)}).")
    function = self._model.signatures[inputs.signature]
    spec = function.structured_input_signature[1][inputs.input_name]
    tensor = _as_tensor(inputs)
    if not spec.is_compatible_with(tensor):
      raise UserInputError(f"The model takes {inputs.input_name} as {spec.dtype.name} "
                           f"{spec.shape}, got {tensor.dtype.name} {tensor.shape}.")
    try:
      outputs = function(**{inputs.input_name: tensor})
    except tf.errors.InvalidArgumentError as e:
      raise UserInputError(f"The model rejected the input: {e.message}") from None
    return {k: v.numpy() for k, v in outputs.items()}


class RestClient:
  """TF Serving's REST API.

  Args:
    url: the server, e.g. `http://localhost:8501`.
    model_name: the model's name on the server.
    version: a version to ask for; the server's choice when None.
    timeout: seconds to wait for an answer.
  """

  def __init__(self, url: str, model_name: str, version: int | None = None,
               timeout: float = 60.0):
    self.model_name, self.version, self.timeout = model_name, version, timeout
    versioned = f"/versions/{version}" if version is not None else ""
    self.endpoint = f"{url.rstrip('/')}/v1/models/{model_name}{versioned}:predict"

  @staticmethod
  def request_body(inputs: Inputs) -> dict[str, Any]:
    """The JSON body of a predict request (row format: one instance per example)."""
    if inputs.signature == export.BYTES_SIGNATURE:
      instances = [{"b64": base64.b64encode(v).decode("ascii")} for v in inputs.values]
    else:
      instances = np.asarray(inputs.values).tolist()
    return {"signature_name": inputs.signature, "instances": instances}

  @staticmethod
  def parse_response(body: dict[str, Any]) -> dict[str, np.ndarray]:
    """The outputs of a predict response (row or columnar format) as arrays.

    Raises:
      UserInputError: for an error response or one of neither format.
    """
    if "error" in body:
      raise UserInputError(f"The server answered with an error: {body['error']}")
    if "predictions" in body:
      rows = body["predictions"]
      if rows and isinstance(rows[0], dict):
        outputs = {k: [row[k] for row in rows] for k in rows[0]}
      else:
        outputs = {"predictions": rows}
    elif "outputs" in body:
      outputs = body["outputs"] if isinstance(body["outputs"], dict) else {
          "outputs": body["outputs"]}
    else:
      raise UserInputError(f"Unexpected response from the server (no 'predictions', "
                           f"'outputs' or 'error'): {str(body)[:200]}")
    return {k: np.asarray(v) for k, v in outputs.items()}

  def predict(self, inputs: Inputs) -> dict[str, np.ndarray]:
    """Posts the batch and parses the answer.

    Raises:
      UserInputError: if the server is unreachable or answers with an error.
    """
    data = json.dumps(self.request_body(inputs)).encode()
    request = urllib.request.Request(self.endpoint, data=data,
                                     headers={"Content-Type": "application/json"})
    try:
      with urllib.request.urlopen(request, timeout=self.timeout) as response:
        body = json.load(response)
    except urllib.error.HTTPError as e:
      text = e.read().decode("utf-8", "replace")
      try:
        message = json.loads(text).get("error", text)
      except ValueError:
        message = text
      raise UserInputError(f"{self.endpoint} answered HTTP {e.code}: "
                           f"{message.strip()[:300]}") from None
    except (urllib.error.URLError, OSError) as e:
      reason = getattr(e, "reason", e)
      raise UserInputError(f"Cannot reach {self.endpoint} ({reason}); is "
                           "tensorflow_model_server running with --rest_api_port?"
                           ) from None
    except ValueError:
      raise UserInputError(f"{self.endpoint} did not answer with JSON.") from None
    return self.parse_response(body)


class GrpcClient:
  """TF Serving's gRPC `PredictionService`.

  Args:
    address: `host:port` of the server's gRPC port (8500 by default there).
    model_name: the model's name on the server.
    timeout: seconds to wait for an answer.
  """

  def __init__(self, address: str, model_name: str, timeout: float = 60.0):
    import grpc  # pylint: disable=g-import-not-at-top

    self._grpc = grpc
    self.address, self.model_name, self.timeout = address, model_name, timeout
    self._channel = grpc.insecure_channel(
        address, options=[("grpc.max_receive_message_length", 256 << 20),
                          ("grpc.max_send_message_length", 256 << 20)])
    self._predict = self._channel.unary_unary(
        _GRPC_PREDICT, request_serializer=lambda b: b, response_deserializer=lambda b: b)

  def predict(self, inputs: Inputs) -> dict[str, np.ndarray]:
    """Sends one `PredictRequest` and decodes the `PredictResponse`.

    Raises:
      UserInputError: if the server is unreachable or answers with an error.
    """
    request = serving_protos.predict_request(
        self.model_name, inputs.signature, {inputs.input_name: _as_tensor(inputs)})
    try:
      response = self._predict(request, timeout=self.timeout)
    except self._grpc.RpcError as e:
      code = e.code()
      if code == self._grpc.StatusCode.UNAVAILABLE:
        raise UserInputError(f"Cannot reach {self.address} ({e.details()}); is "
                             "tensorflow_model_server running with --port?") from None
      raise UserInputError(f"{self.address} answered {code.name}: {e.details()}") from None
    return serving_protos.parse_predict_response(response)

  def close(self) -> None:
    self._channel.close()


def top_k(outputs: dict[str, np.ndarray], labels: Sequence[str]) -> list[dict]:
  """One entry per example: its label and its top classes with probabilities.

  Returns:
    `[{"input": label, "top": [{"class": i, "name": name, "probability": p}, ...]}]`.
  """
  probabilities = np.asarray(outputs["probabilities"], np.float64)
  classes = np.asarray(outputs["classes"])
  names = outputs.get("class_names")
  results = []
  for i, label in enumerate(labels):
    top = []
    for j, c in enumerate(classes[i]):
      name = names[i][j] if names is not None else str(c)
      name = name.decode() if isinstance(name, bytes) else str(name)
      top.append({"class": int(c), "name": name,
                  "probability": float(probabilities[i][int(c)])})
    results.append({"input": label, "top": top})
  return results
