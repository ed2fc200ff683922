"""Size and cost of an evaluation network: parameters and mult-adds.

Conventions, those of the DARTS and MiLeNAS papers' tables:

- **Parameters**: trainable weights, the auxiliary head excluded (it is dropped at
  inference). Batch-norm moving statistics are not trainable and not counted.
- **Mult-adds**: multiply-accumulates of the convolutions (dense, depthwise, 1x1)
  and the fully connected classifier for one image at the network's input size,
  in inference mode (no auxiliary head). Batch norm, activations, pooling and
  additions are not counted. The figures come from TensorFlow's registered
  `flops` statistics of the traced graph's `Conv2D`, `DepthwiseConv2dNative` and
  `MatMul` ops (the statistics `tf.profiler` uses), halved: TensorFlow counts a
  multiply-add as two floating-point operations. A dilated stride-1 convolution
  runs as a space-to-batch convolution whose padded blocks can add a few
  mult-adds at the border.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops as framework_ops  # registered op statistics
from tensorflow.python.util import deprecation

from milenas_tf.core.errors import UserInputError
from milenas_tf.train import networks

MOBILE_BUDGET = 600_000_000  # The ImageNet mobile setting's mult-add limit.
_COUNTED_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul")


def count_parameters(model: keras.Model) -> int:
  """Trainable parameters, the auxiliary head excluded.

  Args:
    model: an `EvalNetwork` (or any Keras model; one without an auxiliary head is
      counted whole).

  Returns:
    The number of trainable scalars.
  """
  aux = getattr(model, "auxiliary_head", None)
  excluded = {id(v) for v in aux.trainable_weights} if aux is not None else set()
  return sum(int(np.prod(v.shape)) for v in model.trainable_weights
             if id(v) not in excluded)


def count_mult_adds(model: keras.Model,
                    input_shape: tuple[int, int, int] | None = None) -> int:
  """Mult-adds of one inference pass on one image (see the module docstring).

  Args:
    model: a built Keras model called as `model(images, training=False)`.
    input_shape: `(height, width, channels)`; the model's `image_shape` if None.

  Returns:
    Multiply-accumulates of the convolutions and fully connected layers.

  Raises:
    UserInputError: if no input shape is known, or the graph holds no counted op.
  """
  input_shape = input_shape or getattr(model, "image_shape", None)
  if input_shape is None:
    raise UserInputError("count_mult_adds needs input_shape=(height, width, channels) "
                         "for a model without `image_shape`.")
  spec = tf.TensorSpec((1,) + tuple(input_shape), tf.float32)
  graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
  flops = 0
  with deprecation.silence():  # The statistics use a deprecated shape helper.
    for op in graph.get_operations():
      if op.type in _COUNTED_OPS:
        flops += framework_ops.get_stats_for_node_def(graph, op.node_def, "flops").value
  if not flops:
    raise UserInputError("The model's graph holds no convolution or matmul to count.")
  return int(flops) // 2


def describe(genotype: Any, setting: str, init_channels: int | None = None,
             num_cells: int | None = None) -> dict[str, Any]:
  """Parameters and mult-adds of a genotype's network in a named setting.

  Args:
    genotype: a `Genotype`, a published name or alias, or a JSON file.
    setting: one of `networks.SETTINGS`.
    init_channels: C; the setting's reference value when None.
    num_cells: L; the setting's reference value when None.

  Returns:
    A dict with `genotype`, `setting`, `init_channels`, `num_cells`, `input_shape`,
    `params` and `mult_adds`.
  """
  model = networks.build_network(genotype, setting, init_channels, num_cells)
  return {"genotype": genotype if isinstance(genotype, str) else str(model.genotype),
          "setting": setting, "init_channels": model.init_channels,
          "num_cells": model.num_cells, "input_shape": list(model.image_shape),
          "params": count_parameters(model), "mult_adds": count_mult_adds(model)}


def largest_channels_under_budget(genotype: Any, setting: str = "imagenet",
                                  budget: int = MOBILE_BUDGET,
                                  num_cells: int | None = None,
                                  max_channels: int = 256,
                                  progress: Callable[[int, int], None] | None = None,
                                  **network_kwargs) -> int:
  """The largest even initial channel count whose network stays within a budget.

  Mult-adds grow with C, so a bisection over even C finds it in about
  log2(max_channels) network builds.

  Args:
    genotype: a `Genotype`, a published name or alias, or a JSON file.
    setting: one of `networks.SETTINGS`.
    budget: the mult-add limit (600M, the mobile setting, by default).
    num_cells: L; the setting's reference value when None.
    max_channels: the largest C tried.
    progress: called with `(channels, mult_adds)` after each count.
    **network_kwargs: passed to `networks.build_network` (e.g. `input_shape`).

  Returns:
    The largest even C with `mult_adds <= budget`.

  Raises:
    UserInputError: if even C=2 exceeds the budget.
  """

  def fits(c: int) -> bool:
    model = networks.build_network(genotype, setting, c, num_cells, auxiliary=False,
                                   **network_kwargs)
    mult_adds = count_mult_adds(model)
    if progress is not None:
      progress(c, mult_adds)
    return mult_adds <= budget

  lo, hi = 1, max_channels // 2  # in units of two channels: lo fits, hi does not
  if not fits(2):
    raise UserInputError(f"Even init_channels=2 exceeds the budget of {budget:,} "
                         f"mult-adds; raise the budget or use fewer cells.")
  if fits(2 * hi):
    return 2 * hi
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(2 * mid) else (lo, mid)
  return 2 * lo


def check_budget(model: keras.Model, budget: int | None) -> int:
  """Refuses a network over its mult-add budget.

  Args:
    model: the network.
    budget: the limit; None disables the check.

  Returns:
    The model's mult-adds (0 when the check is disabled).

  Raises:
    UserInputError: when the model exceeds the budget.
  """
  if budget is None:
    return 0
  mult_adds = count_mult_adds(model)
  if mult_adds > budget:
    raise UserInputError(
        f"The network has {mult_adds:,} mult-adds, over the budget of {budget:,}; "
        f"lower init_channels (bin/count.py --fit_budget finds the largest that fits) "
        f"or set the budget to None.")
  return mult_adds
