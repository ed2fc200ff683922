"""Input pipelines: Fashion-MNIST and CIFAR-10 (`datasets`), ImageNet (`imagenet`).

May import `core` only.
"""
