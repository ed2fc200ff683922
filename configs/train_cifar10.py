"""The CIFAR-10 training recipe of the DARTS paper: 20 cells, C=36, 600 epochs, batch 96.

Source: DARTS (Liu et al., ICLR 2019) Appendix A.2, which MiLeNAS's supplementary
Section A follows: SGD 0.025 with momentum 0.9, cosine annealing to 0, coupled L2
decay 3e-4, gradient clipping 5, auxiliary weight 0.4, drop path 0.2, cutout 16.
Every field and its default is documented in `milenas_tf.train.config.default_config`.
`configs/train_cifar10_reference_code.py` is the official MiLeNAS evaluation code's
variant. Override any field on the command line, e.g.
`--config.genotype=runs/cifar10/genotype.json`.

  python bin/train.py --config=configs/train_cifar10.py --output_dir=runs/train_cifar10
"""

from milenas_tf.train import config as train_config


def get_config():
  return train_config.default_config()
