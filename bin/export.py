#!/usr/bin/env python3
"""Exports trained weights as a SavedModel in TF Serving's layout.

  python bin/export.py --run_dir=runs/train --export_dir=serving
  python bin/export.py --run_dir=runs/train_cifar10 --export_dir=serving --model_name=cifar10
  python bin/export.py --config=configs/train_cifar10.py --config.genotype=DARTS_V2 \
      --weights=runs/train_cifar10/best/best.weights.h5 --export_dir=serving --model_name=c10

Writes <export_dir>/<model_name>/<version>/ (the next free version, never an existing
one) with warm-up requests, and <export_dir>/models.config for tensorflow_model_server.
"""

from absl import app
from absl import flags

from milenas_tf.core import cli  # first: it turns oneDNN on before TensorFlow loads
from milenas_tf.serving import export

_RUN_DIR = flags.DEFINE_string("run_dir", None, "A bin/train.py output directory.")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "last"],
                           "With --run_dir: the best weights or the last checkpoint.")
_CONFIG = cli.define_config_file(
    None, "Without --run_dir: the training config of the weights (genotype, setting, "
    "sizes, dataset).")
_WEIGHTS = flags.DEFINE_string("weights", None, "Without --run_dir: a .weights.h5 file.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", "serving",
                                  "Base directory of the served models.")
_MODEL_NAME = flags.DEFINE_string("model_name", None,
                                  "Model name (default: the run directory's name).")
_VERSION = flags.DEFINE_integer("version", None,
                                "Version to write (default: the next free one).")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Classes listed in `classes`/`class_names`.")
_WARMUP = flags.DEFINE_bool("warmup", True, "Write TF Serving warm-up requests.")
_SERVING_BASE = flags.DEFINE_string(
    "serving_base_dir", None, "Where the server sees --export_dir in models.config "
    "(e.g. /models in a container; default: its absolute path).")


def main(argv):
  cli.check_no_arguments(argv)
  options = dict(version=_VERSION.value, top_k=_TOP_K.value, warmup=_WARMUP.value,
                 serving_base_dir=_SERVING_BASE.value)
  if _RUN_DIR.value:
    if _WEIGHTS.value or _CONFIG.value is not None:
      raise app.UsageError("Give either --run_dir, or --config with --weights.")
    result = export.export_run(_RUN_DIR.value, _EXPORT_DIR.value, _MODEL_NAME.value,
                               which=_WHICH.value, **options)
  else:
    if not (_WEIGHTS.value and _CONFIG.value is not None and _MODEL_NAME.value):
      raise app.UsageError("Give --run_dir, or --config, --weights and --model_name.")
    result = export.export_weights(_CONFIG.value, _WEIGHTS.value, _EXPORT_DIR.value,
                                   _MODEL_NAME.value, **options)
  print(f"Exported {result.model_name} version {result.version} to {result.path}")
  if result.model_config:
    print(f"Model config for tensorflow_model_server --model_config_file: "
          f"{result.model_config}")


if __name__ == "__main__":
  cli.run(main)
