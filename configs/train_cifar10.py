"""The CIFAR-10 training recipe: 20 cells, C=36, 600 epochs, batch 96, cutout.

Every field and its default is documented in `milenas_tf.train.config.default_config`
(DARTS Appendix A.2, MiLeNAS supplementary Section A). Override any of them on the
command line, e.g. `--config.genotype=runs/cifar10/genotype.json`.

  python bin/train.py --config=configs/train_cifar10.py --output_dir=runs/train_cifar10
"""

from milenas_tf.train import config as train_config


def get_config():
  return train_config.default_config()
