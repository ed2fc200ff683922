"""Default CPU search: MiLeNAS first order on Fashion-MNIST in about ten minutes.

MiLeNAS first order with the paper's recipe (see `milenas_tf.search.config.default_config`),
scaled to a 2-core CPU: a smaller network (5 cells, C=8, batch 32) on the first 4k
training images (2k search-train, 2k search-val), 3 epochs, the fused update order
(two passes per step instead of three), and an alpha learning rate ten times the
paper's, since the search runs about a hundred times fewer steps.

  python bin/search.py --config=configs/search_fashion_mnist.py --output_dir=runs/fmnist
"""

from milenas_tf.search import config as search_config


def get_config():
  config = search_config.default_config()
  config.dataset = "fashion_mnist"
  config.limit = 4000
  config.epochs = 3
  config.batch_size = 32
  config.init_channels = 8
  config.num_cells = 5
  config.order = "fused"
  config.arch_learning_rate = 3e-3
  return config
