"""The paper's search setting: CIFAR-10, 8 cells, C=16, batch 64, 50 epochs.

Every field and its default is documented in `milenas_tf.search.config.default_config`
(the hyper-parameters of the official MiLeNAS search code: w unclipped; add
`--config.grad_clip=5` for the DARTS paper's clipping). Override any of
them on the command line, e.g. `--config.epochs=10 --config.method=darts_1st`.

  python bin/search.py --config=configs/search_cifar10.py --output_dir=runs/cifar10
"""

from milenas_tf.search import config as search_config


def get_config():
  return search_config.default_config()
