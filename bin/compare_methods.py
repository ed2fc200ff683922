#!/usr/bin/env python3
"""Runs several search methods under the same configuration and compares them.

  python bin/compare_methods.py --output_dir=runs/compare
  python bin/compare_methods.py --methods=milenas,darts_1st --config.epochs=1 \
      --output_dir=runs/compare_short
  python bin/compare_methods.py --seeds=4 --output_dir=runs/compare_4seeds
  python bin/compare_methods.py --methods=milenas --sweep=lambda_train=0.1,1,999 --seeds=2 \
      --output_dir=runs/lambda
  python bin/compare_methods.py --seeds=4 --output_dir=runs/compare_4seeds --report_only

Writes comparison.json, comparison.md and comparison.png (mean and standard deviation
over --seeds runs per method) into --output_dir, with one search directory per method
and seed (rerunning resumes the unfinished ones; --report_only reports the finished
ones and runs nothing).
"""

from absl import flags

from milenas_tf.core import cli  # first: it turns oneDNN on before TensorFlow loads
from milenas_tf.search import comparison as method_comparison

_CONFIG = cli.define_config_file(
    "search_fashion_mnist.py",
    "Search configuration file; its method is replaced by each of --methods.")
_METHODS = flags.DEFINE_list("methods", list(method_comparison.DEFAULT_METHODS),
                             "Methods to compare; time ratios are to the first.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Runs per method, with seeds config.seed, "
                              "config.seed + 1, ...")
_SWEEP = flags.DEFINE_string("sweep", "", "FIELD=V1,V2,...: run each method once per value "
                             "of one config field, e.g. lambda_train=0.1,1,999.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/compare", "Output directory.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Run nothing: report the runs "
                                 "already finished in --output_dir, each over its seeds.")


def main(argv):
  cli.check_no_arguments(argv)
  sweep = (method_comparison.parse_sweep(_SWEEP.value, _CONFIG.value) if _SWEEP.value
           else None)
  report = method_comparison.compare_methods(_CONFIG.value, _OUTPUT_DIR.value,
                                             _METHODS.value, seeds=_SEEDS.value, sweep=sweep,
                                             run=not _REPORT_ONLY.value)
  print(method_comparison.markdown_table(report["methods"], report["methods"][0]["label"]))
  print(f"Written to {_OUTPUT_DIR.value}")


if __name__ == "__main__":
  cli.run(main)
