"""The ImageNet mobile recipe: 14 cells, C=48, 250 epochs, batch 128, 224x224.

Every field is documented in `milenas_tf.train.config.imagenet_config` and
`default_config`; `config.imagenet` holds the input options (`imagenet_options`).
The data comes from TFRecord shards, an image folder or tfds `imagenet2012`
(docs/imagenet.md). On 8 GPUs the batch of 128 is split among them; raise it
with `--config.batch_size=1024 --config.scale_learning_rate=True` to scale the
learning rate linearly from 0.1 at batch 128.

  python bin/train.py --config=configs/train_imagenet.py \
      --config.genotype=MILENAS_3_87M --config.init_channels=46 \
      --config.data_dir=/data/imagenet \
      --output_dir=runs/train_imagenet
"""

from milenas_tf.train import config as train_config


def get_config():
  return train_config.imagenet_config()
