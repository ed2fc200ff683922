#!/usr/bin/env python3
"""Trains a searched (or published) architecture from scratch.

  python bin/train.py --output_dir=runs/train_fmnist
  python bin/train.py --config=configs/train_cifar10.py \
      --config.genotype=runs/cifar10/genotype.json --output_dir=runs/train_cifar10

Running again with the same --output_dir resumes from the last finished epoch.
"""

from absl import flags

from milenas_tf.core import cli  # first: it turns oneDNN on before TensorFlow loads
from milenas_tf.train import run as train_run

_CONFIG = cli.define_config_file("train_fashion_mnist.py", "Training configuration file.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/train",
                                  "Output directory; an existing run there is resumed.")


def main(argv):
  cli.check_no_arguments(argv)
  result = train_run.run_training(_CONFIG.value, _OUTPUT_DIR.value)
  print(f"Test: top-1 {result.test['top1']:.4f}, top-5 {result.test['top5']:.4f}; "
        f"best top-1 {result.best.get('value', float('nan')):.4f} at epoch "
        f"{result.best.get('epoch', '-')}")
  print(f"Written to {result.output_dir}")


if __name__ == "__main__":
  cli.run(main)
