#!/usr/bin/env python3
"""Runs a search or a training as several workers of one cluster on this machine.

  python bin/launch.py --workers=2 -- bin/train.py --config.distribution=multi_worker \
      --output_dir=runs/train_2workers

Starts --workers copies of the command after "--", each with the TF_CONFIG of a
cluster on 127.0.0.1 (free ports), prefixes their output with "[worker i]",
passes Ctrl-C on to all of them and exits with the first failing worker's status.
Worker 0 is the chief: it writes the run's files. For several machines, see
docs/distributed.md.
"""

import sys

from absl import flags

from milenas_tf.core import cli
from milenas_tf.core import launch

_WORKERS = flags.DEFINE_integer("workers", 2, "Worker processes to start.")
_GRACE = flags.DEFINE_float("grace_s", launch.GRACE_S,
                            "Seconds the others have to stop after a worker fails or "
                            "Ctrl-C, before they are killed.")


def main(argv):
  sys.exit(launch.launch(argv[1:], _WORKERS.value, grace_s=_GRACE.value))


if __name__ == "__main__":
  cli.run(main)
