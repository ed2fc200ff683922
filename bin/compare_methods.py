#!/usr/bin/env python3
"""Runs several search methods under the same configuration and compares them.

  python bin/compare_methods.py --output_dir=runs/compare
  python bin/compare_methods.py --methods=milenas,darts_1st --config.epochs=1 \
      --output_dir=runs/compare_short

Writes comparison.json, comparison.md and comparison.png into --output_dir, with
one search directory per method (rerunning resumes the unfinished ones).
"""

from absl import flags

from milenas_tf.core import cli  # first: it turns oneDNN on before TensorFlow loads
from milenas_tf.search import comparison as method_comparison

_CONFIG = cli.define_config_file(
    "search_fashion_mnist.py",
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
