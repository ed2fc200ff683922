#!/usr/bin/env python3
"""Searches a cell architecture with MiLeNAS (or a baseline method).

  python bin/search.py --output_dir=runs/fmnist
  python bin/search.py --config=configs/search_cifar10.py --config.epochs=10 \
      --output_dir=runs/cifar10

Running again with the same --output_dir resumes from the last finished epoch.
"""

from absl import flags

from milenas_tf.core import cli  # first: it turns oneDNN on before TensorFlow loads
from milenas_tf.search import run as search_run

_CONFIG = cli.define_config_file("search_fashion_mnist.py", "Search configuration file.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/search",
                                  "Output directory; an existing run there is resumed.")


def main(argv):
  cli.check_no_arguments(argv)
  result = search_run.run_search(_CONFIG.value, _OUTPUT_DIR.value)
  print(f"Genotype: {result.genotype}")
  print(f"Written to {result.output_dir}")


if __name__ == "__main__":
  cli.run(main)
