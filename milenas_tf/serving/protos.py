"""The few TensorFlow Serving messages this package writes and reads, in protobuf wire format.

TF Serving's request types (`tensorflow.serving.PredictRequest`, `PredictResponse`,
`PredictionLog`) live in the `tensorflow-serving-api` package, which pins the full
`tensorflow` wheel. The export (warm-up records) and the gRPC client need only three
messages, so they are encoded here from their field numbers in
`tensorflow_serving/apis/{model,predict,prediction_log}.proto`; tensors inside them are
TensorFlow's own `TensorProto`. The tests check these bytes against the official
classes.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

# Field numbers.
_MODEL_SPEC_NAME, _MODEL_SPEC_SIGNATURE = 1, 3  # ModelSpec
_REQUEST_MODEL_SPEC, _REQUEST_INPUTS = 1, 2  # PredictRequest
_RESPONSE_OUTPUTS = 1  # PredictResponse
_MAP_KEY, _MAP_VALUE = 1, 2  # map<string, TensorProto> entries
_PREDICT_LOG_REQUEST = 1  # PredictLog
_PREDICTION_LOG_PREDICT_LOG = 6  # PredictionLog

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited field (strings, bytes, messages)."""
  return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    if pos >= len(data):
      raise ValueError("truncated varint")
    byte = data[pos]
    value |= (byte & 0x7F) << shift
    pos, shift = pos + 1, shift + 7
    if not byte & 0x80:
      return value, pos


def _fields(data: bytes):
  """Yields (field number, payload) of the length-delimited fields; skips the rest."""
  pos = 0
  while pos < len(data):
    key, pos = _read_varint(data, pos)
    number, wire_type = key >> 3, key & 7
    if wire_type == _VARINT:
      _, pos = _read_varint(data, pos)
    elif wire_type == _FIXED64:
      pos += 8
    elif wire_type == _FIXED32:
      pos += 4
    elif wire_type == _LENGTH_DELIMITED:
      size, pos = _read_varint(data, pos)
      if pos + size > len(data):
        raise ValueError("truncated field")
      yield number, data[pos:pos + size]
      pos += size
    else:
      raise ValueError(f"unsupported wire type {wire_type}")


def predict_request(model_name: str, signature_name: str,
                    inputs: dict[str, np.ndarray | tf.Tensor]) -> bytes:
  """A serialised `tensorflow.serving.PredictRequest`.

  Args:
    model_name: the model's name on the server.
    signature_name: the signature to run.
    inputs: the signature's inputs by name.

  Returns:
    The message's bytes.
  """
  spec = (_field(_MODEL_SPEC_NAME, model_name.encode())
          + _field(_MODEL_SPEC_SIGNATURE, signature_name.encode()))
  message = _field(_REQUEST_MODEL_SPEC, spec)
  for name, value in inputs.items():
    tensor = tf.make_tensor_proto(value).SerializeToString()
    message += _field(_REQUEST_INPUTS, _field(_MAP_KEY, name.encode())
                      + _field(_MAP_VALUE, tensor))
  return message


def prediction_log(model_name: str, signature_name: str,
                   inputs: dict[str, np.ndarray | tf.Tensor]) -> bytes:
  """A serialised `tensorflow.serving.PredictionLog` holding one predict request:
  a record of `assets.extra/tf_serving_warmup_requests`."""
  request = predict_request(model_name, signature_name, inputs)
  return _field(_PREDICTION_LOG_PREDICT_LOG, _field(_PREDICT_LOG_REQUEST, request))


def parse_predict_response(data: bytes) -> dict[str, np.ndarray]:
  """The outputs of a serialised `tensorflow.serving.PredictResponse`, as arrays.

  Raises:
    ValueError: if the bytes are not such a message.
  """
  outputs = {}
  for number, payload in _fields(data):
    if number != _RESPONSE_OUTPUTS:
      continue
    entry = dict(_fields(payload))
    tensor = tensor_pb2.TensorProto.FromString(entry.get(_MAP_VALUE, b""))
    outputs[entry.get(_MAP_KEY, b"").decode()] = tf.make_ndarray(tensor)
  return outputs
