"""Grappler's op fusion ("remapping") for the search and training functions.

TensorFlow's graph optimiser rewrites patterns of ops into fused kernels before a
function first runs; among them a training-mode batch norm followed by a ReLU
(`_FusedBatchNormEx`). With oneDNN on an AVX2 CPU that fused kernel is several times
slower than the two ops it replaces at some channel counts (13.5 ms against 4.1 ms
forward at 96x32x32x36; 32 channels are fine), and the fused graph keeps more memory.
On the CIFAR-10 evaluation network (20 cells, C=36, batch 96) turning the remapper
off shortens the training step by 7-13% and lowers peak memory by about 570 MiB; the
ImageNet network and the search network step as fast either way within this 2-core
machine's noise (about 3%), with 140-210 MiB less memory (docs/benchmarks.md).

`config.remapping` names the setting:

- "auto": off when no GPU is visible, on otherwise (GPU fusions are TensorFlow's
  own choice and were not measured here);
- "on", "off".

The setting is process-wide (`tf.config.optimizer`) and takes effect for functions
that first run after it; the functions compute the same values either way.
"""

from __future__ import annotations

import tensorflow as tf

from milenas_tf.errors import UserInputError

REMAPPING = ("auto", "on", "off")


def resolve(spec: str) -> bool:
  """Whether a config's `remapping` setting turns Grappler's remapper on.

  Raises:
    UserInputError: for an unknown setting.
  """
  if spec not in REMAPPING:
    raise UserInputError(f"Unknown remapping setting {spec!r}; use one of "
                         f"{', '.join(REMAPPING)}.")
  if spec == "auto":
    return bool(tf.config.list_logical_devices("GPU"))
  return spec == "on"


def apply_remapping(spec: str) -> bool:
  """Sets Grappler's remapper for this process as `spec` says; returns whether it
  is on.

  Raises:
    UserInputError: for an unknown setting.
  """
  enabled = resolve(spec)
  tf.config.optimizer.set_experimental_options({"remapping": enabled})
  return enabled
