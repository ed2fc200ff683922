#!/usr/bin/env python3
"""Top-1 / top-5 accuracy of a training run's weights on the test split.

  python bin/evaluate.py --output_dir=runs/train_fmnist
  python bin/evaluate.py --output_dir=runs/train_fmnist --which=best --json
"""

import json

from absl import flags

from milenas_tf.core import cli  # first: it turns oneDNN on before TensorFlow loads
from milenas_tf.train import restore

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "A bin/train.py output directory.",
                                  required=True)
_WHICH = flags.DEFINE_enum("which", "last", ["last", "best"],
                           "The last checkpoint or the best weights.")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "train"], "Split to evaluate.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Overrides the run's data directory.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object.")


def main(argv):
  cli.check_no_arguments(argv)
  result = restore.evaluate_checkpoint(_OUTPUT_DIR.value, _SPLIT.value, _WHICH.value,
                                       _DATA_DIR.value)
  if _JSON.value:
    print(json.dumps(result))
  else:
    print(f"{_WHICH.value} weights (epoch {result['epoch']}) on {_SPLIT.value}: "
          f"top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f}, "
          f"loss {result['loss']:.4f}")


if __name__ == "__main__":
  cli.run(main)
