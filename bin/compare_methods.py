"""Runs several search methods under the same configuration and compares them.

  python bin/compare_methods.py --output_dir=runs/compare
  python bin/compare_methods.py --methods=milenas,darts_1st --config.epochs=1 \
      --output_dir=runs/compare_short

Writes comparison.json, comparison.md and comparison.png into --output_dir, with
one search directory per method (rerunning resumes the unfinished ones).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

from milenas_tf import cli
from milenas_tf import method_comparison

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(cli.CONFIG_DIR, "search_fashion_mnist.py"),
    "Search configuration file; its method is replaced by each of --methods.")
_METHODS = flags.DEFINE_list("methods", list(method_comparison.DEFAULT_METHODS),
                             "Methods to compare; time ratios are to the first.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/compare", "Output directory.")


def main(argv):
  cli.check_no_arguments(argv)
  report = method_comparison.compare_methods(_CONFIG.value, _OUTPUT_DIR.value,
                                             _METHODS.value)
  print(method_comparison.markdown_table(report["methods"], _METHODS.value[0]))
  print(f"Written to {_OUTPUT_DIR.value}")


if __name__ == "__main__":
  cli.run(main)
