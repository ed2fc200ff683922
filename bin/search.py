"""Searches a cell architecture with MiLeNAS (or a baseline method).

  python bin/search.py --output_dir=runs/fmnist
  python bin/search.py --config=configs/search_cifar10.py --config.epochs=10 \
      --output_dir=runs/cifar10

Running again with the same --output_dir resumes from the last finished epoch.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

from milenas_tf import cli
from milenas_tf import search

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(cli.CONFIG_DIR, "search_fashion_mnist.py"),
    "Search configuration file.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/search",
                                  "Output directory; an existing run there is resumed.")


def main(argv):
  cli.check_no_arguments(argv)
  result = search.run_search(_CONFIG.value, _OUTPUT_DIR.value)
  print(f"Genotype: {result.genotype}")
  print(f"Written to {result.output_dir}")


if __name__ == "__main__":
  cli.run(main)
