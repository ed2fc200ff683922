"""Default CPU search: MiLeNAS first order on Fashion-MNIST in about ten minutes.

A smaller network (5 cells, C=8) on a slice of the training split; everything
else is the paper's recipe (see `milenas_tf.search.default_config`).

  python bin/search.py --config=configs/search_fashion_mnist.py --output_dir=runs/fmnist
"""

from milenas_tf import search


def get_config():
  config = search.default_config()
  config.dataset = "fashion_mnist"
  config.limit = 10000
  config.epochs = 4
  config.batch_size = 64
  config.init_channels = 8
  config.num_cells = 5
  return config
