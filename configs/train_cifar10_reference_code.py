"""The CIFAR-10 training of the official MiLeNAS evaluation code.

Source: `evaluation/train.py` of the MiLeNAS repository (chaoyanghe/MiLeNAS) and its
`evaluation/run_eval_cifar10.sh`: the DARTS paper's recipe (`configs/train_cifar10.py`)
but batch 64 (the script's default), cosine annealing to 0.001 (not 0), and learning
rate 0.03, the value its run script uses for the published cells (it also sweeps 0.02
to 0.05 per cell). 600 epochs, auxiliary head, cutout and drop path 0.2 as there.

  python bin/train.py --config=configs/train_cifar10_reference_code.py \
      --config.genotype=MILENAS_3_87M --output_dir=runs/train_cifar10_code
"""

from milenas_tf.train import config as train_config


def get_config():
  config = train_config.default_config()
  config.batch_size = 64
  config.base_batch_size = 64
  config.learning_rate = 0.03
  config.learning_rate_min = 0.001
  return config
