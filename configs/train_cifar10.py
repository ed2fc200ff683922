"""The CIFAR-10 training recipe: 20 cells, C=36, 600 epochs, batch 96, cutout.

Every field and its default is documented in `milenas_tf.training.default_config`
(DARTS Appendix A.2, MiLeNAS supplementary Section A). Override any of them on the
command line, e.g. `--config.genotype=runs/cifar10/genotype.json`.

  python bin/train.py --config=configs/train_cifar10.py --output_dir=runs/train_cifar10
"""

from milenas_tf import training


def get_config():
  return training.default_config()
