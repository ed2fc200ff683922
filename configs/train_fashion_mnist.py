"""Default CPU training: a searched cell on Fashion-MNIST in a few minutes.

The CIFAR-10 recipe (`milenas_tf.train.config.default_config`) scaled to a 2-core CPU:
5 cells, C=8, batch 64, the first 6,400 training images (and test images),
3 epochs, cosine from 0.05; cutout 8 and drop path 0.1 for 28x28 images.

  python bin/train.py --output_dir=runs/train_fmnist
  python bin/train.py --config.genotype=runs/fmnist/genotype.json --output_dir=runs/train_own
"""

from milenas_tf.train import config as train_config


def get_config():
  config = train_config.default_config()
  config.dataset = "fashion_mnist"
  config.setting = "fashion_mnist"
  config.limit = 6400
  config.init_channels = 8
  config.num_cells = 5
  config.epochs = 3
  config.batch_size = 64
  config.learning_rate = 0.05
  config.cutout_length = 8
  config.drop_path_rate = 0.1
  return config
