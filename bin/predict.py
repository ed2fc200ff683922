#!/usr/bin/env python3
"""Classifies images with an exported model: locally, or through TF Serving.

  python bin/predict.py --model=serving/train shirt.png boot.jpg
  python bin/predict.py --model=serving/train/1 --json batch.npy
  python bin/predict.py --rest=http://localhost:8501 --model_name=train shirt.png
  python bin/predict.py --grpc=localhost:8500 --model_name=train shirt.png

Image files go to the `serving_bytes` signature (decoded and resized in the model); a
.npy batch of uint8 pixels [batch, height, width, channels] to `serving_default`.
"""

import json

from absl import app
from absl import flags

from milenas_tf.core import cli  # first: it turns oneDNN on before TensorFlow loads
from milenas_tf.serving import client as serving_client

_MODEL = flags.DEFINE_string("model", None,
                             "A local SavedModel: a version or model directory.")
_REST = flags.DEFINE_string("rest", None, "TF Serving REST address, e.g. "
                            "http://localhost:8501.")
_GRPC = flags.DEFINE_string("grpc", None, "TF Serving gRPC address, e.g. localhost:8500.")
_MODEL_NAME = flags.DEFINE_string("model_name", None, "With --rest/--grpc: the model name.")
_VERSION = flags.DEFINE_integer("version", None, "With --rest: a version to ask for.")
_TIMEOUT = flags.DEFINE_float("timeout", 60.0, "Seconds to wait for a server.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object per input.")


def make_client():
  chosen = [f for f in (_MODEL, _REST, _GRPC) if f.value]
  if len(chosen) != 1:
    raise app.UsageError("Give exactly one of --model, --rest and --grpc.")
  if _MODEL.value:
    return serving_client.LocalClient(_MODEL.value)
  if not _MODEL_NAME.value:
    raise app.UsageError("--rest and --grpc need --model_name.")
  if _REST.value:
    return serving_client.RestClient(_REST.value, _MODEL_NAME.value, _VERSION.value,
                                     _TIMEOUT.value)
  return serving_client.GrpcClient(_GRPC.value, _MODEL_NAME.value, _TIMEOUT.value)


def main(argv):
  inputs = serving_client.load_inputs(argv[1:])
  outputs = make_client().predict(inputs)
  for entry in serving_client.top_k(outputs, inputs.labels):
    if _JSON.value:
      print(json.dumps(entry))
    else:
      ranked = ", ".join(f"{t['name']} ({t['probability']:.3f})" for t in entry["top"])
      print(f"{entry['input']}: {ranked}")


if __name__ == "__main__":
  cli.run(main)
