"""milenas_tf: MiLeNAS (mixed-level differentiable NAS) in TensorFlow 2 / Keras 3.

Install with the TensorFlow build that fits the machine:

  pip install -e ".[cpu]"   # CPU-only TensorFlow (never pulls CUDA)
  pip install -e ".[gpu]"   # TensorFlow with its CUDA libraries
"""

import glob

import setuptools

setuptools.setup(
    name="milenas_tf",
    version="0.1.0",
    description="MiLeNAS: mixed-level differentiable architecture search in TF2 / Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["milenas_tf", "milenas_tf.*"]),
    package_data={"milenas_tf.space": ["published_genotypes.json"]},
    # The configuration files the scripts default to (`core.cli.config_file`).
    data_files=[("share/milenas_tf/configs", sorted(glob.glob("configs/*.py")))],
    install_requires=[
        "keras>=3.15,<4",
        "tensorflow-datasets>=4.9",
        "absl-py>=2.0",
        "numpy>=1.26",
        "ml-collections>=1.0",
        "matplotlib>=3.8",
        "tensorboard>=2.20",
        "grpcio>=1.24",
    ],
    extras_require={
        "cpu": ["tensorflow-cpu>=2.21,<2.22"],
        "gpu": ["tensorflow[and-cuda]>=2.21,<2.22"],
        "test": ["pytest>=8", "pytest-xdist>=3"],
    },
    scripts=sorted(glob.glob("bin/*.py")),
    license="Apache-2.0",
)
